"""Files that are never half-written: text and JSON written beside their destination and renamed
into place, directories built beside theirs and renamed into place; JSON objects read with one
clear error naming the file."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

from massive_mt.errors import DataError


def _beside(path: Path, kind: str) -> Path:
    """A fresh hidden name in the directory of ``path`` (same file system, so os.replace is atomic)."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def atomic_write_texts(files: Mapping[str | os.PathLike, str]) -> None:
    """Write every text to a temporary file beside its path, then rename them all into place.

    A failure while writing leaves every destination as it was and no temporary file behind.
    """
    temps: list[tuple[Path, Path]] = []
    try:
        for path, text in files.items():
            path = Path(path)
            tmp = _beside(path, "tmp")
            # os.open with mode 0o666 (not mkstemp's 0o600) so the umask decides the permissions.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            temps.append((tmp, path))
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in temps:
            os.replace(tmp, path)
        for parent in {path.parent for _, path in temps}:    # the renames themselves survive a crash
            fd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file beside it."""
    atomic_write_texts({path: text})


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented UTF-8 JSON (non-ASCII kept as is) through a temporary file beside it."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json_object(path: str | os.PathLike) -> dict:
    """The JSON object in ``path``; DataError naming the file if it is missing, unreadable or not an object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def require_empty_dir(dest: str | os.PathLike) -> None:
    """DataError unless ``dest`` is absent or an empty directory (a destination nothing is lost in)."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DataError(f"{dest}: already exists and is not an empty directory; remove it or choose another")


@contextlib.contextmanager
def staged_dir(dest: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Build a directory beside ``dest`` and rename it to ``dest`` when the block succeeds.

    Yields the (new, empty) temporary directory; on any exception it is removed and ``dest`` is
    untouched. Without ``replace``, an existing ``dest`` must be an empty directory (checked on
    entry and again before the rename); with it, an existing ``dest`` is replaced as a whole.
    """
    dest = Path(dest)

    def check_free() -> None:
        if not replace:
            require_empty_dir(dest)

    check_free()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _beside(dest, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        check_free()
        if dest.exists() and replace:
            old = _beside(dest, "old")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if dest.exists():
                dest.rmdir()
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path) -> str:
    """The sha256 of a file's bytes (hex): how a data-bin, a test set or an export names its inputs."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
