"""Reading package archives without installing them: Debian ``.deb`` (an ``ar`` archive
holding ``data.tar.{xz,gz,bz2,zst}``) and zip files (wheels, ``omni.ja``, ``.xpi``).

Only Python's standard library is needed (``zstandard`` for ``data.tar.zst``), so neither
``dpkg`` nor root is required. Damaged archives raise :class:`DataError` naming the file.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from massive_mt.errors import DataError

AR_MAGIC = b"!<arch>\n"


def _ar_members(path: Path) -> Iterator[tuple[str, int, int]]:
    """(name, offset, size) of every member of an ``ar`` archive."""
    with open(path, "rb") as f:
        if f.read(8) != AR_MAGIC:
            raise DataError(f"{path}: not a Debian package (no 'ar' archive header)")
        total = path.stat().st_size
        offset = 8
        while offset < total:
            f.seek(offset)
            header = f.read(60)
            if len(header) < 60 or header[58:60] != b"`\n":
                raise DataError(f"{path}: truncated or corrupt 'ar' member header at byte {offset}")
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            try:
                size = int(header[48:58].decode("ascii").strip())
            except ValueError:
                raise DataError(f"{path}: corrupt 'ar' member size at byte {offset}") from None
            if offset + 60 + size > total:
                raise DataError(f"{path}: truncated (member {name!r} needs {size} bytes, file ends early)")
            yield name, offset + 60, size
            offset += 60 + size + (size & 1)


@dataclass(frozen=True)
class Member:
    """A regular file or symbolic link of a package's data tree (``name`` without ``./``)."""

    name: str
    data: bytes | None = None  # None for a symlink
    link: str | None = None  # symlink target


class _Slice(io.RawIOBase):
    """A read-only window [offset, offset + size) of a file."""

    def __init__(self, f, offset: int, size: int):
        self.f, self.start, self.size, self.pos = f, offset, size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.size - self.pos)
        if n <= 0:
            return 0
        self.f.seek(self.start + self.pos)
        data = self.f.read(n)
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)


def iter_deb(path: str | Path, want: Callable[[str], bool]) -> Iterator[Member]:
    """Stream the files and symlinks of a ``.deb``'s data tree whose name ``want`` accepts.

    Names are relative, e.g. ``usr/share/locale/de/LC_MESSAGES/vlc.mo``. Streaming keeps
    memory flat even for 100 MB packages.
    """
    path = Path(path)
    member = next(((n, o, s) for n, o, s in _ar_members(path) if n.startswith("data.tar")), None)
    if member is None:
        raise DataError(f"{path}: Debian package without a data.tar member")
    name, offset, size = member
    comp = name[len("data.tar"):].lstrip(".")
    with open(path, "rb") as f:
        stream = io.BufferedReader(_Slice(f, offset, size), buffer_size=1 << 20)
        if comp == "zst":
            try:
                import zstandard
            except ImportError:
                raise DataError(f"{path}: data.tar.zst needs the 'zstandard' package (pip install zstandard)") from None
            stream = zstandard.ZstdDecompressor().stream_reader(stream)
            mode = "r|"
        elif comp in ("xz", "gz", "bz2", ""):
            mode = f"r|{comp}" if comp else "r|"
        else:
            raise DataError(f"{path}: unsupported data member {name!r}")
        try:
            with tarfile.open(fileobj=stream, mode=mode) as tar:
                for info in tar:
                    rel = info.name[2:] if info.name.startswith("./") else info.name
                    if not want(rel):
                        continue
                    if info.issym():
                        yield Member(rel, link=info.linkname)
                    elif info.isfile():
                        yield Member(rel, data=tar.extractfile(info).read())
        except (tarfile.TarError, EOFError, OSError, ValueError) as err:
            raise DataError(f"{path}: corrupt or truncated {name}: {err}") from None


def deb_control(path: str | Path) -> dict[str, str]:
    """The fields of a ``.deb``'s ``control`` file (Package, Version, Architecture, ...)."""
    path = Path(path)
    member = next(((n, o, s) for n, o, s in _ar_members(path) if n.startswith("control.tar")), None)
    if member is None:
        raise DataError(f"{path}: Debian package without a control.tar member")
    name, offset, size = member
    with open(path, "rb") as f:
        f.seek(offset)
        raw = f.read(size)
    comp = name[len("control.tar"):].lstrip(".")
    try:
        if comp == "zst":
            import zstandard
            raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
            comp = ""
        with tarfile.open(fileobj=io.BytesIO(raw), mode=f"r:{comp}" if comp else "r:") as tar:
            text = tar.extractfile("./control").read().decode("utf-8", "replace")
    except (tarfile.TarError, KeyError, EOFError, OSError) as err:
        raise DataError(f"{path}: corrupt control member {name}: {err}") from None
    fields, key = {}, None
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def open_zip(data: bytes | str | Path, where: str) -> zipfile.ZipFile:
    """A zip archive from bytes or a path; DataError naming ``where`` when it is not one."""
    try:
        return zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data)
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise DataError(f"{where}: not a readable zip archive: {err}") from None


def iter_package(path: str | Path, want: Callable[[str], bool]) -> Iterator[Member]:
    """Files and symlinks of a ``.deb`` (its data tree) or of a zip/wheel that ``want`` accepts."""
    path = Path(path)
    if path.suffix == ".deb":
        yield from iter_deb(path, want)
        return
    with open_zip(path, str(path)) as z:
        yield from iter_zip(z, want, str(path))


def iter_zip(z: zipfile.ZipFile, want: Callable[[str], bool], where: str) -> Iterator[Member]:
    """Members of an open zip that ``want`` accepts; a damaged member raises DataError naming it."""
    for info in z.infolist():
        if info.is_dir() or not want(info.filename):
            continue
        try:
            yield Member(info.filename, data=z.read(info))
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, RuntimeError) as err:
            raise DataError(f"{where}: member {info.filename}: corrupt ({err})") from None
