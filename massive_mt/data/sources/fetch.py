"""Fetching the packages of the corpus sources, like a package tool would.

* Wheels: ``pip download --no-deps`` of the pinned versions into ``<cache>/wheels``.
* Debian packages: ``apt-get download package=version`` (the pins of
  ``debian-bookworm.txt``) into ``<cache>/debs``; needs apt and its package lists
  (``apt-get update``), not root or an installation. Each Debian suite serves one version
  of a package, so a security update removes the pinned version from the archive: the
  pin policy (``PIN_POLICIES``) says what happens then. ``prefer`` (the default) takes the
  pinned version where it is served and otherwise the served one, with a warning naming
  both and a deviation in the manifest; ``strict`` fails; ``latest`` takes what is served.
* ``from_dir``: a directory of already downloaded ``.deb``/``.whl`` files (for cluster
  login nodes without apt); any version found there is used and recorded.

Every file is recorded with its package, version, sha256 and licence for the manifest.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path

from massive_mt.data.wheels import download_wheels, norm_name, wheel_key
from massive_mt.data.sources.archive import deb_control, open_zip
from massive_mt.data.sources.registry import Source, debian_packages
from massive_mt.errors import DataError

log = logging.getLogger(__name__)

PIN_POLICIES = ("prefer", "strict", "latest")


@dataclass(frozen=True)
class PackageFile:
    package: str
    version: str
    file: str
    sha256: str
    licence: str
    path: Path
    pinned: str | None = None  # the pinned version, where the package has one

    def record(self) -> dict:
        d = asdict(self)
        d.pop("path")
        return d

    @property
    def deviation(self) -> dict | None:
        """The pinned and the used version where they differ (for the manifest), else None."""
        if self.pinned is None or self.pinned == self.version:
            return None
        return {"package": self.package, "pinned": self.pinned, "used": self.version}


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


def _apt_get() -> str:
    apt = shutil.which("apt-get")
    if apt is None:
        raise DataError("apt-get not found: Debian packages cannot be downloaded here; download them elsewhere "
                        "(apt-get download PACKAGE=VERSION) and pass their folder with --from-dir")
    return apt


def _apt_errors(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("E:")] or proc.stderr.splitlines()[-5:]


_NOT_FOUND = re.compile(r"E: Version '([^']+)' for '([^']+)' was not found")


def apt_served(specs: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """What the package lists offer for ``package[=version]`` specs, without downloading:
    ({package: version served}, {package: requested version not served}). A bare name
    gives the candidate version (``apt-get download --print-uris``)."""
    proc = subprocess.run([_apt_get(), "download", "--print-uris", *specs], capture_output=True, text=True)
    served = {}
    for line in proc.stdout.splitlines():  # 'URL' name_version_arch.deb size hash
        fields = line.split()
        if len(fields) >= 2 and fields[1].endswith(".deb"):
            name, version = fields[1].split("_")[:2]
            served[name] = urllib.parse.unquote(version)
    missing = {name: version for version, name in _NOT_FOUND.findall(proc.stderr)}
    other = [e for e in _apt_errors(proc) if not _NOT_FOUND.search(e)] if proc.returncode != 0 else []
    if other:
        hint = (" (run 'apt-get update' first, with Debian's main archive in the sources)"
                if any("Unable to locate" in e for e in other) else "")
        raise DataError(f"apt-get download --print-uris failed (exit {proc.returncode}): {'; '.join(other)}{hint}")
    return served, missing


def version_newer(a: str, b: str) -> bool:
    """Debian version order (``dpkg --compare-versions a gt b``)."""
    return subprocess.run(["dpkg", "--compare-versions", a, "gt", b]).returncode == 0


def _not_served(name: str, pinned: str, offered: str | None) -> str:
    if offered is None:
        return f"{name}={pinned} is not served and the package lists offer no version of {name}"
    if version_newer(pinned, offered):
        return (f"{name}={pinned} is newer than anything the package lists offer (candidate {offered}): "
                "the lists are older than the pins; run 'apt-get update' (as root)")
    return f"{name}={pinned} is no longer served (the archive serves {offered})"


def resolve_versions(names: list[str], pins: dict[str, str], policy: str) -> dict[str, str]:
    """{package: version to download} for ``names`` under the pin ``policy`` (``PIN_POLICIES``)."""
    if policy not in PIN_POLICIES:
        raise DataError(f"pin policy {policy!r}: expected one of {', '.join(PIN_POLICIES)}")
    if policy == "latest":
        served, _ = apt_served(names)
        absent = [n for n in names if n not in served]
        if absent:
            raise DataError(f"the package lists offer no version of {', '.join(absent)} "
                            "(run 'apt-get update' first, with Debian's main archive in the sources)")
        return {n: served[n] for n in names}
    _, missing = apt_served([f"{n}={pins[n]}" for n in names])
    if not missing:
        return {n: pins[n] for n in names}
    offered, _ = apt_served(sorted(missing))
    reasons = [_not_served(n, pins[n], offered.get(n)) for n in sorted(missing)]
    if policy == "strict" or any(n not in offered for n in missing):
        raise DataError("pinned Debian versions not available: " + "; ".join(reasons) +
                        (" (with --pins prefer the served version is taken; for an exact rebuild pass a folder holding "
                         "the pinned .debs with --from-dir, or add an archive snapshot to apt's sources: "
                         "docs/corpus.md#reproducibility)" if policy == "strict" else ""))
    for reason in reasons:
        log.warning("%s: using the served version instead (--pins prefer; recorded in the manifest)", reason)
    return {n: (offered[n] if n in missing else pins[n]) for n in names}


def apt_download(specs: list[str], dest: Path) -> None:
    """``apt-get download`` of ``package=version`` specs into ``dest``; DataError naming what failed."""
    apt = _apt_get()
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([apt, "download", *specs], cwd=dest, capture_output=True, text=True)
    if proc.returncode != 0:
        errors = _apt_errors(proc)
        hint = ""
        if any("Unable to locate" in e for e in errors):
            hint = " (run 'apt-get update' first, with Debian's main archive in the sources)"
        raise DataError(f"apt-get download failed (exit {proc.returncode}): {'; '.join(errors)}{hint}")


def fetch_debs(source: Source, pins: dict[str, str], cache: Path, from_dir: Path | None,
               policy: str = "prefer") -> list[PackageFile]:
    names = debian_packages(source, pins)
    paths: dict[str, Path] = {}
    if from_dir is not None:
        missing = []
        for name in names:
            path = _find_deb(from_dir, name, pins.get(name)) or _find_deb(from_dir, name, None)
            if path is None:
                missing.append(name)
            else:
                paths[name] = path
        if missing:
            raise DataError(f"source {source.name}: {from_dir} has no .deb for {', '.join(missing)}")
    else:
        unpinned = [n for n in names if n not in pins]
        if unpinned:
            raise DataError(f"source {source.name}: package {unpinned[0]} has no pinned version in the pins file")
        wanted = {n: pins[n] for n in names}
        if policy == "latest" or any(_find_deb(cache, n, v) is None for n, v in wanted.items()):
            # the pinned files already in the cache need no package lists (offline rebuilds)
            todo = [n for n in names if policy == "latest" or _find_deb(cache, n, pins[n]) is None]
            wanted.update(resolve_versions(todo, pins, policy))
        download = [f"{n}={v}" for n, v in wanted.items() if _find_deb(cache, n, v) is None]
        if download:
            apt_download(download, cache)
        for name, version in wanted.items():
            path = _find_deb(cache, name, version)
            if path is None:
                raise DataError(f"apt-get download {name}={version} succeeded but no "
                                f"{deb_file_name(name, version)}*.deb is in {cache}")
            paths[name] = path
    out = []
    for name in names:
        path = paths[name]
        control = deb_control(path)  # also checks the archive: a damaged file fails here, named
        if control.get("Package") != name:
            raise DataError(f"{path}: holds package {control.get('Package')!r}, expected {name!r}")
        out.append(PackageFile(name, control.get("Version", "?"), path.name, sha256_of(path), source.licence, path,
                               pins.get(name)))
    return out


def fetch_wheels(source: Source, cache: Path, from_dir: Path | None) -> list[PackageFile]:
    if from_dir is not None:
        paths = []
        for spec in source.packages:
            name, _, version = spec.partition("==")
            found = sorted(p for p in from_dir.glob("*.whl") if wheel_key(p)[0] == norm_name(name))
            exact = [p for p in found if wheel_key(p)[1] == version.lower()]
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
        name, version = wheel_key(path)
        out.append(PackageFile(name, version, path.name, sha256_of(path), source.licence, path))
    return out


def fetch(source: Source, pins: dict[str, str], cache: Path | None = None,
          from_dir: Path | None = None, policy: str = "prefer") -> list[PackageFile]:
    """The package files of ``source``, downloaded into ``cache`` (default ``cache_root()``) when needed;
    ``policy`` (``PIN_POLICIES``) governs Debian pins that the archive no longer serves."""
    cache = Path(cache) if cache is not None else cache_root()
    from_dir = Path(from_dir) if from_dir is not None else None
    if from_dir is not None and not from_dir.is_dir():
        raise DataError(f"--from-dir {from_dir}: not a directory")
    if source.kind == "wheel":
        return fetch_wheels(source, cache / "wheels", from_dir)
    return fetch_debs(source, pins, cache / "debs", from_dir, policy)
