"""The tokenizer interface of prepare, training and evaluation, and its two implementations.

* :class:`~massive_mt.data.spm.Tokenizer`: the project's joint SentencePiece model (``spm.model``;
  ids bos 0, pad 1, eos 2, unk 3, one ``__lang__`` piece per language), the default.
* :class:`HFTokenizer`: a local Hugging Face tokenizer directory of a pretrained checkpoint,
  M2M-100 (``sentencepiece.bpe.model`` + ``vocab.json``, language tokens ``__fr__``) or NLLB-200
  (``tokenizer.json`` or ``sentencepiece.bpe.model``, language tokens ``fra_Latn``), with its own
  special ids; corpus languages reach its language tokens through
  :mod:`massive_mt.data.language_codes`, languages added with ``prepare --add-languages`` are
  ``__xx__`` tokens after its last id.

:func:`load_tokenizer` picks the implementation from what a directory (data-bin, model directory,
checkpoint) holds. The vocabulary size is always max id + 1: ``len()`` of an M2M100Tokenizer
leaves out its language tokens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from massive_mt.data import language_codes
from massive_mt.data.tokenizer_base import SPM_FILE, BaseTokenizer, files_identity
from massive_mt.errors import ConfigError, DataError

# files that make up a Hugging Face tokenizer of M2M-100 / NLLB-200 (model weights and configs aside)
HF_TOKENIZER_FILES = ("sentencepiece.bpe.model", "tokenizer.json", "vocab.json", "tokenizer_config.json",
                      "special_tokens_map.json", "added_tokens.json")
DATA_BIN_TOKENIZER_DIR = "tokenizer"          # where a data-bin keeps its copy of a Hugging Face tokenizer


def _hf_files(directory: Path) -> list[Path]:
    return [directory / f for f in HF_TOKENIZER_FILES if (directory / f).is_file()]


def hf_family(directory: Path) -> str:
    """nllb or m2m100, from tokenizer_config.json's tokenizer_class, else from the files present."""
    config = directory / "tokenizer_config.json"
    cls = ""
    if config.is_file():
        try:
            cls = str(json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class") or "")
        except (ValueError, AttributeError) as e:
            raise DataError(f"{config}: not a JSON object ({e})") from None
    if cls.startswith("Nllb"):
        return "nllb"
    if cls.startswith("M2M100"):
        return "m2m100"
    if cls:
        raise DataError(f"{config}: tokenizer_class {cls!r} is neither NllbTokenizer nor M2M100Tokenizer")
    return "m2m100" if (directory / "vocab.json").is_file() else "nllb"


class HFTokenizer(BaseTokenizer):
    """A local M2M-100 or NLLB-200 tokenizer directory (nothing is downloaded)."""

    kind = "hf"

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        if not _hf_files(self.directory):
            raise DataError(f"{self.directory}: no Hugging Face tokenizer files ({', '.join(HF_TOKENIZER_FILES[:3])})")
        self.family = hf_family(self.directory)
        from transformers import M2M100Tokenizer, NllbTokenizer

        cls = NllbTokenizer if self.family == "nllb" else M2M100Tokenizer
        self.hf = self._load(cls)
        self.bos_id, self.pad_id = self.hf.bos_token_id, self.hf.pad_token_id
        self.eos_id, self.unk_id = self.hf.eos_token_id, self.hf.unk_token_id
        self.registered_codes = self.family == "nllb" and self._id("fra_Latn") is None
        if self.registered_codes:
            # transformers 5 builds an NllbTokenizer from sentencepiece.bpe.model alone without the
            # language codes, and maps every code to <unk> without a word: register them as NLLB
            # numbers them, after the pieces and before <mask>
            from transformers import AddedToken
            from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

            self.hf = self._load(cls, mask_token=None)
            self.hf.add_tokens([AddedToken(c, special=True, normalized=False) for c in FAIRSEQ_LANGUAGE_CODES],
                               special_tokens=True)
            self.hf.add_special_tokens({"mask_token": AddedToken("<mask>", special=True, normalized=True,
                                                                 lstrip=True)})
        self._refresh()

    def _load(self, cls, **kwargs):
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            return cls.from_pretrained(str(self.directory), local_files_only=True, **kwargs)
        except (OSError, ValueError, TypeError, RuntimeError) as e:
            raise DataError(f"{self.directory}: cannot load the {cls.__name__}: {e}") from None
        finally:
            hf_logging.set_verbosity(verbosity)

    def _id(self, token: str) -> int | None:
        i = self.hf.convert_tokens_to_ids(token)
        return None if i is None or i == self.unk_id else int(i)

    def _refresh(self) -> None:
        """Ids of the language tokens (the model's and the added ones) and the vocabulary size."""
        model_tokens = (language_codes.NLLB200 if self.family == "nllb"
                        else [f"__{c}__" for c in language_codes.M2M100])
        self.model_lang_ids = {t: i for t in model_tokens if (i := self._id(t)) is not None}
        added = {tok.content: int(i) for i, tok in self.hf.added_tokens_decoder.items()}
        self.added_lang_ids = {t[2:-2]: i for t, i in added.items()
                               if t.startswith("__") and t.endswith("__") and t not in self.model_lang_ids}
        new = set(self.added_lang_ids.values())
        ids = [i for i in (*self.hf.get_vocab().values(), *added.values(), *self.model_lang_ids.values())
               if i not in new]
        # M2M100Tokenizer: language tokens after vocab.json, then num_madeup_words ids in the checkpoint
        madeup = getattr(self.hf, "num_madeup_words", 0) if self.family == "m2m100" else 0
        self.vocab_size = max(max(ids) + 1 + madeup, max(new, default=-1) + 1)
        skip = {self.bos_id, self.pad_id, self.eos_id, self.unk_id, *self.hf.all_special_ids,
                *self.model_lang_ids.values(), *self.added_lang_ids.values()}
        self._skip = np.zeros(self.vocab_size, dtype=bool)
        self._skip[sorted(skip)] = True

    def files(self) -> list[Path]:
        return _hf_files(self.directory)

    def lang_token(self, lang: str) -> str | None:
        """The token of corpus language ``lang``: an added ``__lang__``, else the model's code."""
        if lang in self.added_lang_ids:
            return f"__{lang}__"
        code = language_codes.model_code(lang, self.family)
        if code is None:
            return None
        return code if self.family == "nllb" else f"__{code}__"

    def lang_id(self, lang: str) -> int:
        token = self.lang_token(lang)
        i = None if token is None else self._id(token)
        if i is None:
            raise DataError(f"{self.directory}: no {self.family} language token for {lang!r}"
                            + (f" ({token} is not in the tokenizer)" if token else ""))
        return i

    def add_languages(self, langs: Sequence[str]) -> dict[str, int]:
        """Add ``__xx__`` tokens after the last id; return {lang: id}."""
        from transformers import AddedToken

        out = {}
        for lang in langs:
            token = f"__{lang}__"
            if self._id(token) is not None:
                raise DataError(f"{self.directory}: already has a language token {token}")
            new_id = self.vocab_size
            if self.family == "m2m100":
                # add_tokens would number it len(tokenizer), the id of the first language token
                self.hf._added_tokens_decoder[new_id] = AddedToken(token, special=True, normalized=False)
                self.hf._added_tokens_encoder[token] = new_id
                self.hf._update_trie()
            else:
                self.hf.add_tokens([AddedToken(token, special=True, normalized=False)], special_tokens=True)
            if self._id(token) != new_id:
                raise DataError(f"{self.directory}: {token} was given id {self._id(token)}, expected {new_id}")
            self._refresh()
            out[lang] = new_id
        return out

    def save(self, directory: str | os.PathLike) -> list[Path]:
        """save_pretrained where tokens were added or codes registered, else the files byte for byte."""
        if not (self.added_lang_ids or self.registered_codes):
            return super().save(directory)
        directory = Path(directory)
        self.hf.save_pretrained(str(directory))
        return _hf_files(directory)

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(map(int, ids)) for ids in self.hf(list(texts), add_special_tokens=False)["input_ids"]]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        return self.hf.decode([i for i in ids if not (0 <= i < self.vocab_size and self._skip[i])],
                              skip_special_tokens=True, clean_up_tokenization_spaces=False)


def tokenizer_kind(directory: Path) -> str | None:
    """spm, hf or None: what ``directory`` holds (a data-bin keeps a Hugging Face copy in tokenizer/)."""
    if (directory / SPM_FILE).is_file():
        return "spm"
    if _hf_files(directory / DATA_BIN_TOKENIZER_DIR) or _hf_files(directory):
        return "hf"
    return None


def load_tokenizer(path: str | os.PathLike) -> BaseTokenizer:
    """The tokenizer of a data-bin, model directory or checkpoint: the project's ``spm.model`` where
    there is one, else the Hugging Face tokenizer files (in ``tokenizer/`` of a data-bin); a path
    to a ``.model`` file is the project's SentencePiece model."""
    from massive_mt.data.spm import Tokenizer

    path = Path(path)
    if path.suffix == ".model" and not path.is_dir():
        return Tokenizer(path)
    kind = tokenizer_kind(path)
    if kind == "spm":
        return Tokenizer(path / SPM_FILE)
    if kind == "hf":
        sub = path / DATA_BIN_TOKENIZER_DIR
        return HFTokenizer(sub if _hf_files(sub) else path)
    raise DataError(f"{path}: no tokenizer ({SPM_FILE}, or Hugging Face files: {', '.join(HF_TOKENIZER_FILES[:3])})")


def parse_init_from(specs: Sequence[str], added: Sequence[str]) -> dict[str, str | None]:
    """``--init-from`` values (``xx=fr``, or one ``fr`` for every added language) -> {added: source or None}."""
    out: dict[str, str | None] = {lang: None for lang in added}
    for spec in specs:
        new, sep, src = spec.partition("=")
        if not sep:
            if len(specs) != 1:
                raise ConfigError(f"--init-from {spec!r}: a bare language applies to all added languages; "
                                  "give it alone or use xx=fr for each")
            out = {lang: spec for lang in added}
            continue
        if new not in out:
            raise ConfigError(f"--init-from {spec!r}: {new!r} is not in --add-languages ({', '.join(added) or 'none'})")
        out[new] = src
    return out


def check_pretrained(manifest: dict, data_bin: str | os.PathLike, from_pretrained: str | os.PathLike) -> dict:
    """Refuse a checkpoint whose tokenizer is not the one the data-bin was encoded with.

    Returns {"vocab_size": rows the checkpoint is built with, "init": {new tag id: ids whose mean
    initialises it}}: the added languages' rows when starting from the tokenizer's source
    checkpoint, nothing when continuing from a run's export (its tokenizer is the data-bin's copy).
    """
    data_bin, ckpt = Path(data_bin), Path(from_pretrained)
    tok = load_tokenizer(data_bin)
    info = manifest.get("tokenizer") or {}
    own, source = tok.identity(), info.get("source_sha256")
    kind = tokenizer_kind(ckpt)
    if kind is None:
        raise ConfigError(f"field 'model.from_pretrained': {ckpt} has no tokenizer files ({SPM_FILE} or "
                          f"{', '.join(HF_TOKENIZER_FILES[:3])}), so nothing shows that field 'data.data_bin' "
                          f"({data_bin}) was encoded with its tokenizer")
    theirs = load_tokenizer(ckpt).identity() if kind == "spm" else files_identity(_hf_files(ckpt))
    if theirs not in (own, source):
        where = "the tokenizer it was prepared with" + (f" ({info['source']})" if info.get("source") else "")
        raise ConfigError(
            f"field 'model.from_pretrained': the tokenizer of {ckpt} (sha256 {theirs[:12]}) is not {where} "
            f"(field 'data.data_bin': {data_bin}, tokenizer sha256 {(source or own)[:12]}); token ids would mean "
            f"other tokens: rerun `massive-mt prepare --tokenizer {ckpt}`")
    added = info.get("added_languages") or {}
    if theirs == own or not added:
        return {"vocab_size": tok.vocab_size, "init": {}}
    all_tags = sorted(getattr(tok, "model_lang_ids", {}).values())
    init = {}
    for lang, entry in added.items():
        src = entry.get("init_from")
        init[int(entry["id"])] = [tok.lang_id(src)] if src else all_tags
    return {"vocab_size": int(info["source_vocab_size"]), "init": init}
