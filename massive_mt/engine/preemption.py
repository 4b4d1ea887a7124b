"""Stop requests from the scheduler: checkpoint, exit with REQUEUE_EXIT, resume on the next start.

A batch system warns a job before its time limit or a preemption with a signal (Slurm:
`--signal=USR1@300`). The trainer installs a handler for the signals of `train.stop_signals`
(default USR1 and TERM) at start-up; the handler only records the signal. At every step
boundary the ranks agree on it (an all-reduce of the flag, MAX, read at the next boundary so
that the step never waits for it), so all stop after the same step, one step after it is seen,
even when only some received the signal; they write a checkpoint (DeepSpeed writes the
`latest` file last, so an interrupted save leaves the previous checkpoint the one resumed) and
the process exits with status 75 (EX_TEMPFAIL). The sbatch templates in slurm/ requeue the job
on that status, and the next start resumes from the latest checkpoint (`train.resume: auto`).

The launcher's death is a stop request too. A rank started by a launcher (torchrun, the
`deepspeed` launcher: RANK and LOCAL_RANK set) records its parent at start; when the parent is
gone (`kill -9` of torchrun) or, under the `deepspeed` launcher, the runner above the per-node
`deepspeed.launcher.launch` is gone (SIGTERM to `deepspeed` does not reach the ranks), the ranks
agree on it at the next step boundary like on a signal: checkpoint, stop, exit status 75,
`"signal": "launcher exit"` in metrics.jsonl. Without this the ranks trained on as orphans.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Optional

from massive_mt.errors import ConfigError


def parse_signals(names, where: str = "train.stop_signals") -> list[signal.Signals]:
    """['USR1', 'SIGTERM', 12] -> signals; refuses unknown names and signals that cannot be caught."""
    out = []
    for n in names:
        try:
            sig = signal.Signals(n) if isinstance(n, int) else signal.Signals[
                n.upper() if n.upper().startswith("SIG") else "SIG" + n.upper()]
        except (KeyError, ValueError, AttributeError):
            raise ConfigError(f"field '{where}': {n!r} is not a signal name such as USR1 or TERM") from None
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            raise ConfigError(f"field '{where}': {sig.name} cannot be caught")
        out.append(sig)
    return out


LAUNCHER_EXIT = "launcher exit"       # the stop reason recorded when the launcher is gone


def _ppid_of(pid: int) -> Optional[int]:
    """The parent of another process (Linux /proc); None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class LauncherWatch:
    """Notices that the launcher that started this rank is gone (see the module doc)."""

    def __init__(self):
        self.parent = os.getppid()
        self.runner = None
        if "deepspeed.launcher.launch" in _cmdline(self.parent):
            runner = _ppid_of(self.parent)
            if runner is not None and "deepspeed" in _cmdline(runner):     # not a shell that ran launch itself
                self.runner = runner

    @classmethod
    def if_launched(cls, env=os.environ) -> Optional["LauncherWatch"]:
        return cls() if "RANK" in env and "LOCAL_RANK" in env else None

    def gone(self) -> Optional[str]:
        """Why the launcher is gone, or None while it lives."""
        if os.getppid() != self.parent:
            return f"the launcher (pid {self.parent}) exited"
        if self.runner is not None and _ppid_of(self.parent) not in (self.runner, None):
            return f"the deepspeed runner (pid {self.runner}) exited"
        return None


class StopSignals:
    """Records the first of `names` this process receives, and watches the launcher; `agreed()`
    shares both among the ranks."""

    def __init__(self, names):
        self.received: Optional[int] = None
        self.agreed_signal: Optional[int] = None
        self._pending = None                    # the last call's reduced flags on their way to the host
        self.launcher = LauncherWatch.if_launched()
        self.orphaned = False
        for sig in parse_signals(names):
            signal.signal(sig, self._record)

    def _record(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum
            print(f"[massive_mt] received {signal.Signals(signum).name}: checkpoint and stop after the next step",
                  file=sys.stderr, flush=True)

    def agreed(self, device) -> bool:
        """Collective: True on every rank when any rank had received a stop signal (or lost its
        launcher) by the previous call. The flags of this call are all-reduced now and read at the next
        call from a host copy made without blocking (pinned memory, an event on CUDA), complete by
        then: no host synchronisation per step. A stop is decided one step after it is seen; every
        rank reads the same reduced flags at the same call, so all stop after the same step."""
        import torch
        import deepspeed.comm as dist

        if self._pending is not None:
            host, event = self._pending
            if event is not None:
                event.synchronize()                      # recorded a step ago: already complete
            if host[0]:
                self.agreed_signal = int(host[0])
            self.orphaned = self.orphaned or bool(host[1])
        gone = self.launcher.gone() if self.launcher is not None else None
        if gone and not self.orphaned:
            print(f"[massive_mt] {gone}: checkpoint and stop after the next step", file=sys.stderr, flush=True)
        cuda = torch.device(device).type == "cuda"
        local = torch.tensor([self.received or 0, int(gone is not None)], dtype=torch.int32)
        flag = (local.pin_memory() if cuda else local).to(device, non_blocking=True)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        host = torch.empty(2, dtype=torch.int32, pin_memory=cuda)
        host.copy_(flag, non_blocking=True)
        event = None
        if cuda:
            event = torch.cuda.Event()
            event.record()
        self._pending = (host, event)
        return self.agreed_signal is not None or self.orphaned

    @property
    def name(self) -> str:
        if self.agreed_signal:
            return signal.Signals(self.agreed_signal).name
        return LAUNCHER_EXIT if self.orphaned else ""
