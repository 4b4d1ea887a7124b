"""Wheels as corpus sources: the pinned default set, the download cache, `pip download` of a pin
(cached by normalised name and version), and a wheel's name, version and licence from its METADATA."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from email.parser import HeaderParser
from pathlib import Path
from typing import Iterable

from massive_mt.errors import DataError

# Pinned wheels; all licences are permissive (read from each wheel's METADATA into
# the manifest): Django BSD-3-Clause, Sphinx BSD-2-Clause, Wagtail BSD-3-Clause,
# django-allauth MIT, Trac BSD (3-clause; its wheel ships only .mo catalogues).
DEFAULT_WHEELS = (
    "django==5.2.19",
    "sphinx==9.0.4",
    "wagtail==8.0.1",
    "django-allauth==65.21.1",
    "Trac==1.6",
)


def default_cache_dir() -> Path:
    """``$MASSIVE_MT_CACHE/wheels``, by default ``~/.cache/massive_mt/wheels``."""
    root = os.environ.get("MASSIVE_MT_CACHE") or Path.home() / ".cache" / "massive_mt"
    return Path(root) / "wheels"


def norm_name(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_key(path: Path) -> tuple[str, str]:
    """(normalised name, version) from a wheel file name ``name-version-...whl``."""
    name, version = path.name.split("-")[:2]
    return norm_name(name), version.lower()


def download_wheels(specs: Iterable[str], cache_dir: str | os.PathLike) -> list[Path]:
    """Return a wheel path per spec, downloading ``name==version`` specs with pip.

    A spec that is an existing file is used as is. Wheels already in ``cache_dir``
    (matched by normalised name and version) are not downloaded again.
    """
    cache_dir = Path(cache_dir)
    paths = []
    for spec in specs:
        if Path(spec).is_file():
            paths.append(Path(spec))
            continue
        name, sep, version = spec.partition("==")
        if not sep or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or not version.strip():
            raise DataError(f"wheel spec {spec!r}: expected an existing .whl file or a pin 'name==version'")
        key = (norm_name(name), version.strip().lower())
        cached = sorted(p for p in cache_dir.glob("*.whl") if wheel_key(p) == key) if cache_dir.is_dir() else []
        if not cached:
            cache_dir.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "-d", str(cache_dir), spec]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
                raise DataError(f"pip download {spec} failed (exit {proc.returncode}):\n{tail}")
            cached = sorted(p for p in cache_dir.glob("*.whl") if wheel_key(p) == key)
            if not cached:
                raise DataError(f"pip download {spec} succeeded but no matching wheel is in {cache_dir}")
        paths.append(cached[0])
    return paths


def wheel_metadata(wheel: zipfile.ZipFile, path: Path) -> dict:
    """Name, version and licence of a wheel, from its ``*.dist-info/METADATA``."""
    members = [n for n in wheel.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
    if not members:
        raise DataError(f"{path}: not a wheel (no *.dist-info/METADATA)")
    meta = HeaderParser().parsestr(wheel.read(members[0]).decode("utf-8", "replace"))
    licence = meta.get("License-Expression") or (meta.get("License") or "").strip()
    if not licence or len(licence) > 100:  # some projects paste the whole licence text
        classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier", []) if c.startswith("License ::")]
        licence = "; ".join(classifiers) or licence[:100] or "unknown"
    return {"name": meta.get("Name", path.name), "version": meta.get("Version", "?"), "license": licence}
