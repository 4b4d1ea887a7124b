"""Reader for key-aligned JSON message files (MediaWiki's ``i18n/<code>.json``).

In every folder holding an ``en.json``, each ``<code>.json`` is paired with it by
message key. ``@metadata`` is dropped; documentation (``qqq``) and pseudo-locales are
left to the language mapping. Values that are not strings are skipped and counted.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

from massive_mt.data.candidates import Candidate
from massive_mt.data.sources.archive import iter_package
from massive_mt.data.sources.records import Block, Skips

PIVOT_FILE = "en.json"


def _load(data: bytes, where: str, skips: Skips) -> dict | None:
    try:
        obj = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        skips.add(f"{where}: unparsable JSON ({str(err)[:80]})")
        return None
    if not isinstance(obj, dict):
        skips.add(f"{where}: JSON is not an object")
        return None
    obj.pop("@metadata", None)
    return obj


def align(english: dict, other: dict) -> list[Candidate]:
    """(English, translation) for every key present in both with string values."""
    return [Candidate(en, other[k]) for k, en in english.items()
            if isinstance(en, str) and isinstance(other.get(k), str)]


def read(packages: list[Path], skips: Skips, pattern: str) -> Iterator[Block]:
    """Blocks per (folder, code) for the JSON files whose path matches ``pattern``
    (a regex with groups ``dir`` and ``lang``, e.g. ``(?P<dir>.*/i18n(?:/.*)?)/(?P<lang>[^/]+)\\.json$``)."""
    rx = re.compile(pattern)
    for path in packages:
        folders: dict[str, dict[str, bytes]] = {}
        for m in iter_package(path, lambda n: rx.search(n) is not None):
            if m.link is not None:
                skips.add("symlinked JSON file")
                continue
            match = rx.search(m.name)
            folders.setdefault(match.group("dir"), {})[match.group("lang")] = m.data
        for folder in sorted(folders):
            files = folders[folder]
            if PIVOT_FILE not in {f"{k}.json" for k in files}:
                skips.add("JSON folder without en.json", len(files))
                continue
            english = _load(files.pop("en"), f"{path.name}:{folder}/en.json", skips)
            if english is None:
                continue
            for lang in sorted(files):
                other = _load(files[lang], f"{path.name}:{folder}/{lang}.json", skips)
                if other is not None:
                    yield Block(lang, f"{path.name}:{folder}/{lang}.json", align(english, other))
