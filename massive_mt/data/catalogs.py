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
import subprocess
import sys
import unicodedata
import zipfile
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path
from typing import Iterable, Iterator

import polib
from tqdm import tqdm

from massive_mt.data.corpus import (
    CORPUS_FORMAT,
    SPLITS,
    canonical_lang,
    is_english,
    write_manifest,
    write_parallel,
)
from massive_mt.errors import DataError
from massive_mt.io import staged_dir

MIN_PAIRS = 200      # training pairs a language needs to be kept (build-corpus --min-pairs)

# Pinned wheels; all licences are permissive (read from each wheel's METADATA into
# the manifest): Django BSD-3-Clause, Sphinx BSD-2-Clause, Wagtail BSD-3-Clause,
# django-allauth MIT, Trac BSD (3-clause; its wheel ships only .mo catalogues).
DEFAULT_WHEELS = (
    "django==5.2.19",
    "sphinx==9.0.4",
    "wagtail==8.0.1",
    "django-allauth==65.21.1",
    "Trac==1.6",
)

PIVOT = "en"
FILTER_RULES = ("fuzzy", "obsolete", "untranslated", "identical", "format_only", "length_ratio", "duplicate")

# --------------------------------------------------------------------------------------
# Wheels
# --------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$MASSIVE_MT_CACHE/wheels``, by default ``~/.cache/massive_mt/wheels``."""
    root = os.environ.get("MASSIVE_MT_CACHE") or Path.home() / ".cache" / "massive_mt"
    return Path(root) / "wheels"


def _norm_name(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _wheel_key(path: Path) -> tuple[str, str]:
    """(normalised name, version) from a wheel file name ``name-version-...whl``."""
    name, version = path.name.split("-")[:2]
    return _norm_name(name), version.lower()


def download_wheels(specs: Iterable[str], cache_dir: str | os.PathLike) -> list[Path]:
    """Return a wheel path per spec, downloading ``name==version`` specs with pip.

    A spec that is an existing file is used as is. Wheels already in ``cache_dir``
    (matched by normalised name and version) are not downloaded again.
    """
    cache_dir = Path(cache_dir)
    paths = []
    for spec in specs:
        if Path(spec).is_file():
            paths.append(Path(spec))
            continue
        name, sep, version = spec.partition("==")
        if not sep or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or not version.strip():
            raise DataError(f"wheel spec {spec!r}: expected an existing .whl file or a pin 'name==version'")
        key = (_norm_name(name), version.strip().lower())
        cached = sorted(p for p in cache_dir.glob("*.whl") if _wheel_key(p) == key) if cache_dir.is_dir() else []
        if not cached:
            cache_dir.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "-d", str(cache_dir), spec]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
                raise DataError(f"pip download {spec} failed (exit {proc.returncode}):\n{tail}")
            cached = sorted(p for p in cache_dir.glob("*.whl") if _wheel_key(p) == key)
            if not cached:
                raise DataError(f"pip download {spec} succeeded but no matching wheel is in {cache_dir}")
        paths.append(cached[0])
    return paths


def wheel_metadata(wheel: zipfile.ZipFile, path: Path) -> dict:
    """Name, version and licence of a wheel, from its ``*.dist-info/METADATA``."""
    members = [n for n in wheel.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
    if not members:
        raise DataError(f"{path}: not a wheel (no *.dist-info/METADATA)")
    meta = HeaderParser().parsestr(wheel.read(members[0]).decode("utf-8", "replace"))
    licence = meta.get("License-Expression") or (meta.get("License") or "").strip()
    if not licence or len(licence) > 100:  # some projects paste the whole licence text
        classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier", []) if c.startswith("License ::")]
        licence = "; ".join(classifiers) or licence[:100] or "unknown"
    return {"name": meta.get("Name", path.name), "version": meta.get("Version", "?"), "license": licence}


# --------------------------------------------------------------------------------------
# Catalogue extraction
# --------------------------------------------------------------------------------------

# Locales that this corpus merges into one language; canonical_lang() keeps them
# apart because a user's own corpus may need them apart. A region adds nothing when
# it names the country that the bare-language catalogue already targets (Sphinx ships
# both "de" and "de_DE", Django "hr" and Sphinx "hr_HR"). Languages with several
# established national variants (es_AR, es_MX, pt_BR, ar_DZ, ...) keep those regions;
# for them only the "home" region merges (gettext's bare "pt" is European Portuguese).
HOME_REGION = {
    "af": "ZA", "am": "ET", "az": "AZ", "be": "BY", "bg": "BG", "bn": "BD", "bs": "BA", "ca": "ES",
    "cs": "CZ", "cy": "GB", "da": "DK", "de": "DE", "el": "GR", "es": "ES", "et": "EE", "eu": "ES",
    "fa": "IR", "fi": "FI", "fr": "FR", "ga": "IE", "gl": "ES", "he": "IL", "hi": "IN", "hr": "HR",
    "hu": "HU", "hy": "AM", "id": "ID", "is": "IS", "it": "IT", "ja": "JP", "ka": "GE", "kk": "KZ",
    "km": "KH", "ko": "KR", "ky": "KG", "lt": "LT", "lv": "LV", "mk": "MK", "mn": "MN", "ms": "MY",
    "my": "MM", "nb": "NO", "ne": "NP", "nl": "NL", "nn": "NO", "pl": "PL", "pt": "PT", "ro": "RO",
    "ru": "RU", "si": "LK", "sk": "SK", "sl": "SI", "sq": "AL", "sr": "RS", "sv": "SE", "sw": "TZ",
    "tg": "TJ", "th": "TH", "tk": "TM", "tr": "TR", "uk": "UA", "ur": "PK", "uz": "UZ", "vi": "VN",
}
# Bare "zh" catalogues (e.g. Wagtail's) are written in Simplified script.
BARE_LANGUAGE_SCRIPT = {"zh": "zh_Hans"}


def catalog_language(locale: str) -> str:
    """The corpus language of a catalogue's locale directory: canonical_lang() plus the merges above."""
    lang = canonical_lang(locale)
    lang = BARE_LANGUAGE_SCRIPT.get(lang, lang)
    parts = lang.split("_")
    if len(parts) > 1 and HOME_REGION.get(parts[0]) == parts[-1]:
        lang = "_".join(parts[:-1])
    return lang


CATALOG_RE = re.compile(r"(?:^|/)locale/([^/]+)/LC_MESSAGES/([^/]+)\.(po|mo)$")
CHARSET_RE = re.compile(rb"charset=([A-Za-z0-9_.:-]+)")


@dataclass(frozen=True)
class Candidate:
    """One raw (English, translation) pair from a catalogue entry."""

    en: str
    xx: str
    fuzzy: bool = False
    obsolete: bool = False


def catalog_members(names: Iterable[str]) -> dict[str, str]:
    """Catalogue members of a wheel, {member: locale}; a ``.mo`` only where no ``.po`` sits beside it."""
    names = set(names)
    out = {}
    for name in sorted(names):
        m = CATALOG_RE.search(name)
        if m and not (m.group(3) == "mo" and name[:-3] + ".po" in names):
            out[name] = m.group(1)
    return out


def parse_catalog(data: bytes, is_mo: bool) -> list:
    """Parse .po or .mo bytes with polib; returns its entries (obsolete ones included)."""
    if is_mo:
        return list(polib.mofile(data))
    m = CHARSET_RE.search(data)
    encoding = m.group(1).decode() if m and m.group(1).upper() != b"CHARSET" else "utf-8"
    return list(polib.pofile(data.decode(encoding), encoding=encoding))


def entry_candidates(entry) -> Iterator[Candidate]:
    """(msgid, msgstr) of an entry; for plurals msgid/msgstr[0] and msgid_plural/msgstr[1]."""
    if not entry.msgid:  # the header
        return
    flags = {"fuzzy": "fuzzy" in getattr(entry, "flags", ()), "obsolete": bool(getattr(entry, "obsolete", False))}
    if entry.msgid_plural:
        forms = {int(k): v for k, v in entry.msgstr_plural.items()}
        yield Candidate(entry.msgid, forms.get(0, ""), **flags)
        if 1 in forms:
            yield Candidate(entry.msgid_plural, forms[1], **flags)
    else:
        yield Candidate(entry.msgid, entry.msgstr, **flags)


# --------------------------------------------------------------------------------------
# Normalisation and filters (pure functions)
# --------------------------------------------------------------------------------------

# Line breaks and ASCII spacing collapse to one space; no-break spaces (e.g. French
# U+202F before ':') are typography and are kept.
_SPACE_RE = re.compile(r"[ \t\n\r\f\v\x85\u2028\u2029]+")
_ENTITY = r"&(?:[A-Za-z][A-Za-z0-9]*|#[0-9]+|#[xX][0-9A-Fa-f]+);"
_LETTER = r"[^\W\d_]"
# "File(&F)" / "ファイル(_F)": an accelerator in brackets after the label (CJK style).
_BRACKET_ACCEL_RE = re.compile(r"\s?\([&_][A-Za-z0-9]\)")
# "&File": '&' at a word start before a letter, not an entity ("&amp;") nor "R&D".
_AMP_ACCEL_RE = re.compile(rf"(?<!\w)&(?!{_ENTITY[1:]})(?={_LETTER})")
# "_File": '_' at a word start before a letter; snake_case and "__init__" are untouched.
_UNDERSCORE_ACCEL_RE = re.compile(rf"(?<!\w)_(?={_LETTER})")
_PLACEHOLDER_RES = (
    re.compile(r"%(?:\([^)]*\))?[-+ #0]*(?:\d+|\*)?(?:\.(?:\d+|\*))?[hlLqjzt]*[diouxXeEfFgGcrsa%]"),  # printf
    re.compile(r"\{[^{}]*\}"),  # str.format / template braces: {0}, {name}, {{ var }}
    re.compile(r"</?[A-Za-z][^<>]*>"),  # HTML/XML tags
    re.compile(_ENTITY),  # &amp; &#39; &#x27;
)


def normalize_whitespace(text: str) -> str:
    """Collapse whitespace runs (newlines included) to one space and strip the ends."""
    return _SPACE_RE.sub(" ", text).strip()


def strip_accelerators(text: str) -> str:
    """Remove keyboard-accelerator markers: ``_File``, ``&File``, ``File(&F)``."""
    text = _BRACKET_ACCEL_RE.sub("", text)
    text = _AMP_ACCEL_RE.sub("", text)
    return _UNDERSCORE_ACCEL_RE.sub("", text)


def normalize(text: str) -> str:
    """The normal form of a catalogue string: accelerators removed, whitespace collapsed."""
    return normalize_whitespace(strip_accelerators(text))


def strip_placeholders(text: str) -> str:
    """Remove printf/format placeholders, markup tags and character entities."""
    for pattern in _PLACEHOLDER_RES:
        text = pattern.sub(" ", text)
    return text


def is_format_only(text: str) -> bool:
    """True when nothing alphabetic is left once placeholders and markup are removed."""
    return not any(c.isalpha() for c in strip_placeholders(text))


def display_length(text: str) -> int:
    """Length in columns: wide (CJK) characters count 2, so dense scripts compare fairly with Latin."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def length_ratio_ok(src: str, tgt: str, max_ratio: float = 3.0, slack: int = 10) -> bool:
    """Whether (len(tgt)+slack)/(len(src)+slack) lies within [1/max_ratio, max_ratio].

    The slack keeps short strings ("OK" -> "Aceptar") from failing on tiny counts.
    """
    ratio = (display_length(tgt) + slack) / (display_length(src) + slack)
    return 1 / max_ratio <= ratio <= max_ratio


def first_failing_rule(c: Candidate, max_ratio: float = 3.0) -> str | None:
    """The first of FILTER_RULES (but 'duplicate') that drops candidate ``c``; None keeps it.

    ``c`` must be normalised already (see ``normalize``).
    """
    if c.fuzzy:
        return "fuzzy"
    if c.obsolete:
        return "obsolete"
    if not c.xx.strip():
        return "untranslated"
    if c.xx == c.en:
        return "identical"
    if is_format_only(c.en) or is_format_only(c.xx):
        return "format_only"
    if not length_ratio_ok(c.en, c.xx, max_ratio):
        return "length_ratio"
    return None


def filter_pairs(candidates: Iterable[Candidate], max_ratio: float = 3.0) -> tuple[list[tuple[str, str]], dict]:
    """Normalise, filter and dedupe one language's candidates.

    Returns the kept (en, xx) pairs, sorted, and {rule: number dropped} for every
    rule in FILTER_RULES.
    """
    counts = dict.fromkeys(FILTER_RULES, 0)
    kept: set[tuple[str, str]] = set()
    for raw in candidates:
        c = Candidate(normalize(raw.en), normalize(raw.xx), raw.fuzzy, raw.obsolete)
        rule = first_failing_rule(c, max_ratio)
        if rule is None and (c.en, c.xx) in kept:
            rule = "duplicate"
        if rule:
            counts[rule] += 1
        else:
            kept.add((c.en, c.xx))
    return sorted(kept), counts


def split_of(english: str, valid_frac: float = 0.02, test_frac: float = 0.03) -> str:
    """train/valid/test by a hash of the (normalised) English, identical for every language.

    The 64-bit BLAKE2b value mapped to [0, 1): [0, test) -> test,
    [test, test + valid) -> valid, the rest -> train.
    """
    h = int.from_bytes(hashlib.blake2b(english.encode("utf-8"), digest_size=8).digest(), "big") / 2**64
    if h < test_frac:
        return "test"
    if h < test_frac + valid_frac:
        return "valid"
    return "train"


# --------------------------------------------------------------------------------------
# Builder
# --------------------------------------------------------------------------------------


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
    sources: Iterable[str] | None = None,
    **source_options,
) -> dict:
    """Build an English-centric corpus ``{split}.en-{xx}.{en,xx}`` in ``out_dir``; returns the manifest.

    ``wheels`` are ``name==version`` pins (downloaded into ``cache_dir``, default
    ``default_cache_dir()``) or paths of wheel files. Languages with fewer than
    ``min_pairs`` training pairs are left out and listed in the manifest. The corpus
    is written to a temporary directory beside ``out_dir`` and renamed into place.

    ``sources``: names of corpus sources or profiles (``massive_mt.data.sources``); when
    given, the multi-source builder makes the corpus instead (``source_options`` go to it).
    """
    # --- multi-source corpora (massive_mt.data.sources) ---
    if sources is not None:
        from massive_mt.data.sources.build import build_sources_corpus

        return build_sources_corpus(out_dir, list(sources), cache_dir=cache_dir, min_pairs=min_pairs, max_ratio=max_ratio,
                                    valid_frac=valid_frac, test_frac=test_frac, progress=progress, **source_options)
    # --- end multi-source ---
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
