"""Reader for LibreOffice's HTML help (``help/<lang>/text/**.html``).

Every translated heading and paragraph keeps the English element id (``par_id…``,
``hd_id…``), so paragraphs align on (file, id, occurrence). The hidden macOS variants
(``<span class="MAC">``) are removed, the rest of the markup is stripped. A language
folder that is a symbolic link (Debian ships ``help/sk -> cs``) is skipped and counted:
reading it would label Czech text as Slovak.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Iterator

from massive_mt.data.candidates import Candidate
from massive_mt.data.sources.archive import iter_package
from massive_mt.data.sources.records import Block, Skips

HELP_RE = re.compile(r"(?:^|/)help/(?P<lang>[^/]+)/(?P<file>text/.+\.html)$")
LANG_DIR_RE = re.compile(r"(?:^|/)help/(?P<lang>[^/]+)$")
_PARA_RE = re.compile(r'<(p|h[1-6])\b[^>]*?\bid="((?:par|hd)_id[^"]*)"[^>]*>(.*?)</\1\s*>', re.S)
_MAC_RE = re.compile(r'<span\b[^>]*\bclass="MAC"[^>]*>(?:(?!</span>).)*</span>', re.S)
_TAG_RE = re.compile(r"<[^>]+>")


def paragraphs(page: str) -> dict[tuple[str, int], str]:
    """{(id, occurrence): plain text} of one help page."""
    out, seen = {}, {}
    for _, pid, body in _PARA_RE.findall(page):
        body = _TAG_RE.sub("", _MAC_RE.sub("", body))
        n = seen.get(pid, 0)
        seen[pid] = n + 1
        out[(pid, n)] = html.unescape(body)
    return out


def _want(name: str) -> bool:
    return HELP_RE.search(name) is not None or LANG_DIR_RE.search(name) is not None


def _pages(path: Path, skips: Skips) -> Iterator[tuple[str, str, dict]]:
    """(lang, file, paragraphs) of every help page in one package."""
    for m in iter_package(path, _want):
        if m.link is not None:
            skips.add(f"symlinked language folder {m.name} -> {m.link}")
            continue
        match = HELP_RE.search(m.name)
        if match is None:
            continue
        yield match.group("lang"), match.group("file"), paragraphs(m.data.decode("utf-8", "replace"))


def read(packages: list[Path], skips: Skips, english_package: str) -> Iterator[Block]:
    """Blocks per (language, page); the English pages come from ``english_package``."""
    english: dict[tuple[str, str, int], str] = {}
    others = []
    for path in packages:
        if path.name.split("_")[0] != english_package:
            others.append(path)
            continue
        for lang, file, paras in _pages(path, skips):
            english.update({(file, *k): v for k, v in paras.items()})
    if not english:
        skips.add(f"no English help pages: package {english_package} missing from the source")
        return
    for path in others:
        for lang, file, paras in _pages(path, skips):
            cands = [Candidate(english[(file, *k)], v) for k, v in paras.items() if (file, *k) in english]
            skips.add("help paragraph without an English original", len(paras) - len(cands))
            yield Block(lang, f"{path.name}:{file}", cands)
