"""How a command starts its ranks and reports its errors: the local launch (torchrun or deepspeed) of
`python -m MODULE` on N ranks, the environment those ranks get, a free port, and the error boundary
every command runs inside. Below every command, above nothing of ours but `errors`."""

from __future__ import annotations

import os
import shutil
import socket
import sys

from massive_mt.errors import MassiveMTError, exit_code, exit_line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(nproc: int) -> dict:
    """The environment of `nproc` local ranks: the CPU accelerator without a GPU, the cores split
    between the ranks instead of oversubscribed."""
    env = dict(os.environ)
    try:
        import torch
        if not torch.cuda.is_available():
            env.setdefault("DS_ACCELERATOR", "cpu")
    except ImportError:
        pass
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return env


def launch_command(launcher: str, nproc: int, args: list[str], module: str = "massive_mt.train") -> list[str]:
    """The command that starts `nproc` local ranks of `module` (massive_mt.train, massive_mt.evaluation.evaluate)."""
    if launcher == "deepspeed":
        exe = shutil.which("deepspeed")
        if exe is None:
            raise MassiveMTError("the 'deepspeed' launcher is not on PATH; use --launcher torchrun")
        return [exe, "--num_gpus", str(nproc), "--master_port", str(free_port()), "--module", module] + args
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                "--master_port", str(free_port()), "-m", module] + args
    raise MassiveMTError(f"--launcher must be deepspeed or torchrun, got {launcher!r}")


def error_message(e: BaseException, output=None) -> str:
    """One line for a user-facing error: an OSError as `path: reason` (a failed write names no file:
    then the command's `output`), a MassiveMTError as its message."""
    if isinstance(e, OSError) and e.strerror:
        paths = [p for p in (e.filename, e.filename2) if p is not None] or ([output] if output else [])
        return f"{' -> '.join(map(str, paths))}: {e.strerror}" if paths else e.strerror
    return str(e)


def run_command(command: str, output, fn, *args) -> int:
    """The error boundary of a command writing to `output`: bad input (MassiveMTError) and a file system
    that refuses (OSError: read-only, full, not a directory) give one line and their exit status
    (massive_mt/errors.py)."""
    try:
        return fn(*args)
    except (MassiveMTError, OSError) as e:
        print(exit_line(command, e, error_message(e, output)), file=sys.stderr, flush=True)
        return exit_code(e)
