"""The (English, xx) candidate pair that every corpus source yields, and what decides its fate: the
language a catalogue locale names, the gettext entry -> candidate rules, text normalisation
(whitespace, accelerators, placeholders), the filters in the order of FILTER_RULES, and the split
by a hash of the normalised English. Shared by the default catalogue builder (data/catalogs.py)
and every reader of the multi-source builder (data/sources/)."""
from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Iterator

import polib

from massive_mt.data.corpus import canonical_lang

CHARSET_RE = re.compile(rb"charset=([A-Za-z0-9_.:-]+)")

MIN_PAIRS = 200      # training pairs a language needs to be kept (build-corpus --min-pairs)


PIVOT = "en"


FILTER_RULES = ("fuzzy", "obsolete", "untranslated", "identical", "format_only", "length_ratio", "duplicate")


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


@dataclass(frozen=True)
class Candidate:
    """One raw (English, translation) pair from a catalogue entry."""

    en: str
    xx: str
    fuzzy: bool = False
    obsolete: bool = False


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
