"""Building the corpus from several sources: fetch -> read (by format) -> filter and
dedupe per language -> multi-way held-out sets -> files + manifest.

Memory stays at one set of unique (English, translation) pairs per language (English
strings interned), not at the raw catalogue entries: each catalogue is filtered as it is
read. The corpus is written beside ``out_dir`` and renamed into place.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from massive_mt.data.candidates import Candidate, MIN_PAIRS, normalize, PIVOT, split_of
from massive_mt.io import require_empty_dir, staged_dir
from massive_mt.data.corpus import CORPUS_FORMAT, SPLITS, write_manifest, write_parallel
from massive_mt.data.sources import gettext, keyjson, lohelp, mallard, mozilla
from massive_mt.data.sources.fetch import fetch
from massive_mt.data.sources.filters import RULES, English, rule_of
from massive_mt.data.sources.langs import corpus_language, is_pseudo_or_english
from massive_mt.data.sources.multiway import MultiwaySizes, coverage_summary, select
from massive_mt.data.sources.records import Skips
from massive_mt.data.sources.registry import PINS_FILE, Source, debian_pins, resolve, update_pins
from massive_mt.errors import DataError

READERS = {"gettext": gettext.read, "keyjson": keyjson.read, "mozilla": mozilla.read, "lohelp": lohelp.read,
           "mallard": mallard.read}
DOC_SPLIT = "test_doc"  # the help-paragraph test set: a corpus of its own in out_dir/test_doc
SPLIT_MODES = ("multiway", "hash")


class Collected:
    """Unique kept pairs per language, with the counts the manifest reports."""

    def __init__(self) -> None:
        self.pairs: dict[str, set[tuple[str, str]]] = {}
        self.filters: dict[str, Counter] = {}
        self.keys: dict[str, str] = {}  # normalised English -> its split key
        self.text: dict[str, str] = {}  # interning: one str object per English string across sources
        self.doc_english: set[str] = set()

    def add(self, lang: str, candidates: list[Candidate], max_ratio: float, english: dict[str, English]) -> None:
        """Filter and dedupe one catalogue's candidates; ``english`` caches the English side."""
        kept = self.pairs.setdefault(lang, set())
        counts = self.filters.setdefault(lang, Counter())
        for raw in candidates:
            en = english.get(raw.en)
            if en is None:
                en = english[raw.en] = English.of(raw.en)
                self.keys[en.text] = en.key
            xx = normalize(raw.xx)
            rule = rule_of(en, xx, max_ratio, raw.fuzzy, raw.obsolete)
            if rule is None and (en.text, xx) in kept:
                rule = "duplicate"
            if rule is None:
                kept.add((en.text, xx))
            else:
                counts[rule] += 1

    def merge(self, other: "Collected", doc: bool) -> tuple[Counter, Counter]:
        """Add one source's pairs; returns (new pairs per language, filter counts incl. duplicates)."""
        added, filters = Counter(), Counter()
        for lang, counts in other.filters.items():
            self.filters.setdefault(lang, Counter()).update(counts)
            filters.update(counts)
        for lang, pairs in other.pairs.items():
            kept = self.pairs.setdefault(lang, set())
            before = len(kept)
            for en, xx in pairs:
                en = self.text.setdefault(en, en)
                self.keys.setdefault(en, other.keys[en])
                kept.add((en, xx))
                if doc:
                    self.doc_english.add(en)
            added[lang] = len(kept) - before
            dup = len(pairs) - added[lang]
            if dup:
                self.filters[lang]["duplicate"] += dup
                filters["duplicate"] += dup
        return added, filters


def read_source(source: Source, files, max_ratio: float) -> tuple[dict, Collected]:
    """Read one source: its manifest record (without counts) and its filtered pairs."""
    skips = Skips()
    collected, english = Collected(), {}
    candidates = 0
    reader = READERS[source.reader]
    for block in reader([f.path for f in files], skips, **source.options):
        lang = corpus_language(block.locale)
        if lang is None:
            reason = ("English or pseudo-locale" if is_pseudo_or_english(block.locale)
                      else f"locale {block.locale!r}: no canonical language code")
            skips.add(f"{reason} (catalogues)")
            continue
        candidates += len(block.candidates)
        collected.add(lang, block.candidates, max_ratio, english)
    record = {"name": source.name, "format": source.reader, "licence": source.licence, "domain": source.domain,
              "packages": [f.record() for f in files], "candidates": candidates,
              "skipped": dict(sorted(skips.items()))}
    return record, collected


def read_sources(fetched, max_ratio: float, workers: int, progress: bool) -> tuple[list[dict], Collected]:
    """Read every source (``workers`` processes) and merge them in source order, so the
    result does not depend on ``workers``; a pair already kept from an earlier source
    counts as a duplicate of the later one."""
    collected, records = Collected(), []
    bar = tqdm(total=len(fetched), desc="reading sources", unit="source", disable=not progress)

    def merge(source: Source, record: dict, part: Collected) -> None:
        added, filters = collected.merge(part, source.domain == "doc")
        records.append({**record, "pairs": sum(added.values()), "languages": dict(sorted(added.items())),
                        "filters": {r: filters[r] for r in RULES}})
        bar.set_postfix_str(f"{source.name}: {sum(added.values()):,} pairs")
        bar.update()

    if workers <= 1:
        for source, files in fetched:
            merge(source, *read_source(source, files, max_ratio))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(read_source, source, files, max_ratio) for source, files in fetched]
            for (source, _), future in zip(fetched, futures):
                merge(source, *future.result())
    bar.close()
    return records, collected


def _assign(collected: Collected, mode: str, sizes: MultiwaySizes, valid_frac: float, test_frac: float):
    """{lang: {split: [(en, xx)]}} with one reference per English key in held-out splits."""
    keys = collected.keys
    held: dict[str, str] = {}
    if mode == "multiway":
        coverage: Counter = Counter()
        for pairs in collected.pairs.values():
            coverage.update({keys[en] for en, _ in pairs})
        held = select(coverage, {keys[en] for en in collected.doc_english}, sizes)
    out, extra = {}, Counter()
    for lang, pairs in collected.pairs.items():
        splits = {s: [] for s in (*SPLITS, DOC_SPLIT)}
        seen: set[tuple[str, str]] = set()
        for en, xx in sorted(pairs):
            k = keys[en]
            split = held.get(k, "train") if mode == "multiway" else split_of(en, valid_frac, test_frac)
            if split != "train":
                if (split, k) in seen or (mode == "hash" and len(en.split()) < 2):
                    extra[lang] += 1  # a second reference, or too short to score: never moved into train
                    continue
                seen.add((split, k))
            splits[split].append((en, xx))
        out[lang] = splits
    return out, held, extra


def _write_doc_corpus(root: Path, items: dict[str, list], description: str) -> dict[str, int]:
    root.mkdir()
    pairs = {}
    for lang, rows in sorted(items.items()):
        write_parallel(root, "test", PIVOT, lang, rows)
        pairs[f"{PIVOT}-{lang}"] = {"src": PIVOT, "tgt": lang, "train": 0, "valid": 0, "test": len(rows)}
    per_lang = {lang: len(rows) for lang, rows in items.items()}
    write_manifest(root, {"format": CORPUS_FORMAT, "pivot": PIVOT, "pairs": pairs, "description": description,
                          "test_sets": {"test": {"kind": "multiway-doc", "languages": len(per_lang)}}})
    return per_lang


def corpus_stats(totals: dict[str, int]) -> dict:
    return {"pairs": sum(totals.values()), "languages": len(totals),
            **{f"languages_ge_{t}": sum(n >= 10 ** e for n in totals.values())
               for t, e in (("1k", 3), ("10k", 4), ("100k", 5))}}


def build_sources_corpus(
    out_dir: str | os.PathLike,
    sources: list[str],
    cache_dir: str | os.PathLike | None = None,
    from_dir: str | os.PathLike | None = None,
    min_pairs: int = MIN_PAIRS,
    max_ratio: float = 3.0,
    split: str = "multiway",
    sizes: MultiwaySizes = MultiwaySizes(),
    valid_frac: float = 0.02,
    test_frac: float = 0.03,
    pins_file: str | os.PathLike = PINS_FILE,
    pins_policy: str = "prefer",
    write_pins: bool = False,
    workers: int = min(2, os.cpu_count() or 1),
    progress: bool = True,
) -> dict:
    """Build the corpus of ``sources`` (names of sources or profiles, see ``registry``) in ``out_dir``.

    ``split="multiway"`` holds out the shared English strings chosen by ``multiway.select``
    (``test``, ``valid``, and help paragraphs in the sub-corpus ``out_dir/test_doc``);
    ``"hash"`` splits by a hash of the English as ``catalogs.build_catalog_corpus`` does.
    Sources are read by ``workers`` processes. ``pins_policy`` (``fetch.PIN_POLICIES``) governs
    Debian pins the archive no longer serves; ``write_pins`` rewrites ``pins_file`` with the
    versions fetched. Returns the manifest.
    """
    out_dir = Path(out_dir)
    if split not in SPLIT_MODES:
        raise DataError(f"split={split!r}: expected one of {', '.join(SPLIT_MODES)}")
    if max_ratio <= 1:
        raise DataError(f"max_ratio={max_ratio}: must be greater than 1")
    require_empty_dir(out_dir)
    chosen = resolve(list(sources))
    pins = debian_pins(Path(pins_file)) if any(s.kind == "deb" for s in chosen) else {}
    fetched = [(s, fetch(s, pins, cache_dir, from_dir, pins_policy))
               for s in tqdm(chosen, desc="fetching", unit="source", disable=not progress)]
    files = [f for _, fs in fetched for f in fs]
    deviations = [f.deviation for f in files if f.deviation]
    records, collected = read_sources(fetched, max_ratio, workers, progress)
    read_pairs = sum(len(p) for p in collected.pairs.values())
    splits, held, extra = _assign(collected, split, sizes, valid_frac, test_frac)
    lang_filters = collected.filters
    del collected  # the pair sets; the split lists hold the strings now

    pairs, dropped, doc_items, totals = {}, {}, {}, {}
    with staged_dir(out_dir) as tmp:
        for lang in tqdm(sorted(splits), desc="writing", unit="lang", disable=not progress):
            parts = splits.pop(lang)
            if len(parts["train"]) < min_pairs:
                dropped[lang] = len(parts["train"])
                continue
            for name in SPLITS:
                if parts[name]:
                    write_parallel(tmp, name, PIVOT, lang, parts[name])
            if parts[DOC_SPLIT]:
                doc_items[lang] = parts[DOC_SPLIT]
            pairs[f"{PIVOT}-{lang}"] = {"src": PIVOT, "tgt": lang, **{s: len(parts[s]) for s in SPLITS}}
            totals[lang] = sum(len(v) for v in parts.values())
        if not pairs:
            raise DataError(f"no language has {min_pairs} training pairs in sources {', '.join(sources)}")
        test_sets = {}
        for name in ("test", "valid"):
            per_lang = {p["tgt"]: p[name] for p in pairs.values() if p[name]}
            test_sets[name] = {"kind": split, "english_strings": sum(v == name for v in held.values()) if held else None,
                               "languages": len(per_lang), "languages_with_at_least": coverage_summary(per_lang),
                               "per_language": per_lang}
        if doc_items:
            per_lang = _write_doc_corpus(tmp / DOC_SPLIT, doc_items,
                                         "help paragraphs held out of training for every language")
            test_sets[DOC_SPLIT] = {"kind": "multiway-doc", "path": DOC_SPLIT, "split": "test",
                                    "english_strings": sum(v == DOC_SPLIT for v in held.values()),
                                    "languages": len(per_lang), "languages_with_at_least": coverage_summary(per_lang),
                                    "per_language": per_lang}
        filters = {lang: {r: c[r] for r in RULES} for lang, c in sorted(lang_filters.items())}
        manifest = {
            "format": CORPUS_FORMAT,
            "pivot": PIVOT,
            "pairs": pairs,
            "languages": sorted(p["tgt"] for p in pairs.values()),
            "stats": {**corpus_stats(totals), "pairs_read": read_pairs, "languages_read": len(lang_filters)},
            "test_sets": test_sets,
            "sources": records,
            "pins": {"file": str(pins_file), "policy": pins_policy if pins else None, "deviations": deviations},
            "builder": {"name": "massive_mt.data.sources", "sources": list(sources), "min_pairs": min_pairs,
                        "max_ratio": max_ratio, "split": split, "multiway": vars(sizes) if split == "multiway" else None,
                        "valid_frac": valid_frac, "test_frac": test_frac,
                        "split_key": "lower-cased letters of the NFKC English (filters.split_key)"},
            "filters": {"total": {r: sum(f[r] for f in filters.values()) for r in RULES}, "per_language": filters},
            "held_out_extra_references": dict(sorted(extra.items())),
            "dropped_languages": dropped,
        }
        write_manifest(tmp, manifest)
    if write_pins and pins:
        update_pins(Path(pins_file), {f.package: f.version for s, fs in fetched if s.kind == "deb" for f in fs})
    return manifest
