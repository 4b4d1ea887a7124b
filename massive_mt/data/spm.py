"""The joint SentencePiece vocabulary: training it on a corpus, and the tokenizer that reads it.

Conventions (fairseq / M2M100): ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, and one
user-defined piece ``__{lang}__`` per language so every language tag is a single id.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm
from tqdm import tqdm

from massive_mt.data.corpus import Corpus, load_corpus, read_lines
from massive_mt.data.sampler import temperature_probs
from massive_mt.data.tokenizer_base import SPM_FILE, BaseTokenizer
from massive_mt.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

_LANG_RE = re.compile(r"^[A-Za-z0-9]+(_[A-Za-z0-9]+)*$")
_TAG_RE = re.compile(r"^__([A-Za-z0-9]+(?:_[A-Za-z0-9]+)*)__$")


def lang_tag(lang: str) -> str:
    """The tag piece of a language: ``fr`` -> ``__fr__``, ``pt_BR`` -> ``__pt_BR__``."""
    if not isinstance(lang, str) or not _LANG_RE.match(lang):
        raise ConfigError(f"invalid language code {lang!r}: use letters/digits with '_' between subtags (e.g. pt_BR)")
    return f"__{lang}__"


def _unique_lines(paths: Iterable[Path]) -> Iterator[str]:
    """Lines of ``paths`` in order, each distinct line once (pivot text repeats across pairs)."""
    seen: set[bytes] = set()
    for path in paths:
        for _, line in read_lines(path):
            key = hashlib.blake2b(line.encode("utf-8"), digest_size=8).digest()
            if key not in seen:
                seen.add(key)
                yield line


def _train_files_by_lang(corpus: Corpus) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {}
    for name in sorted(corpus.pairs):
        pair = corpus.pairs[name]
        for lang in (pair.src, pair.tgt):
            files.setdefault(lang, []).append(corpus.root / f"train.{name}.{lang}")
    return files


def _sample_sizes(counts: dict[str, int], temperature: float, max_sentences: int) -> dict[str, int]:
    """Sentences per language: share p_i ∝ (n_i/N)^(1/T) of the budget, capped at n_i, at least 1."""
    langs = sorted(counts)
    probs = temperature_probs([counts[lang] for lang in langs], temperature)
    return {lang: int(min(counts[lang], max(1, round(p * max_sentences)))) for lang, p in zip(langs, probs)}


def train_spm(
    corpus_dir: str | os.PathLike,
    out_prefix: str | os.PathLike,
    vocab_size: int = 8000,
    temperature: float = 5.0,
    max_sentences: int = 2_000_000,
    seed: int = 0,
    model_type: str = "unigram",
    character_coverage: float = 0.9995,
    extra_langs: Sequence[str] = (),
) -> Path:
    """Train a joint SentencePiece model on the corpus's train split; return ``{out_prefix}.model``.

    Every language's distinct train sentences (both sides of every pair, repeated pivot
    sentences counted once) are temperature-sampled without replacement, deterministically
    from ``seed``. Tags are added for all corpus languages plus ``extra_langs``.
    """
    corpus_dir, out_prefix = Path(corpus_dir), Path(out_prefix)
    if not isinstance(vocab_size, int) or vocab_size < 8:
        raise ConfigError(f"vocab_size must be an integer >= 8, got {vocab_size!r}")
    if not isinstance(max_sentences, int) or max_sentences < 1:
        raise ConfigError(f"max_sentences must be a positive integer, got {max_sentences!r}")
    files = _train_files_by_lang(load_corpus(corpus_dir, verify=True))
    tags = [lang_tag(lang) for lang in sorted(set(files) | set(extra_langs))]

    # Two streaming passes keep memory to one language's line hashes: count, then sample.
    counts = {lang: sum(1 for _ in _unique_lines(paths))
              for lang, paths in tqdm(files.items(), desc="spm count", unit="lang", dynamic_ncols=True)}
    empty = [lang for lang, n in counts.items() if n == 0]
    if empty:
        raise DataError(f"{corpus_dir}: no train sentences for language(s) {empty}")
    take = _sample_sizes(counts, temperature, max_sentences)
    log.info("spm training mix (language: sampled/distinct): %s", {k: f"{take[k]}/{counts[k]}" for k in sorted(take)})

    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_prefix.parent, prefix=".spm-") as tmp:
        text = Path(tmp) / "input.txt"
        with open(text, "w", encoding="utf-8") as f:
            for lang_index, lang in enumerate(tqdm(sorted(files), desc="spm sample", unit="lang", dynamic_ncols=True)):
                rng = np.random.default_rng([seed, lang_index])
                keep = np.zeros(counts[lang], dtype=bool)
                keep[rng.choice(counts[lang], size=take[lang], replace=False)] = True
                for i, line in enumerate(_unique_lines(files[lang])):
                    if keep[i]:
                        f.write(line + "\n")
        total = sum(take.values())
        print(f"SentencePiece: training a {vocab_size}-piece {model_type} model on {total:,} sentences of "
              f"{len(files)} languages", file=sys.stderr, flush=True)
        spm.set_random_generator_seed(seed)
        try:
            spm.SentencePieceTrainer.train(
                input=str(text),
                model_prefix=str(Path(tmp) / "spm"),
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=character_coverage,
                bos_id=BOS_ID,
                pad_id=PAD_ID,
                eos_id=EOS_ID,
                unk_id=UNK_ID,
                user_defined_symbols=tags,
                input_sentence_size=total,  # the sample is the training set: never subsample it again
                shuffle_input_sentence=True,
                hard_vocab_limit=False,  # small corpora may not support vocab_size pieces
                num_threads=max(1, min(16, os.cpu_count() or 1)),
                minloglevel=2,
            )
        except (RuntimeError, ValueError) as e:  # bad options, e.g. vocab_size below the character count
            raise ConfigError(f"SentencePiece training for {out_prefix} failed: {e}") from None
        # Publish atomically: .model last, so its presence implies a matching .vocab.
        os.replace(Path(tmp) / "spm.vocab", f"{out_prefix}.vocab")
        os.replace(Path(tmp) / "spm.model", f"{out_prefix}.model")
    return Path(f"{out_prefix}.model")


# -- tokenizer ------------------------------------------------------------------------------


class Tokenizer(BaseTokenizer):
    """A SentencePiece model following the massive_mt id and language-tag conventions."""

    kind, family = "spm", None

    def __init__(self, model_path: str | os.PathLike):
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise DataError(f"{self.model_path}: SentencePiece model not found")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.model_path))
        except (OSError, RuntimeError) as e:
            raise DataError(f"{self.model_path}: cannot load SentencePiece model: {e}") from None
        got = (self.sp.bos_id(), self.sp.pad_id(), self.sp.eos_id(), self.sp.unk_id())
        if got != (BOS_ID, PAD_ID, EOS_ID, UNK_ID):
            raise DataError(f"{self.model_path}: special ids (bos, pad, eos, unk) are {got}, expected (0, 1, 2, 3)")
        self.bos_id, self.pad_id, self.eos_id, self.unk_id = BOS_ID, PAD_ID, EOS_ID, UNK_ID
        self.vocab_size = self.sp.get_piece_size()
        self._lang_ids: dict[str, int] = {}
        for i in range(self.vocab_size):
            m = _TAG_RE.match(self.sp.id_to_piece(i))
            if m:
                self._lang_ids[m.group(1)] = i
        self._skip = np.zeros(self.vocab_size, dtype=bool)  # ids that decode() drops
        self._skip[[BOS_ID, PAD_ID, EOS_ID, UNK_ID, *self._lang_ids.values()]] = True

    @property
    def langs(self) -> list[str]:
        """Languages that have a tag in the model, sorted."""
        return sorted(self._lang_ids)

    def lang_id(self, lang: str) -> int:
        """Id of ``__{lang}__``; DataError if the model has no such tag."""
        try:
            return self._lang_ids[lang]
        except KeyError:
            raise DataError(f"{self.model_path}: no language tag {lang!r} (model languages: {self.langs})") from None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without bos/eos or language tag."""
        return self.sp.encode(text, out_type=int)

    def encode_batch(self, texts) -> list[list[int]]:
        return self.sp.encode(list(texts), out_type=int)

    def files(self) -> list[Path]:
        return [self.model_path]

    def save(self, directory: str | os.PathLike) -> list[Path]:
        """``spm.model`` (and ``spm.vocab``, for humans, where there is one) in ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vocab = self.model_path.with_suffix(".vocab")
        for src, dst in ((vocab, "spm.vocab"), (self.model_path, SPM_FILE)):   # .model last
            if src.is_file() and src.resolve() != (directory / dst).resolve():
                shutil.copyfile(src, directory / f"{dst}.tmp")
                os.replace(directory / f"{dst}.tmp", directory / dst)
        return [directory / SPM_FILE]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, dropping special tokens and language tags."""
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        return self.sp.decode([i for i in ids if not (0 <= i < self.vocab_size and self._skip[i])])
