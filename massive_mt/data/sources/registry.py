"""The corpus sources: which packages, which reader (by format), which licence.

A source is a set of packages read by one format reader. ``pypi`` (the permissive
wheels, the default) is what the demo and CI use; ``full`` takes every source. Debian
versions are pinned in ``debian-bookworm.txt``; wheels are pinned here.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

from massive_mt.data.candidates import MIN_PAIRS
from massive_mt.data.wheels import DEFAULT_WHEELS
from massive_mt.errors import DataError
from massive_mt.io import atomic_write_text

PINS_FILE = Path(__file__).with_name("debian-bookworm.txt")

# Locale patterns (regexes with a ``lang`` group) of the gettext layouts.
LC_MESSAGES = r"(?:^|/)(?P<lang>[^/]+)/LC_MESSAGES/[^/]+\.(?:po|mo)$"
WHEEL_LOCALE = r"(?:^|/)locale/(?P<lang>[^/]+)/LC_MESSAGES/[^/]+\.(?:po|mo)$"  # as catalogs.CATALOG_RE


@dataclass(frozen=True)
class Source:
    name: str
    kind: str  # "wheel" or "deb"
    packages: tuple[str, ...]  # wheel pins, or Debian package names / fnmatch patterns over the pins
    reader: str  # gettext | keyjson | mozilla | lohelp | mallard
    licence: str
    options: dict = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    domain: str = "ui"  # "doc": paragraph-level help text, the second test domain
    note: str = ""


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("pypi", "wheel", DEFAULT_WHEELS, "gettext", "BSD-3-Clause / BSD-2-Clause / MIT",
           {"pattern": WHEEL_LOCALE}, note="Django, Sphinx, Wagtail, django-allauth, Trac (the default)"),
    Source("weblate", "wheel", ("weblate==5.14.3",), "gettext", "GPL-3.0-or-later", {"pattern": WHEEL_LOCALE}),
    Source("plone", "wheel", ("plone.app.locales==7.0.4",), "gettext", "GPL-2.0",
           {"pattern": LC_MESSAGES, "zope_defaults": True}, note="English from '#. Default:' comments"),
    Source("gramps", "wheel", ("gramps==6.0.8",), "gettext", "GPL-2.0-or-later", {"pattern": LC_MESSAGES}),
    Source("pretix", "wheel", ("pretix==2026.8.0",), "gettext", "AGPL-3.0 with additional terms",
           {"pattern": WHEEL_LOCALE}),
    Source("mediawiki", "deb", ("mediawiki",), "keyjson", "GPL-2.0-or-later",
           {"pattern": r"(?P<dir>.*/i18n(?:/[^/]+)*)/(?P<lang>[^/]+)\.json$"}, note="translatewiki.net"),
    Source("libreoffice", "deb", ("libreoffice-l10n-*",), "gettext", "MPL-2.0",
           {"pattern": r"program/resource/(?P<lang>[^/]+)/LC_MESSAGES/[^/]+\.mo$"},
           exclude=("libreoffice-l10n-in", "libreoffice-l10n-en-*")),
    Source("libreoffice-help", "deb", ("libreoffice-help-*",), "lohelp", "MPL-2.0",
           {"english_package": "libreoffice-help-en-us"},
           exclude=("libreoffice-help-common", "libreoffice-help-en-gb"), domain="doc"),
    Source("firefox", "deb", ("firefox-esr", "firefox-esr-l10n-*"), "mozilla", "MPL-2.0",
           {"english_package": "firefox-esr"},
           exclude=("firefox-esr-l10n-all", "firefox-esr-l10n-en-*")),
    Source("vlc", "deb", ("vlc-l10n",), "gettext", "GPL-2.0-or-later", {"pattern": LC_MESSAGES}),
    Source("calibre", "deb", ("calibre",), "gettext", "GPL-3.0",
           {"pattern": r"^(?P<lang>[^/]+)/messages\.mo$", "nested": "usr/share/calibre/localization/locales.zip"}),
    Source("cinnamon", "deb", ("cinnamon-l10n",), "gettext", "GPL-2.0-or-later", {"pattern": LC_MESSAGES}),
    Source("wordpress", "deb", ("wordpress-l10n",), "gettext", "GPL-2.0-or-later",
           {"pattern": r"wp-content/languages/(?:[a-z-]+-)?(?P<lang>[a-z]{2,3}(?:_[A-Za-z0-9]+)*)\.mo$"}),
    Source("gnucash", "deb", ("gnucash-common",), "gettext", "GPL-2.0-or-later", {"pattern": LC_MESSAGES}),
    Source("krita", "deb", ("krita-l10n",), "gettext", "GPL-3.0-or-later", {"pattern": LC_MESSAGES}),
    Source("freeciv", "deb", ("freeciv-data",), "gettext", "GPL-2.0-or-later", {"pattern": LC_MESSAGES}),
    Source("phpmyadmin", "deb", ("phpmyadmin",), "gettext", "GPL-2.0", {"pattern": LC_MESSAGES}),
    Source("libc", "deb", ("libc-l10n",), "gettext", "LGPL-2.1-or-later", {"pattern": LC_MESSAGES}),
    Source("iso-codes", "deb", ("iso-codes",), "gettext", "LGPL-2.1-or-later", {"pattern": LC_MESSAGES},
           note="names of countries, languages, currencies (1-2 words)"),
    Source("gnome-help", "deb", ("gnome-user-docs",), "mallard", "CC-BY-SA-3.0", domain="doc"),
)}

PYPI_GPL = ("weblate", "plone", "gramps", "pretix")
DEBIAN = ("mediawiki", "libreoffice", "libreoffice-help", "firefox", "vlc", "calibre", "cinnamon", "wordpress",
          "gnucash", "krita", "freeciv", "phpmyadmin", "libc", "iso-codes", "gnome-help")
PROFILES: dict[str, tuple[str, ...]] = {
    "default": ("pypi",),
    "pypi-all": ("pypi", *PYPI_GPL),
    "debian": DEBIAN,
    "full": ("pypi", *PYPI_GPL, *DEBIAN),
}
PROFILE_MIN_PAIRS = {"full": 100}            # `full` keeps the long tail: >= 500 languages (docs/corpus.md)


def default_min_pairs(names: list[str]) -> int:
    """--min-pairs when none is given: the lowest of the named profiles' own thresholds."""
    return min(PROFILE_MIN_PAIRS.get(n, MIN_PAIRS) for n in names) if names else MIN_PAIRS


def resolve(names: list[str]) -> list[Source]:
    """Sources for names of sources and profiles, each once, in the given order."""
    out: list[Source] = []
    for name in names:
        expanded = PROFILES.get(name, (name,))
        for n in expanded:
            if n not in SOURCES:
                raise DataError(f"unknown corpus source {n!r}: expected one of {', '.join(SOURCES)} "
                                f"or a profile ({', '.join(PROFILES)})")
            if SOURCES[n] not in out:
                out.append(SOURCES[n])
    if not out:
        raise DataError("no corpus sources given")
    return out


def debian_pins(path: Path = PINS_FILE) -> dict[str, str]:
    """{package: version} from a pins file of ``package=version`` lines."""
    pins = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("=")
        if not sep or not name or not version:
            raise DataError(f"{path}:{i}: expected 'package=version', got {line!r}")
        pins[name.strip()] = version.strip()
    return pins


def update_pins(path: Path, versions: dict[str, str]) -> None:
    """Rewrite the pins file ``path`` with ``versions`` ({package: version}): lines of those
    packages get the new version, comments and the other lines stay, atomically."""
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        name = line.split("#", 1)[0].partition("=")[0].strip()
        if name in versions:
            lines[i] = f"{name}={versions[name]}"
    atomic_write_text(path, "\n".join(lines) + "\n")


def debian_packages(source: Source, pins: dict[str, str]) -> list[str]:
    """The Debian package names of ``source``: its names and patterns matched against ``pins``."""
    out = []
    for pattern in source.packages:
        if any(ch in pattern for ch in "*?["):
            matched = sorted(p for p in pins if fnmatch.fnmatchcase(p, pattern))
            if not matched:
                raise DataError(f"source {source.name}: no pinned package matches {pattern!r}")
        else:
            matched = [pattern]
        out += [p for p in matched if not any(fnmatch.fnmatchcase(p, x) for x in source.exclude) and p not in out]
    return out
