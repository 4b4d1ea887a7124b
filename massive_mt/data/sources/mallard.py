"""Reader for Mallard documents (GNOME user help, ``help/<lang>/<doc>/<page>.page``).

itstool keeps the element structure of the English page, so the block elements
(``title``, ``subtitle``, ``desc``, ``p``, ``caption``) of ``help/C/…`` and
``help/<lang>/…`` pair up in document order. ``<info>`` (all but ``desc``), ``<code>`` and
``<screen>`` are skipped; a page whose block count differs from the English one is
dropped and counted.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from lxml import etree

from massive_mt.data.candidates import Candidate
from massive_mt.data.sources.archive import iter_package
from massive_mt.data.sources.records import Block, Skips

PAGE_RE = re.compile(r"(?:^|/)help/(?P<lang>[^/]+)/(?P<page>[^/]+/[^/]+\.page)$")
BLOCKS = {"title", "subtitle", "desc", "p", "caption"}
SKIP = {"code", "screen", "credit", "revision", "license", "link"}
ENGLISH = "C"


def blocks(data: bytes) -> list[str]:
    """Texts of the block elements of a Mallard page, in document order."""
    root = etree.fromstring(data, parser=etree.XMLParser(resolve_entities=False, no_network=True))
    out = []

    def walk(el, in_info: bool) -> None:
        for child in el:
            if not isinstance(child.tag, str):
                continue
            tag = etree.QName(child).localname
            if tag in SKIP:
                continue
            if tag in BLOCKS and (not in_info or tag == "desc"):
                out.append(" ".join("".join(child.itertext()).split()))
                continue
            walk(child, in_info or tag == "info")

    walk(root, False)
    return out


def read(packages: list[Path], skips: Skips, pattern: str = PAGE_RE.pattern) -> Iterator[Block]:
    """Blocks per (language, page), aligned against the ``C`` (English) pages; ``pattern``
    (groups ``lang`` and ``page``) selects the pages."""
    rx = re.compile(pattern)
    for path in packages:
        pages: dict[str, dict[str, bytes]] = {}
        for m in iter_package(path, lambda n: rx.search(n) is not None):
            if m.link is not None:
                skips.add(f"symlinked page {m.name}")
                continue
            match = rx.search(m.name)
            pages.setdefault(match.group("lang"), {})[match.group("page")] = m.data
        english_pages = pages.pop(ENGLISH, {})
        parsed: dict[str, list[str] | None] = {}
        for lang in sorted(pages):
            for page, data in sorted(pages[lang].items()):
                if page not in english_pages:
                    skips.add("page without an English original")
                    continue
                if page not in parsed:
                    try:
                        parsed[page] = blocks(english_pages[page])
                    except etree.XMLSyntaxError as err:
                        skips.add(f"{path.name}:help/C/{page}: unparsable XML ({err})")
                        parsed[page] = None
                if parsed[page] is None:
                    continue
                try:
                    theirs = blocks(data)
                except etree.XMLSyntaxError as err:
                    skips.add(f"{path.name}:help/{lang}/{page}: unparsable XML ({err})")
                    continue
                if len(theirs) != len(parsed[page]):
                    skips.add("page whose block structure differs from the English one")
                    continue
                yield Block(lang, f"{path.name}:help/{lang}/{page}", [Candidate(e, x) for e, x in zip(parsed[page], theirs)])
