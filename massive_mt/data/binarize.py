"""Binarising a corpus into a data-bin directory, and reading a data-bin's manifest.

A *data-bin* directory (written by :func:`encode_corpus`) holds, for every corpus file
``{split}.{src}-{tgt}.{lang}``, a flat token file ``….bin`` and an offsets file
``….idx.npy`` (int64, n + 1 entries; read with :class:`~massive_mt.data.indexed.IndexedTokens`),
plus its tokenizer (the project's ``spm.model``/``spm.vocab``, or a copy of a pretrained
checkpoint's Hugging Face tokenizer in ``tokenizer/``, see :mod:`massive_mt.data.tokenizers`) and a
``manifest.json`` written last, whose presence marks the directory as complete.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from massive_mt.data import language_codes
from massive_mt.data.corpus import MANIFEST_NAME, load_corpus, read_lines
from massive_mt.data.tokenizer_base import BaseTokenizer
from massive_mt.data.tokenizers import DATA_BIN_TOKENIZER_DIR, HFTokenizer, load_tokenizer
from massive_mt.errors import ConfigError, DataError
from massive_mt.io import atomic_write_json, read_json_object

DATA_BIN_FORMAT = "massive_mt.data_bin/1"

_worker_tok: BaseTokenizer | None = None


def _init_worker(tokenizer_path: str) -> None:
    """Load the tokenizer once per encoding process (top-level so that spawn can pickle it)."""
    global _worker_tok
    _worker_tok = load_tokenizer(tokenizer_path)


def _encode_file(job: tuple[str, str, str]) -> dict:
    """Encode one text file into ``{out}.bin`` / ``{out}.idx.npy`` with the worker's tokenizer."""
    text_path, out_prefix, dtype = job
    tok = _worker_tok
    bin_path, idx_path = Path(out_prefix + ".bin"), Path(out_prefix + ".idx.npy")
    tmp_bin, tmp_idx = bin_path.with_name(bin_path.name + ".tmp"), idx_path.with_name(idx_path.name + ".tmp")
    lengths: list[int] = []

    def flush(chunk: list[tuple[int, str]], out) -> None:
        encoded = tok.encode_batch([line for _, line in chunk])
        for (lineno, _), ids in zip(chunk, encoded):
            if not ids:
                raise DataError(f"{text_path}:{lineno}: line encodes to no tokens")
            lengths.append(len(ids))
        np.fromiter((i for ids in encoded for i in ids), dtype=dtype).tofile(out)

    try:
        with open(tmp_bin, "wb") as out:
            chunk: list[tuple[int, str]] = []
            for item in read_lines(text_path):
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
    return {"name": bin_path.name[: -len(".bin")], "sentences": int(sizes.size), "tokens": int(offsets[-1])}


def select_pairs(pairs: dict, pivot: str, langs: Sequence[str] | None) -> dict:
    """The pairs of the corpus manifest among ``langs`` and the pivot (all where ``langs`` is None)."""
    if langs is None:
        return pairs
    known = {p[k] for p in pairs.values() for k in ("src", "tgt")}
    unknown = sorted(set(langs) - known)
    if unknown:
        raise DataError(f"--langs: {', '.join(unknown)} not in the corpus (its languages: {', '.join(sorted(known))})")
    keep = set(langs) | {pivot}
    out = {name: p for name, p in pairs.items() if p["src"] in keep and p["tgt"] in keep}
    if not out:
        raise DataError(f"--langs {','.join(langs)}: no pair of the corpus has both sides among them and {pivot}")
    return out


def encode_corpus(
    corpus_dir: str | os.PathLike,
    tokenizer: str | os.PathLike | BaseTokenizer,
    out_dir: str | os.PathLike,
    splits: Sequence[str] = ("train", "valid", "test"),
    workers: int | None = None,
    langs: Sequence[str] | None = None,
    add_languages: Sequence[str] = (),
    init_from: dict[str, str | None] | None = None,
) -> Path:
    """Binarise every ``{split}.{pair}.{lang}`` corpus file into ``out_dir``; return the manifest path.

    ``tokenizer``: the project's SentencePiece model (a ``.model`` file), a Hugging Face tokenizer
    directory of a pretrained checkpoint, or a loaded tokenizer. ``langs`` keeps the pairs among
    those languages and the pivot (default: all). ``add_languages`` (Hugging Face tokenizers only)
    get new ``__xx__`` tokens; ``init_from`` names, per added language, the language whose
    embedding initialises it at training (None: the mean of the model's language tags).

    Never truncates (the training option ``data.max_len`` does, when the datasets are read). A
    split whose corpus size is 0 and whose files are absent is skipped. ``workers`` defaults to
    the CPU count (1 = in-process).
    """
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers must be a positive integer or None, got {workers!r}")
    corpus = load_corpus(corpus_dir, verify=True)
    pairs = select_pairs(corpus.pairs_manifest(), corpus.pivot, langs)
    tok = tokenizer if isinstance(tokenizer, BaseTokenizer) else load_tokenizer(tokenizer)
    langs = sorted({p[k] for p in pairs.values() for k in ("src", "tgt")})
    init_from = dict(init_from or {})
    info: dict = {"kind": tok.kind, "family": tok.family, "source": str(getattr(tok, "directory", tok.files()[0])),
                  "source_sha256": tok.identity(), "source_vocab_size": tok.vocab_size}
    if isinstance(tok, HFTokenizer):
        missing = sorted(set(add_languages) - set(langs))
        if missing:
            raise DataError(f"--add-languages: {', '.join(missing)} not among the languages encoded ({', '.join(langs)})")
        language_codes.model_codes(langs, tok.family, added=add_languages)   # DataError listing what it lacks
        for lang, src in init_from.items():
            if src is not None:
                tok.lang_id(src)          # DataError: the related language has no tag
        new_ids = tok.add_languages(list(add_languages))
        info["added_languages"] = {lang: {"id": i, "init_from": init_from.get(lang)} for lang, i in new_ids.items()}
    elif add_languages:
        raise ConfigError("--add-languages needs --tokenizer (a pretrained checkpoint's tokenizer); the project's "
                          "SentencePiece model has a tag for every corpus language")
    lang_ids = {lang: tok.lang_id(lang) for lang in langs}  # DataError if the model lacks a tag
    dtype = "uint16" if tok.vocab_size < 65536 else "int32"

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)  # incomplete until rewritten at the end
    tok_dir = out_dir if tok.kind == "spm" else out_dir / DATA_BIN_TOKENIZER_DIR
    copy = tok.save(tok_dir)
    info["sha256"] = load_tokenizer(out_dir).identity()
    if info["sha256"] != info["source_sha256"] and not info.get("added_languages") \
            and not getattr(tok, "registered_codes", False):
        raise DataError(f"{tok_dir}: the copy of the tokenizer differs from {info['source']}")

    jobs, pairs_of_files = [], []
    for name in sorted(pairs):
        pair = pairs[name]
        for split in splits:
            paths = [corpus_dir / f"{split}.{name}.{pair[k]}" for k in ("src", "tgt")]
            if pair.get(split) == 0 and not any(p.exists() for p in paths):
                continue
            for p in paths:
                if not p.is_file():
                    raise DataError(f"{p}: not found (listed by {corpus_dir / MANIFEST_NAME} pairs.{name})")
                jobs.append((str(p), str(out_dir / p.name), dtype))
            pairs_of_files.append((name, split, [p.name for p in paths]))

    workers = min(workers or os.cpu_count() or 1, max(1, len(jobs)))
    stats: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        if workers > 1:
            ctx = multiprocessing.get_context("spawn")  # fork is unsafe once torch/threads are live
            pool = stack.enter_context(ctx.Pool(workers, _init_worker, (str(out_dir),)))
            results: Iterable[dict] = pool.imap_unordered(_encode_file, jobs)
        else:
            _init_worker(str(out_dir))
            results = map(_encode_file, jobs)
        for r in tqdm(results, total=len(jobs), desc="encode", unit="file"):
            stats[r.pop("name")] = r

    for name, split, (src_file, tgt_file) in pairs_of_files:
        n_src, n_tgt = stats[src_file]["sentences"], stats[tgt_file]["sentences"]
        if n_src != n_tgt:
            raise DataError(f"{corpus_dir / src_file} has {n_src} lines but {corpus_dir / tgt_file} has {n_tgt}")
        expected = pairs[name].get(split)
        if expected is not None and expected != n_src:
            raise DataError(
                f"{corpus_dir / src_file}: {n_src} lines but {corpus_dir / MANIFEST_NAME} "
                f"pairs.{name}.{split} says {expected}"
            )

    out = {
        "format": DATA_BIN_FORMAT,
        "pivot": corpus.pivot,
        "pairs": pairs,
        "splits": list(splits),
        "files": dict(sorted(stats.items())),
        "dtype": dtype,
        "vocab_size": tok.vocab_size,
        "langs": langs,
        "lang_ids": lang_ids,
        "special_ids": tok.special_ids(),
        "tokenizer": info,
    }
    if tok.kind == "spm":
        out["spm_model"] = copy[0].name
    atomic_write_json(out_dir / MANIFEST_NAME, out)
    return out_dir / MANIFEST_NAME


def load_data_bin(data_dir: str | os.PathLike) -> dict:
    """Read and validate ``{data_dir}/manifest.json`` of a complete data-bin directory."""
    path = Path(data_dir) / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{path}: not found ({data_dir} is not a complete data-bin; rerun encode_corpus)")
    manifest = read_json_object(path)
    if manifest.get("format") != DATA_BIN_FORMAT:
        raise DataError(f"{path}: 'format' must be {DATA_BIN_FORMAT!r}, got {manifest.get('format')!r}")
    for key, kind in (("pairs", dict), ("files", dict), ("lang_ids", dict), ("langs", list), ("vocab_size", int)):
        if not isinstance(manifest.get(key), kind):
            raise DataError(f"{path}: '{key}' is missing or not a {kind.__name__}")
    if manifest.get("dtype") not in ("uint16", "int32"):
        raise DataError(f"{path}: 'dtype' must be 'uint16' or 'int32', got {manifest.get('dtype')!r}")
    return manifest
