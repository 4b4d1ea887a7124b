"""Joint SentencePiece vocabulary, binarised token files and per-task datasets.

Conventions (fairseq / M2M100): ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, and one
user-defined piece ``__{lang}__`` per language so every language tag is a single id.

A *data-bin* directory (written by :func:`encode_corpus`) holds, for every corpus file
``{split}.{src}-{tgt}.{lang}``, a flat token file ``….bin`` and an offsets file
``….idx.npy`` (int64, n + 1 entries), plus ``spm.model``/``spm.vocab`` and a
``manifest.json`` written last, whose presence marks the directory as complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm
from tqdm import tqdm

from massive_mt.data.sampler import temperature_probs
from massive_mt.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
CORPUS_FORMAT = "massive_mt.corpus/1"
DATA_BIN_FORMAT = "massive_mt.data_bin/1"
DEFAULT_MAX_LEN = 256

_LANG_RE = re.compile(r"^[A-Za-z0-9]+(_[A-Za-z0-9]+)*$")
_TAG_RE = re.compile(r"^__([A-Za-z0-9]+(?:_[A-Za-z0-9]+)*)__$")


def lang_tag(lang: str) -> str:
    """The tag piece of a language: ``fr`` -> ``__fr__``, ``pt_BR`` -> ``__pt_BR__``."""
    if not isinstance(lang, str) or not _LANG_RE.match(lang):
        raise ConfigError(f"invalid language code {lang!r}: use letters/digits with '_' between subtags (e.g. pt_BR)")
    return f"__{lang}__"


# -- corpus reading ------------------------------------------------------------------------


def _read_corpus_manifest(corpus_dir: Path) -> dict:
    """The corpus's pairs and sizes as a manifest dict (scanned from the file names when the
    corpus has no manifest.json, e.g. a user's own TED/WMT/OPUS files)."""
    from .corpus import load_corpus

    corpus = load_corpus(corpus_dir, verify=True)
    pairs = {name: {"src": info.src, "tgt": info.tgt, **info.sizes} for name, info in corpus.pairs.items()}
    if not pairs:
        raise DataError(f"{corpus_dir}: no parallel files found")
    return {"format": CORPUS_FORMAT, "pivot": corpus.pivot, "pairs": pairs}


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read JSON: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line without newline); DataError for empty lines or bad UTF-8."""
    try:
        with open(path, encoding="utf-8", newline="\n") as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    raise DataError(f"{path}:{lineno}: empty line (every line must hold a sentence)")
                yield lineno, line
    except FileNotFoundError:
        raise DataError(f"{path}: not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8: {e}") from None


def _unique_lines(paths: Iterable[Path]) -> Iterator[str]:
    """Lines of ``paths`` in order, each distinct line once (pivot text repeats across pairs)."""
    seen: set[bytes] = set()
    for path in paths:
        for _, line in _read_lines(path):
            key = hashlib.blake2b(line.encode("utf-8"), digest_size=8).digest()
            if key not in seen:
                seen.add(key)
                yield line


def _train_files_by_lang(corpus_dir: Path, manifest: dict) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {}
    for name in sorted(manifest["pairs"]):
        pair = manifest["pairs"][name]
        for lang in (pair["src"], pair["tgt"]):
            files.setdefault(lang, []).append(corpus_dir / f"train.{name}.{lang}")
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
    manifest = _read_corpus_manifest(corpus_dir)
    files = _train_files_by_lang(corpus_dir, manifest)
    tags = [lang_tag(lang) for lang in sorted(set(files) | set(extra_langs))]

    # Two streaming passes keep memory to one language's line hashes: count, then sample.
    counts = {lang: sum(1 for _ in _unique_lines(paths)) for lang, paths in files.items()}
    empty = [lang for lang, n in counts.items() if n == 0]
    if empty:
        raise DataError(f"{corpus_dir}: no train sentences for language(s) {empty}")
    take = _sample_sizes(counts, temperature, max_sentences)
    log.info("spm training mix (language: sampled/distinct): %s", {k: f"{take[k]}/{counts[k]}" for k in sorted(take)})

    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_prefix.parent, prefix=".spm-") as tmp:
        text = Path(tmp) / "input.txt"
        with open(text, "w", encoding="utf-8") as f:
            for lang_index, lang in enumerate(sorted(files)):
                rng = np.random.default_rng([seed, lang_index])
                keep = np.zeros(counts[lang], dtype=bool)
                keep[rng.choice(counts[lang], size=take[lang], replace=False)] = True
                for i, line in enumerate(_unique_lines(files[lang])):
                    if keep[i]:
                        f.write(line + "\n")
        total = sum(take.values())
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


class Tokenizer:
    """A SentencePiece model following the massive_mt id and language-tag conventions."""

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

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, dropping special tokens and language tags."""
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        return self.sp.decode([i for i in ids if not (0 <= i < self.vocab_size and self._skip[i])])


# -- binarisation --------------------------------------------------------------------------

_worker_sp: spm.SentencePieceProcessor | None = None


def _init_worker(model_path: str) -> None:
    """Load the model once per encoding process (top-level so that spawn can pickle it)."""
    global _worker_sp
    _worker_sp = spm.SentencePieceProcessor(model_file=model_path)


def _encode_file(job: tuple[str, str, str, int | None]) -> dict:
    """Encode one text file into ``{out}.bin`` / ``{out}.idx.npy`` with the worker's model."""
    text_path, out_prefix, dtype, max_len = job
    sp = _worker_sp
    bin_path, idx_path = Path(out_prefix + ".bin"), Path(out_prefix + ".idx.npy")
    tmp_bin, tmp_idx = bin_path.with_name(bin_path.name + ".tmp"), idx_path.with_name(idx_path.name + ".tmp")
    lengths: list[int] = []

    def flush(chunk: list[tuple[int, str]], out) -> None:
        encoded = sp.encode([line for _, line in chunk], out_type=int)
        for (lineno, _), ids in zip(chunk, encoded):
            if not ids:
                raise DataError(f"{text_path}:{lineno}: line encodes to no tokens")
            lengths.append(len(ids))
        np.fromiter((i for ids in encoded for i in ids), dtype=dtype).tofile(out)

    try:
        with open(tmp_bin, "wb") as out:
            chunk: list[tuple[int, str]] = []
            for item in _read_lines(Path(text_path)):
                chunk.append(item)
                if len(chunk) == 4096:
                    flush(chunk, out)
                    chunk = []
            if chunk:
                flush(chunk, out)
        sizes = np.asarray(lengths, dtype=np.int64)
        offsets = np.zeros(sizes.size + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        with open(tmp_idx, "wb") as f:
            np.save(f, offsets)
        os.replace(tmp_bin, bin_path)
        os.replace(tmp_idx, idx_path)
    finally:
        tmp_bin.unlink(missing_ok=True)
        tmp_idx.unlink(missing_ok=True)
    stats = {"sentences": int(sizes.size), "tokens": int(offsets[-1])}
    if max_len is not None:
        # Sentences that TaskDataset(max_len=max_len) will truncate (+2 for tag and eos).
        stats["over_max_len"] = int(np.count_nonzero(sizes + 2 > max_len))
    return {"name": bin_path.name[: -len(".bin")], **stats}


def encode_corpus(
    corpus_dir: str | os.PathLike,
    spm_model: str | os.PathLike,
    out_dir: str | os.PathLike,
    splits: Sequence[str] = ("train", "valid", "test"),
    workers: int | None = None,
    max_len: int | None = None,
) -> Path:
    """Binarise every ``{split}.{pair}.{lang}`` corpus file into ``out_dir``; return the manifest path.

    Never truncates: ``max_len`` is recorded as the datasets' default and the number of
    longer sentences is reported per file. A split whose manifest count is 0 and whose
    files are absent is skipped. ``workers`` defaults to the CPU count (1 = in-process).
    """
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers must be a positive integer or None, got {workers!r}")
    if max_len is not None and (not isinstance(max_len, int) or max_len < 3):
        raise ConfigError(f"max_len must be an integer >= 3 (tag + token + eos) or None, got {max_len!r}")
    manifest = _read_corpus_manifest(corpus_dir)
    tok = Tokenizer(spm_model)
    langs = sorted({p[k] for p in manifest["pairs"].values() for k in ("src", "tgt")})
    lang_ids = {lang: tok.lang_id(lang) for lang in langs}  # DataError if the model lacks a tag
    dtype = "uint16" if tok.vocab_size < 65536 else "int32"

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.json").unlink(missing_ok=True)  # incomplete until rewritten at the end
    for src, dst in ((tok.model_path, "spm.model"), (tok.model_path.with_suffix(".vocab"), "spm.vocab")):
        if src.is_file():  # the .vocab is optional (for humans only)
            shutil.copyfile(src, out_dir / f"{dst}.tmp")
            os.replace(out_dir / f"{dst}.tmp", out_dir / dst)

    jobs, pairs_of_files = [], []
    for name in sorted(manifest["pairs"]):
        pair = manifest["pairs"][name]
        for split in splits:
            paths = [corpus_dir / f"{split}.{name}.{pair[k]}" for k in ("src", "tgt")]
            if pair.get(split) == 0 and not any(p.exists() for p in paths):
                continue
            for p in paths:
                if not p.is_file():
                    raise DataError(f"{p}: not found (listed by {corpus_dir / 'manifest.json'} pairs.{name})")
                jobs.append((str(p), str(out_dir / p.name), dtype, max_len))
            pairs_of_files.append((name, split, [p.name for p in paths]))

    workers = min(workers or os.cpu_count() or 1, max(1, len(jobs)))
    stats: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        if workers > 1:
            ctx = multiprocessing.get_context("spawn")  # fork is unsafe once torch/threads are live
            pool = stack.enter_context(ctx.Pool(workers, _init_worker, (str(tok.model_path),)))
            results: Iterable[dict] = pool.imap_unordered(_encode_file, jobs)
        else:
            _init_worker(str(tok.model_path))
            results = map(_encode_file, jobs)
        for r in tqdm(results, total=len(jobs), desc="encode", unit="file"):
            stats[r.pop("name")] = r

    for name, split, (src_file, tgt_file) in pairs_of_files:
        n_src, n_tgt = stats[src_file]["sentences"], stats[tgt_file]["sentences"]
        if n_src != n_tgt:
            raise DataError(f"{corpus_dir / src_file} has {n_src} lines but {corpus_dir / tgt_file} has {n_tgt}")
        expected = manifest["pairs"][name].get(split)
        if expected is not None and expected != n_src:
            raise DataError(
                f"{corpus_dir / src_file}: {n_src} lines but {corpus_dir / 'manifest.json'} "
                f"pairs.{name}.{split} says {expected}"
            )

    out = {
        "format": DATA_BIN_FORMAT,
        "pivot": manifest.get("pivot"),
        "pairs": manifest["pairs"],
        "splits": list(splits),
        "files": dict(sorted(stats.items())),
        "dtype": dtype,
        "vocab_size": tok.vocab_size,
        "langs": langs,
        "lang_ids": lang_ids,
        "special_ids": {"bos": BOS_ID, "pad": PAD_ID, "eos": EOS_ID, "unk": UNK_ID},
        "max_len": max_len,
        "spm_model": "spm.model",
    }
    tmp = out_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir / "manifest.json")
    return out_dir / "manifest.json"


def load_data_bin(data_dir: str | os.PathLike) -> dict:
    """Read and validate ``{data_dir}/manifest.json`` of a complete data-bin directory."""
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path}: not found ({data_dir} is not a complete data-bin; rerun encode_corpus)")
    manifest = _read_json(path)
    if manifest.get("format") != DATA_BIN_FORMAT:
        raise DataError(f"{path}: 'format' must be {DATA_BIN_FORMAT!r}, got {manifest.get('format')!r}")
    for key, kind in (("pairs", dict), ("files", dict), ("lang_ids", dict), ("langs", list), ("vocab_size", int)):
        if not isinstance(manifest.get(key), kind):
            raise DataError(f"{path}: '{key}' is missing or not a {kind.__name__}")
    if manifest.get("dtype") not in ("uint16", "int32"):
        raise DataError(f"{path}: 'dtype' must be 'uint16' or 'int32', got {manifest.get('dtype')!r}")
    max_len = manifest.get("max_len")
    if max_len is not None and (not isinstance(max_len, int) or max_len < 3):
        raise DataError(f"{path}: 'max_len' must be null or an integer >= 3, got {max_len!r}")
    return manifest


# -- reading -------------------------------------------------------------------------------


class IndexedTokens:
    """Memory-mapped token sequences: ``{prefix}.bin`` (flat ids) + ``{prefix}.idx.npy`` (offsets)."""

    def __init__(self, prefix: str | os.PathLike, dtype: str | np.dtype = "uint16"):
        self.bin_path = Path(f"{prefix}.bin")
        self.idx_path = Path(f"{prefix}.idx.npy")
        self.dtype = np.dtype(dtype)
        try:
            offsets = np.load(self.idx_path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise DataError(f"{self.idx_path}: not found") from None
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f"{self.idx_path}: not a valid offsets file: {e}") from None
        if offsets.dtype != np.int64 or offsets.ndim != 1 or offsets.size == 0 or offsets[0] != 0:
            raise DataError(f"{self.idx_path}: expected a 1-D int64 array starting at 0")
        self.sizes = np.diff(offsets)
        if np.any(self.sizes < 0):
            raise DataError(f"{self.idx_path}: offsets are not non-decreasing")
        if not self.bin_path.is_file():
            raise DataError(f"{self.bin_path}: not found")
        n_tokens = int(offsets[-1])
        nbytes = self.bin_path.stat().st_size
        if nbytes != n_tokens * self.dtype.itemsize:
            raise DataError(
                f"{self.bin_path}: {nbytes} bytes, but {self.idx_path} indexes {n_tokens} tokens "
                f"of {self.dtype} ({n_tokens * self.dtype.itemsize} bytes); the files are corrupt or mismatched"
            )
        self._offsets = offsets
        # np.memmap cannot map an empty file.
        self._tokens = np.memmap(self.bin_path, dtype=self.dtype, mode="r") if n_tokens else np.zeros(0, self.dtype)

    def __len__(self) -> int:
        return self.sizes.size

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {self.bin_path} ({n} sentences)")
        i %= n
        return self._tokens[self._offsets[i] : self._offsets[i + 1]]


class TaskDataset:
    """One translation direction ``src_lang -> tgt_lang`` of a data-bin split, in M2M100 format.

    The pair ``en-fr`` serves both en->fr and fr->en. Each example becomes
    ``input_ids = [src_tag] + src + [eos]`` and ``labels = [tgt_tag] + tgt + [eos]``, each at
    most ``max_len`` long: longer sentences lose their final tokens (the eos stays), and
    ``n_truncated`` counts the examples affected.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        src_lang: str,
        tgt_lang: str,
        split: str = "train",
        max_len: int | None = None,
    ):
        self.data_dir = Path(data_dir)
        manifest = load_data_bin(self.data_dir)
        mpath = self.data_dir / "manifest.json"
        self.src_lang, self.tgt_lang, self.split = src_lang, tgt_lang, split
        self.task = f"{src_lang}-{tgt_lang}"
        pair = next((p for p in (self.task, f"{tgt_lang}-{src_lang}") if p in manifest["pairs"]), None)
        if pair is None or src_lang == tgt_lang:
            raise DataError(f"{mpath}: no pair serves the direction {src_lang}->{tgt_lang}")
        for lang in (src_lang, tgt_lang):
            if lang not in manifest["lang_ids"]:
                raise DataError(f"{mpath}: no language id for {lang!r}")
        if max_len is None:
            max_len = manifest.get("max_len") or DEFAULT_MAX_LEN
        if not isinstance(max_len, int) or max_len < 3:
            raise ConfigError(f"max_len must be an integer >= 3 (tag + token + eos), got {max_len!r}")
        self.max_len = max_len
        self.pad_id, self.eos_id = PAD_ID, EOS_ID
        self.src_tag = int(manifest["lang_ids"][src_lang])
        self.tgt_tag = int(manifest["lang_ids"][tgt_lang])

        name = f"{split}.{pair}"
        if f"{name}.{src_lang}" not in manifest["files"]:
            raise DataError(f"{mpath}: split {split!r} of pair {pair} was not encoded")
        self.src = IndexedTokens(self.data_dir / f"{name}.{src_lang}", manifest["dtype"])
        self.tgt = IndexedTokens(self.data_dir / f"{name}.{tgt_lang}", manifest["dtype"])
        if len(self.src) != len(self.tgt):
            raise DataError(
                f"{self.src.idx_path} has {len(self.src)} sentences but {self.tgt.idx_path} has {len(self.tgt)}"
            )

        # Lengths with tag + eos, before and after truncation.
        full_src, full_tgt = self.src.sizes + 2, self.tgt.sizes + 2
        self.sizes_src = np.minimum(full_src, max_len)
        self.sizes_tgt = np.minimum(full_tgt, max_len)
        self.n_truncated_src = int(np.count_nonzero(full_src > max_len))
        self.n_truncated_tgt = int(np.count_nonzero(full_tgt > max_len))
        self.n_truncated = int(np.count_nonzero((full_src > max_len) | (full_tgt > max_len)))
        if self.n_truncated:
            log.warning(
                "%s %s: %d of %d examples truncated to max_len=%d", self.task, split, self.n_truncated, len(self), max_len
            )

    def __len__(self) -> int:
        return len(self.src)

    def _block(self, data: IndexedTokens, tag: int, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded rows ``[tag] + tokens[:max_len - 2] + [eos]`` and their lengths."""
        body = np.minimum(data.sizes[indices], self.max_len - 2)
        cols = np.arange(int(body.max()))
        inside = cols[None, :] < body[:, None]
        rows = np.full((indices.size, cols.size + 2), self.pad_id, dtype=np.int64)
        rows[:, 0] = tag
        # One vectorised gather from the memory map instead of a slice per sentence.
        rows[:, 1:-1][inside] = data._tokens[(data._offsets[indices][:, None] + cols[None, :])[inside]]
        rows[np.arange(indices.size), body + 1] = self.eos_id
        return rows, body + 2

    def collate(self, indices: Sequence[int]) -> dict:
        """Right-padded M2M100 batch: input_ids, attention_mask, labels, decoder_input_ids (LongTensors).

        Labels are padded with ``pad_id`` (not -100): the trainer masks pad positions.
        ``decoder_input_ids = [eos] + labels[:-1]``. Also ``n_tokens`` (non-pad label tokens)
        and ``n_sentences`` as Python ints.
        """
        import torch  # deferred: encode_corpus workers import this module and never collate

        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size == 0:
            raise ValueError("collate: empty batch")
        if indices.min() < 0 or indices.max() >= len(self):
            raise IndexError(f"collate: indices out of range for {self.task} {self.split} ({len(self)} examples)")
        input_ids, src_len = self._block(self.src, self.src_tag, indices)
        labels, tgt_len = self._block(self.tgt, self.tgt_tag, indices)
        attention_mask = (np.arange(input_ids.shape[1])[None, :] < src_len[:, None]).astype(np.int64)
        decoder_input_ids = np.empty_like(labels)
        decoder_input_ids[:, 0] = self.eos_id
        decoder_input_ids[:, 1:] = labels[:, :-1]
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "labels": torch.from_numpy(labels),
            "decoder_input_ids": torch.from_numpy(decoder_input_ids),
            "n_tokens": int(tgt_len.sum()),
            "n_sentences": int(indices.size),
        }
