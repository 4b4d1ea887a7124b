"""Reader for gettext catalogues (``.po`` and ``.mo``) in wheels, ``.deb`` packages and
zips nested in them (calibre's ``locales.zip``).

The locale comes from the member path through the source's ``pattern`` (a regex with a
``lang`` group: the folder before ``LC_MESSAGES``, a ``<lang>.mo`` file name, ...). Where
both a ``.po`` and a ``.mo`` of one catalogue exist only the ``.po`` is read. Zope/Plone
catalogues use message ids (``label_foo``) and keep the English in ``#. Default: "…"``
comments; with ``zope_defaults`` that text is the English side.
"""

from __future__ import annotations

import ast
import re
import struct
from pathlib import Path
from typing import Iterator

from massive_mt.data.candidates import Candidate, entry_candidates, parse_catalog
from massive_mt.data.sources.archive import Member, iter_package, iter_zip, open_zip
from massive_mt.data.sources.records import Block, Skips

_DEFAULT_RE = re.compile(r'Default:\s*(".*")\s*$', re.S)


def zope_default(comment: str) -> str | None:
    """The English of a Zope/Plone entry from its ``#. Default: "…"`` comment, if any."""
    m = _DEFAULT_RE.search(comment.replace('"\n"', "").replace("\n", " "))
    if not m:
        return None
    try:
        return ast.literal_eval(m.group(1))
    except (ValueError, SyntaxError):
        return m.group(1)[1:-1]


def mo_candidates(data: bytes) -> list[Candidate]:
    """Candidates of a binary ``.mo`` catalogue, read with ``struct`` (several times faster
    than polib): msgid/msgstr and, for plurals, msgid_plural/msgstr[1]; ``msgctxt`` is
    dropped; the header's charset is honoured. ``.mo`` files hold no fuzzy entries.
    Raises ValueError for a damaged file."""
    if len(data) < 28:
        raise ValueError("too short for a .mo file")
    magic = struct.unpack("<I", data[:4])[0]
    order = "<" if magic == 0x950412DE else ">" if magic == 0xDE120495 else None
    if order is None:
        raise ValueError("bad .mo magic number")
    _, n, orig, trans = struct.unpack(order + "4I", data[4:20])
    if orig + 8 * n > len(data) or trans + 8 * n > len(data):
        raise ValueError("truncated .mo file (string tables past the end)")
    charset = "utf-8"
    origs = struct.unpack(f"{order}{2 * n}I", data[orig: orig + 8 * n])
    transs = struct.unpack(f"{order}{2 * n}I", data[trans: trans + 8 * n])
    if max((origs[i] + origs[i + 1] for i in range(0, 2 * n, 2)), default=0) > len(data) or \
            max((transs[i] + transs[i + 1] for i in range(0, 2 * n, 2)), default=0) > len(data):
        raise ValueError("truncated .mo file (strings past the end)")
    raw = []
    for i in range(0, 2 * n, 2):
        msgid = data[origs[i + 1]: origs[i + 1] + origs[i]]
        msgstr = data[transs[i + 1]: transs[i + 1] + transs[i]]
        if not msgid:
            m = re.search(rb"charset=([A-Za-z0-9_.:-]+)", msgstr)
            if m and m.group(1).upper() != b"CHARSET":
                charset = m.group(1).decode("ascii")
            continue
        raw.append((msgid, msgstr))
    out = []
    for msgid, msgstr in raw:
        ids = msgid.decode(charset).split("\x04")[-1].split("\x00")
        strs = msgstr.decode(charset).split("\x00")
        out.append(Candidate(ids[0], strs[0]))
        if len(ids) > 1 and len(strs) > 1:
            out.append(Candidate(ids[1], strs[1]))
    return out


def catalogue_candidates(data: bytes, is_mo: bool, zope_defaults: bool = False) -> list[Candidate]:
    """Candidates of one catalogue (parse errors propagate as OSError/ValueError/LookupError)."""
    if is_mo:
        return mo_candidates(data)
    out = []
    for entry in parse_catalog(data, is_mo):
        if zope_defaults and entry.msgid and not entry.msgid_plural:
            default = zope_default(getattr(entry, "comment", "") or "")
            if default is not None:
                out.append(Candidate(default, entry.msgstr, "fuzzy" in entry.flags, bool(entry.obsolete)))
                continue
        out.extend(entry_candidates(entry))
    return out


def _blocks(members: Iterator[Member], pattern: re.Pattern, where: str, skips: Skips,
            zope_defaults: bool, names: set[str] | None = None) -> Iterator[Block]:
    for m in members:
        match = pattern.search(m.name)
        if match is None:
            continue
        if m.link is not None:
            skips.add("symlinked catalogue (the file it points to is read instead)")
            continue
        is_mo = m.name.endswith(".mo")
        twin = m.name[:-3] + (".po" if is_mo else ".mo")
        if names is not None and twin in names and is_mo == zope_defaults:
            continue  # one of .po/.mo: the faster .mo, but the .po where comments carry the English
        try:
            cands = catalogue_candidates(m.data, is_mo, zope_defaults)
        except (OSError, ValueError, LookupError, UnicodeDecodeError) as err:
            skips.add(f"{where}:{m.name}: unparsable catalogue ({str(err)[:120]})")
            continue
        yield Block(match.group("lang"), f"{where}:{m.name}", cands)


def read(packages: list[Path], skips: Skips, pattern: str, nested: str | None = None,
         zope_defaults: bool = False) -> Iterator[Block]:
    """Blocks of every catalogue in ``packages`` whose path matches ``pattern``.

    ``nested``: the path of a zip inside the package whose members hold the catalogues.
    """
    rx = re.compile(pattern)
    for path in packages:
        if nested:
            for outer in iter_package(path, lambda n: n == nested):
                with open_zip(outer.data, f"{path}:{outer.name}") as z:
                    names = set(z.namelist())
                    yield from _blocks(iter_zip(z, lambda n: rx.search(n) is not None, f"{path}:{outer.name}"),
                                       rx, f"{path.name}:{outer.name}", skips, zope_defaults, names)
            continue
        names = None
        if path.suffix != ".deb":
            with open_zip(path, str(path)) as z:
                names = set(z.namelist())
        yield from _blocks(iter_package(path, lambda n: rx.search(n) is not None), rx, path.name, skips,
                           zope_defaults, names)
