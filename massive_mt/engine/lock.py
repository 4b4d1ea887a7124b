"""One run per output directory: a lock file held by rank 0 for the whole run.

`output_dir/massive_mt.engine.lock` holds the holder's host, pid and start time and is locked with
`fcntl.flock` while the run lives; it is deleted when the run ends (success, error or stop
request). A second run on the same directory is refused before it writes anything.

A lock file whose flock is free was left by a run that did not end normally (`kill -9`, a
node crash): when it names this host and its pid is no longer running it is taken over with a
warning; when it was written by an earlier start of the same Slurm job (same SLURM_JOB_ID, lower
SLURM_RESTART_COUNT: a requeued job, whose earlier start Slurm has ended) it is taken over with a
warning on any host; when it names another host otherwise, the run is refused with that host named
(this host cannot tell whether that run still lives): delete the file when no run uses the directory.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from massive_mt.errors import MassiveMTError

LOCK_NAME = "massive_mt.engine.lock"


class LockError(MassiveMTError):
    """The output directory is in use by another run."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _slurm_job(env=os.environ) -> dict:
    if "SLURM_JOB_ID" not in env:
        return {}
    return {"slurm_job_id": env["SLURM_JOB_ID"], "slurm_restart_count": int(env.get("SLURM_RESTART_COUNT", 0))}


def _earlier_start_of_this_job(holder: dict) -> bool:
    me = _slurm_job()
    return (bool(me) and holder.get("slurm_job_id") == me["slurm_job_id"]
            and isinstance(holder.get("slurm_restart_count"), int)
            and holder["slurm_restart_count"] < me["slurm_restart_count"])


def _describe(holder: dict) -> str:
    return f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}"


class OutputDirLock:
    def __init__(self, path: Path, fd: int, created_dir: bool):
        self.path, self.fd, self.created_dir = path, fd, created_dir

    @classmethod
    def acquire(cls, output_dir) -> "OutputDirLock":
        """Create output_dir if needed and lock it, or raise LockError naming the holder."""
        path = Path(output_dir) / LOCK_NAME
        created_dir = not path.parent.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = cls._read(fd)
                os.close(fd)
                raise LockError(f"{path.parent}: in use by another run ({_describe(holder)}); wait for it to end "
                                f"or choose another train.output_dir") from None
            try:                                   # the holder may have deleted the file before we locked it
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            cls._check_stale(path, cls._read(fd))
        except LockError:
            os.close(fd)
            raise
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **_slurm_job()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        return cls(path, fd, created_dir)

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except (ValueError, UnicodeDecodeError):
            return {}
        return holder if isinstance(holder, dict) else {}

    @staticmethod
    def _check_stale(path: Path, holder: dict) -> None:
        """A left-over lock file (its flock is free): take it over, or refuse when it may be live."""
        if not holder.get("host"):
            return
        if _earlier_start_of_this_job(holder):
            print(f"[massive_mt] {path}: taking over the lock of an earlier start of this Slurm job "
                  f"({_describe(holder)})", file=sys.stderr, flush=True)
            return
        if holder["host"] != socket.gethostname():
            raise LockError(f"{path.parent}: locked by a run on host {holder['host']} ({_describe(holder)}); "
                            f"if no run uses this directory any more, delete {path}")
        pid = holder.get("pid")
        if isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid):
            raise LockError(f"{path.parent}: in use by another run ({_describe(holder)}); wait for it to end "
                            f"or choose another train.output_dir (delete {path} if pid {pid} is not a run)")
        print(f"[massive_mt] {path}: taking over a stale lock ({_describe(holder)}, no longer running)",
              file=sys.stderr, flush=True)

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None
        if self.created_dir:                        # a run refused at start leaves nothing behind
            try:
                self.path.parent.rmdir()            # only when empty
            except OSError:
                pass


def take(output_dir, rank: int) -> Optional[OutputDirLock]:
    """Collective: rank 0 locks output_dir; a refusal is raised on every rank (same message)."""
    import deepspeed.comm as dist

    lock, msg = None, None
    if rank == 0:
        try:
            lock = OutputDirLock.acquire(output_dir)
        except LockError as e:
            msg = str(e)
    box = [msg]
    dist.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise LockError(box[0])
    return lock
