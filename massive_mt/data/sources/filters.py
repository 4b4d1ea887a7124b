"""The filter rules of the multi-source corpus: ``catalogs.FILTER_RULES`` plus the rules
that catalogues from outside the permissive PyPI set need. A candidate is counted under
the first rule that drops it, in the order of ``RULES``.

* ``english_copy``: the translation is the English up to case, punctuation, digits and
  accelerators ("Save…" for "Save").
* ``non_english_source``: under 90 % of the source's letters are ASCII (a catalogue whose
  msgids are not English).
* ``message_key``: the source is a message id, not text (``label_foo``, ``a.b.c``).

The checks are ``catalogs``' own (``normalize``, ``is_format_only``, ``display_length``,
the slack of ``length_ratio_ok``); what depends only on the English string is computed
once per English string (``English``), since every string recurs in hundreds of languages.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from massive_mt.data.candidates import display_length, FILTER_RULES, is_format_only, normalize

EXTRA_RULES = ("english_copy", "non_english_source", "message_key")
# Inserted after "identical": the text checks come before the format and length checks.
RULES = (*FILTER_RULES[:4], *EXTRA_RULES, *FILTER_RULES[4:])
RATIO_SLACK = 10  # as catalogs.length_ratio_ok

_KEY_RE = re.compile(r"[a-z0-9]+(?:[_.-][a-z0-9]+)*[_.][a-z0-9]+")
_NONLETTERS_RE = re.compile(r"[\W\d_]+")


def split_key(english: str) -> str:
    """The English string reduced to lower-case letters and single spaces (NFKC); near-duplicates
    such as "Save", "Save…" and "save:" share it, so they are held out together."""
    return " ".join(_NONLETTERS_RE.sub(" ", unicodedata.normalize("NFKC", english).lower()).split())


def ascii_letter_share(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum(c.isascii() for c in letters) / len(letters) if letters else 1.0


def is_message_key(text: str) -> bool:
    return _KEY_RE.fullmatch(text) is not None


def columns(text: str) -> int:
    """``catalogs.display_length`` with its exact shortcut for ASCII text."""
    return len(text) if text.isascii() else display_length(text)


@dataclass(frozen=True)
class English:
    """A normalised English string and what the rules need to know about it."""

    text: str
    key: str
    rule: str | None  # non_english_source / message_key / format_only, from the English alone
    columns: int

    @classmethod
    def of(cls, raw: str) -> "English":
        text = normalize(raw)
        rule = ("non_english_source" if ascii_letter_share(text) < 0.9 else "message_key" if is_message_key(text)
                else "format_only" if is_format_only(text) else None)
        return cls(text, split_key(text), rule, columns(text))


def rule_of(en: English, xx: str, max_ratio: float, fuzzy: bool = False, obsolete: bool = False) -> str | None:
    """The first rule of ``RULES`` (but ``duplicate``) that drops the pair; ``xx`` is normalised."""
    if fuzzy:
        return "fuzzy"
    if obsolete:
        return "obsolete"
    if not xx.strip():
        return "untranslated"
    if xx == en.text:
        return "identical"
    if en.key and split_key(xx) == en.key:
        return "english_copy"
    if en.rule is not None:
        return en.rule
    if is_format_only(xx):
        return "format_only"
    ratio = (columns(xx) + RATIO_SLACK) / (en.columns + RATIO_SLACK)
    if not 1 / max_ratio <= ratio <= max_ratio:
        return "length_ratio"
    return None
