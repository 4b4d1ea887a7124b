"""Selecting the multi-way held-out sets (the FLORES idea, built from the catalogues).

A hash split holds out 5 % of the English strings, so a string translated into 100
languages is in the test set of each only by chance, and few such strings exist. Here
the English strings (by their split key) are ranked by how many languages translate
them, and the top ones with enough words are held out for every language at once: each
language's test set is then a subset of one shared English set, and per-language scores
compare across languages and methods. Help paragraphs (LibreOffice help, GNOME help) form
a second, longer test domain.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class MultiwaySizes:
    test: int = 2000  # shared English strings in ``test``
    valid: int = 1000  # and in ``valid``
    doc_test: int = 1000  # help paragraphs in ``test_doc``
    min_words: int = 4  # "a few words": labels and names stay in training
    max_words: int = 60
    doc_min_words: int = 8


def _tiebreak(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")


def rank(coverage: Counter, eligible) -> list[str]:
    """Eligible keys, most languages first; ties in a fixed pseudo-random order (by hash)."""
    return sorted((k for k in coverage if eligible(k)), key=lambda k: (-coverage[k], _tiebreak(k)))


def select(coverage: Counter, doc_keys: set[str], sizes: MultiwaySizes) -> dict[str, str]:
    """{split key: "test" | "valid" | "test_doc"} for the held-out English strings.

    ``coverage``: languages per split key; ``doc_keys``: keys that occur in help text.
    Within the top ``test + valid`` main keys every third goes to ``valid``, so both sets
    have the same coverage profile.
    """
    def words(k: str) -> int:
        return k.count(" ") + 1 if k else 0

    chosen: dict[str, str] = {}
    for k in rank(coverage, lambda k: k in doc_keys and words(k) >= sizes.doc_min_words)[: sizes.doc_test]:
        chosen[k] = "test_doc"
    main = rank(coverage, lambda k: k not in chosen and sizes.min_words <= words(k) <= sizes.max_words)
    n_valid = n_test = 0
    for i, k in enumerate(main):
        if n_test >= sizes.test and n_valid >= sizes.valid:
            break
        want_valid = i % 3 == 2
        if (want_valid and n_valid < sizes.valid) or n_test >= sizes.test:
            chosen[k], n_valid = "valid", n_valid + 1
        else:
            chosen[k], n_test = "test", n_test + 1
    return chosen


def coverage_summary(per_language: dict[str, int], thresholds=(100, 500, 1000)) -> dict:
    """How many languages have at least N sentences of a held-out set."""
    return {f">={t}": sum(n >= t for n in per_language.values()) for t in thresholds}
