"""User-facing errors, the orderly stops of a training run, and the one map from them to a
command's exit status (the statuses are documented in docs/failures.md#exit-statuses).

Every problem caused by input the user controls (a corpus file, a config field, a ds_config)
raises a MassiveMTError with a message that names the file, line or field. A command's error
boundary (massive_mt/launch.py `run_command`, massive_mt/train.py and massive_mt/experiments/bench.py
`main`) prints one line, `exit_line`, and exits with `exit_code`; an exception outside the map is a
crash and keeps its traceback. Imports nothing of massive_mt: every layer may use it.
"""
from __future__ import annotations

from typing import Optional

REFUSED_EXIT = 2        # bad input, or a file system that refuses: one line, nothing was done
NONFINITE_EXIT = 3      # stopped: non-finite parameters, or too many consecutive non-finite steps
REQUEUE_EXIT = 75       # EX_TEMPFAIL: stopped on request after a checkpoint; start again to continue


class MassiveMTError(Exception):
    """Base class: an error in user input, reported without a traceback."""


class DataError(MassiveMTError):
    """A corpus, catalogue or token file is missing, empty, malformed or inconsistent."""


class ConfigError(MassiveMTError):
    """An experiment config or ds_config field is of the wrong type, out of range or contradictory."""


class Stopped(Exception):
    """A training run that stops in order before max_steps (not an error: its line has no 'error:')."""


class StopRequested(Stopped):
    """Raised by the trainer after the checkpoint of a stop request has been written."""

    def __init__(self, signal_name: str, step: int):
        super().__init__(f"stopped by {signal_name} after step {step}; checkpoint written, "
                         f"exit status {REQUEUE_EXIT} (start again to resume)")
        self.signal_name, self.step = signal_name, step


class NonFiniteStop(Stopped):
    """The run stops: its parameters are not finite, or train.max_nonfinite_steps was exceeded."""


# The one map, most specific first. An OSError is a refusal only where a command reads and writes
# files in one process (run_command): inside a distributed training run it is a crash.
EXIT_CODES = ((StopRequested, REQUEUE_EXIT), (NonFiniteStop, NONFINITE_EXIT),
              (MassiveMTError, REFUSED_EXIT), (OSError, REFUSED_EXIT))


def exit_code(exc: BaseException) -> Optional[int]:
    """The exit status a command ends with after `exc`; None for an exception outside the map (a crash)."""
    return next((code for cls, code in EXIT_CODES if isinstance(exc, cls)), None)


def exit_line(command: str, exc: BaseException, message: Optional[str] = None) -> str:
    """The one line a command prints on stderr for `exc` (its `message`, default str(exc)):
    `massive-mt COMMAND: error: ...`, or `massive-mt COMMAND: ...` for an orderly stop."""
    text = str(exc) if message is None else message
    return f"massive-mt {command}: {text}" if isinstance(exc, Stopped) else f"massive-mt {command}: error: {text}"
