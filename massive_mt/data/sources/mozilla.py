"""Reader for Mozilla localisation: Fluent (``.ftl``) and ``.properties`` files.

The English is in the application's ``omni.ja`` archives (``localization/en-US/…`` and
``chrome/en-US/locale/…``), each language in a language-pack ``.xpi``
(``localization/<loc>/…``, ``chrome/<loc>/locale/<loc>/…``, each possibly under
``browser/``). Messages align on (path with the locale segments replaced, message id or
``id.attribute``). Messages with selectors (``->``) are dropped; ``{ … }`` placeables
and term references stay in the text (the format-only filter drops strings of only those).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from massive_mt.data.candidates import Candidate
from massive_mt.data.sources.archive import iter_package, iter_zip, open_zip
from massive_mt.data.sources.records import Block, Skips

_FTL_ENTRY = re.compile(r"^(-?[A-Za-z][\w-]*)\s*=\s*(.*)$")
_FTL_ATTR = re.compile(r"^\s+\.([A-Za-z][\w-]*)\s*=\s*(.*)$")


def parse_ftl(text: str) -> dict[str, str]:
    """{id or id.attr: value} of a Fluent resource; multi-line values are joined with spaces,
    messages with select expressions are left out. Terms (``-brand``) are kept as ids too."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            if not line.strip():
                continue
            current = None
            continue
        m = _FTL_ENTRY.match(line)
        if m:
            current = m.group(1)
            out[current] = [m.group(2)]
            continue
        m = _FTL_ATTR.match(line)
        if m and current is not None:
            msg = current.split(".")[0]
            current = f"{msg}.{m.group(1)}"
            out[current] = [m.group(2)]
            continue
        if line[:1].isspace() and current is not None:
            out[current].append(line.strip())
            continue
        current = None
    result = {}
    for key, parts in out.items():
        value = " ".join(p for p in parts if p)
        if "->" in value or value.strip() in ("", "{") :
            continue
        result[key] = value
    return result


def parse_properties(text: str) -> dict[str, str]:
    """{key: value} of a Java-style ``.properties`` file (comments, continuations, ``\\uXXXX``)."""
    out = {}
    lines = iter(text.splitlines())
    for line in lines:
        s = line.strip()
        if not s or s[0] in "#!":
            continue
        while s.endswith("\\") and not s.endswith("\\\\"):
            s = s[:-1] + next(lines, "").lstrip()
        m = re.match(r"((?:\\.|[^=:\s])+)\s*[=:]?\s*(.*)$", s)
        if not m:
            continue
        value = re.sub(r"\\u([0-9a-fA-F]{4})", lambda u: chr(int(u.group(1), 16)), m.group(2))
        value = value.replace("\\n", "\n").replace("\\t", "\t").replace("\\:", ":").replace("\\=", "=")
        out[m.group(1)] = value
    return out


def _key_path(name: str, locale: str) -> str | None:
    """``browser/chrome/de/locale/browser/x.properties`` -> ``chrome/*/locale/browser/x.properties``."""
    name = name.removeprefix("browser/")
    parts = name.split("/")
    if parts[0] not in ("localization", "chrome"):
        return None
    return "/".join("*" if p == locale else p for p in parts)


def _messages(z, where: str, locale: str, skips: Skips) -> dict[tuple[str, str], str]:
    out = {}
    for m in iter_zip(z, lambda n: n.endswith((".ftl", ".properties")), where):
        key = _key_path(m.name, locale)
        if key is None:
            continue
        try:
            text = m.data.decode("utf-8")
        except UnicodeDecodeError:
            skips.add(f"{where}:{m.name}: not UTF-8")
            continue
        parsed = parse_ftl(text) if m.name.endswith(".ftl") else parse_properties(text)
        out.update({(key, k): v for k, v in parsed.items()})
    return out


def read(packages: list[Path], skips: Skips, english_package: str) -> Iterator[Block]:
    """Blocks per language pack; the English comes from ``english_package``'s ``omni.ja`` files."""
    english: dict[tuple[str, str], str] = {}
    packs = []
    for path in packages:
        if path.name.split("_")[0] != english_package:
            packs.append(path)
            continue
        for m in iter_package(path, lambda n: n.endswith("omni.ja")):
            with open_zip(m.data, f"{path}:{m.name}") as z:
                english.update(_messages(z, f"{path.name}:{m.name}", "en-US", skips))
    if not english:
        skips.add(f"no English strings: package {english_package} missing from the source")
        return
    for path in packs:
        for m in iter_package(path, lambda n: n.endswith(".xpi")):
            locale = re.search(r"langpack-([^@/]+)@", m.name)
            if locale is None:
                skips.add(f"{path.name}:{m.name}: no locale in the language-pack name")
                continue
            loc = locale.group(1)
            with open_zip(m.data, f"{path}:{m.name}") as z:
                target = _messages(z, f"{path.name}:{m.name}", loc, skips)
            cands = [Candidate(english[k], v) for k, v in target.items() if k in english]
            skips.add("message without an English original", len(target) - len(cands))
            yield Block(loc, f"{path.name}:{m.name}", cands)
