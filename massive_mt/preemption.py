"""Stop requests from the scheduler: checkpoint, exit with REQUEUE_EXIT, resume on the next start.

A batch system warns a job before its time limit or a preemption with a signal (Slurm:
`--signal=USR1@300`). The trainer installs a handler for the signals of `train.stop_signals`
(default USR1 and TERM) at start-up; the handler only records the signal. At every step
boundary the ranks agree on it (an all-reduce of the flag, MAX), so all stop after the same
step even when only some received the signal; they write a checkpoint (DeepSpeed writes the
`latest` file last, so an interrupted save leaves the previous checkpoint the one resumed) and
the process exits with status 75 (EX_TEMPFAIL). The sbatch templates in slurm/ requeue the job
on that status, and the next start resumes from the latest checkpoint (`train.resume: auto`).
"""
from __future__ import annotations

import signal
import sys
from typing import Optional

from .errors import ConfigError

REQUEUE_EXIT = 75          # EX_TEMPFAIL: stopped on request after a checkpoint; start again to continue


class StopRequested(Exception):
    """Raised by the trainer after the checkpoint of a stop request has been written."""

    def __init__(self, signal_name: str, step: int):
        super().__init__(f"stopped by {signal_name} after step {step}; checkpoint written, "
                         f"exit status {REQUEUE_EXIT} (start again to resume)")
        self.signal_name, self.step = signal_name, step


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


class StopSignals:
    """Records the first of `names` this process receives; `agreed()` shares it among the ranks."""

    def __init__(self, names):
        self.received: Optional[int] = None
        self.agreed_signal: Optional[int] = None
        for sig in parse_signals(names):
            signal.signal(sig, self._record)

    def _record(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum
            print(f"[massive_mt] received {signal.Signals(signum).name}: checkpoint and stop after this step",
                  file=sys.stderr, flush=True)

    def agreed(self, device) -> bool:
        """Collective: True on every rank when any rank received a stop signal."""
        import torch
        import deepspeed.comm as dist

        flag = torch.tensor([self.received or 0], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if int(flag.item()):
            self.agreed_signal = int(flag.item())
        return self.agreed_signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.agreed_signal).name if self.agreed_signal else ""
