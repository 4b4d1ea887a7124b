"""What every reader yields, and the skip ledger that every reader fills."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from massive_mt.data.candidates import Candidate


@dataclass
class Block:
    """Candidates read from one catalogue or document of one locale (``origin`` names it)."""

    locale: str
    origin: str
    candidates: list[Candidate] = field(default_factory=list)


class Skips(Counter):
    """{reason: count} of everything a reader did not turn into candidates.

    A reason is a short phrase; where one file is at fault it names the file, so the
    manifest says what was left out and why, and nothing is lost silently.
    """

    def add(self, reason: str, n: int = 1) -> None:
        self[reason] += n
