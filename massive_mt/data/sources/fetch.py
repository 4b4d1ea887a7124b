"""Fetching the packages of the corpus sources, like a package tool would.

* Wheels: ``pip download --no-deps`` of the pinned versions into ``<cache>/wheels``.
* Debian packages: ``apt-get download package=version`` (the pins of
  ``debian-bookworm.txt``) into ``<cache>/debs``; needs apt and its package lists
  (``apt-get update``), not root or an installation.
* ``from_dir``: a directory of already downloaded ``.deb``/``.whl`` files (for cluster
  login nodes without apt); any version found there is used and recorded.

Every file is recorded with its package, version, sha256 and licence for the manifest.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path

from massive_mt.data.catalogs import _norm_name, _wheel_key, download_wheels
from massive_mt.data.sources.archive import deb_control, open_zip
from massive_mt.data.sources.registry import Source, debian_packages
from massive_mt.errors import DataError


@dataclass(frozen=True)
class PackageFile:
    package: str
    version: str
    file: str
    sha256: str
    licence: str
    path: Path

    def record(self) -> dict:
        d = asdict(self)
        d.pop("path")
        return d


def cache_root() -> Path:
    """``$MASSIVE_MT_CACHE``, by default ``~/.cache/massive_mt``."""
    return Path(os.environ.get("MASSIVE_MT_CACHE") or Path.home() / ".cache" / "massive_mt")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def deb_file_name(package: str, version: str) -> str:
    """The name prefix apt gives a downloaded package: ``name_version_`` (``:`` as ``%3a``)."""
    return f"{package}_{urllib.parse.quote(version, safe='+~.-')}_".replace("%3A", "%3a")


def _find_deb(folder: Path, package: str, version: str | None) -> Path | None:
    if not folder.is_dir():
        return None
    prefix = deb_file_name(package, version) if version else f"{package}_"
    found = sorted(p for p in folder.glob(f"{prefix}*.deb") if p.name.split("_")[0] == package)
    return found[-1] if found else None


def apt_download(specs: list[str], dest: Path) -> None:
    """``apt-get download`` of ``package=version`` specs into ``dest``; DataError naming what failed."""
    apt = shutil.which("apt-get")
    if apt is None:
        raise DataError("apt-get not found: Debian packages cannot be downloaded here; download them elsewhere "
                        f"(apt-get download {' '.join(specs[:3])}{' ...' if len(specs) > 3 else ''}) and pass "
                        "their folder with --from-dir")
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([apt, "download", *specs], cwd=dest, capture_output=True, text=True)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("E:")] or proc.stderr.splitlines()[-5:]
        hint = ""
        if any("was not found" in e for e in errors):
            hint = (" (the pinned version is no longer served: update massive_mt/data/sources/debian-bookworm.txt "
                    "or pass a folder holding that version with --from-dir)")
        elif any("Unable to locate" in e for e in errors):
            hint = " (run 'apt-get update' first, with Debian's main archive in the sources)"
        raise DataError(f"apt-get download failed (exit {proc.returncode}): {'; '.join(errors)}{hint}")


def fetch_debs(source: Source, pins: dict[str, str], cache: Path, from_dir: Path | None) -> list[PackageFile]:
    names = debian_packages(source, pins)
    paths: dict[str, Path] = {}
    missing = []
    for name in names:
        if from_dir is not None:
            path = _find_deb(from_dir, name, pins.get(name)) or _find_deb(from_dir, name, None)
            if path is None:
                missing.append(name)
            else:
                paths[name] = path
            continue
        if name not in pins:
            raise DataError(f"source {source.name}: package {name} has no pinned version in the pins file")
        path = _find_deb(cache, name, pins[name])
        if path is None:
            missing.append(f"{name}={pins[name]}")
        else:
            paths[name] = path
    if missing and from_dir is not None:
        raise DataError(f"source {source.name}: {from_dir} has no .deb for {', '.join(missing)}")
    if missing:
        apt_download(missing, cache)
        for spec in missing:
            name, _, version = spec.partition("=")
            path = _find_deb(cache, name, version)
            if path is None:
                raise DataError(f"apt-get download {spec} succeeded but no {deb_file_name(name, version)}*.deb "
                                f"is in {cache}")
            paths[name] = path
    out = []
    for name in names:
        path = paths[name]
        control = deb_control(path)  # also checks the archive: a damaged file fails here, named
        if control.get("Package") != name:
            raise DataError(f"{path}: holds package {control.get('Package')!r}, expected {name!r}")
        out.append(PackageFile(name, control.get("Version", "?"), path.name, sha256_of(path), source.licence, path))
    return out


def fetch_wheels(source: Source, cache: Path, from_dir: Path | None) -> list[PackageFile]:
    if from_dir is not None:
        paths = []
        for spec in source.packages:
            name, _, version = spec.partition("==")
            found = sorted(p for p in from_dir.glob("*.whl") if _wheel_key(p)[0] == _norm_name(name))
            exact = [p for p in found if _wheel_key(p)[1] == version.lower()]
            if not found:
                raise DataError(f"source {source.name}: {from_dir} has no wheel of {name}")
            paths.append((exact or found)[-1])
    else:
        paths = download_wheels(source.packages, cache)
    out = []
    for path in paths:
        with open_zip(path, str(path)) as z:
            bad = z.testzip()
        if bad is not None:
            raise DataError(f"{path}: corrupt wheel (member {bad} fails its CRC check)")
        name, version = _wheel_key(path)
        out.append(PackageFile(name, version, path.name, sha256_of(path), source.licence, path))
    return out


def fetch(source: Source, pins: dict[str, str], cache: Path | None = None,
          from_dir: Path | None = None) -> list[PackageFile]:
    """The package files of ``source``, downloaded into ``cache`` (default ``cache_root()``) when needed."""
    cache = Path(cache) if cache is not None else cache_root()
    from_dir = Path(from_dir) if from_dir is not None else None
    if from_dir is not None and not from_dir.is_dir():
        raise DataError(f"--from-dir {from_dir}: not a directory")
    if source.kind == "wheel":
        return fetch_wheels(source, cache / "wheels", from_dir)
    return fetch_debs(source, pins, cache / "debs", from_dir)
