"""The one map from errors and orderly stops to exit statuses (massive_mt/errors.py), and the three
error boundaries that use it: massive_mt.train's main, massive_mt.experiments.bench's main and
massive_mt.launch.run_command."""
import subprocess
import sys

import pytest

from conftest import REPO, dist_env
from massive_mt import errors
from massive_mt.errors import (NONFINITE_EXIT, REFUSED_EXIT, REQUEUE_EXIT, ConfigError, DataError, MassiveMTError,
                               NonFiniteStop, StopRequested, exit_code, exit_line)


@pytest.mark.parametrize("exc,code", [
    (MassiveMTError("x"), 2), (ConfigError("x"), 2), (DataError("x"), 2),
    (PermissionError(13, "Permission denied", "/ro/out"), 2), (OSError(28, "No space left on device"), 2),
    (StopRequested("SIGUSR1", 4), 75), (NonFiniteStop("stopped: the parameters are not finite"), 3),
    (ValueError("x"), None), (RuntimeError("x"), None), (KeyboardInterrupt(), None),
], ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v))
def test_each_class_maps_to_its_exit_status(exc, code):
    assert exit_code(exc) == code


def test_the_statuses_scripts_and_docs_rely_on():
    assert (REFUSED_EXIT, NONFINITE_EXIT, REQUEUE_EXIT) == (2, 3, 75)       # slurm/*.sbatch requeue on 75


def test_the_line_says_error_for_errors_only():
    assert exit_line("train", ConfigError("field 'x': bad")) == "massive-mt train: error: field 'x': bad"
    stop = StopRequested("SIGUSR1", 4)
    assert exit_line("train", stop) == ("massive-mt train: stopped by SIGUSR1 after step 4; checkpoint written, "
                                        "exit status 75 (start again to resume)")
    assert exit_line("evaluate", OSError(30, "Read-only file system"), "/ro: Read-only file system") == \
        "massive-mt evaluate: error: /ro: Read-only file system"


@pytest.mark.parametrize("exc,code", [(StopRequested("SIGTERM", 7), 75), (NonFiniteStop("stopped: why"), 3),
                                      (DataError("corpus.de: line 3: empty"), 2)])
def test_train_main_exits_with_the_mapped_status(monkeypatch, capsys, exc, code):
    import massive_mt.train as train

    def run(args):
        raise exc

    monkeypatch.setattr(train, "run", run)
    assert train.main(["--ds-config", "ds.json"]) == code
    assert capsys.readouterr().err.strip() == exit_line("train", exc)


def test_train_main_lets_a_crash_through(monkeypatch):
    import massive_mt.train as train

    def run(args):
        raise OSError(104, "Connection reset by peer")     # e.g. a collective's socket: a crash, not a refusal

    monkeypatch.setattr(train, "run", run)
    with pytest.raises(OSError):
        train.main(["--ds-config", "ds.json"])


def test_run_command_and_bench_use_the_map(capsys):
    from massive_mt.experiments import bench
    from massive_mt.launch import run_command

    def write():
        raise PermissionError(13, "Permission denied", "/ro/report.json")

    assert run_command("evaluate", "/ro/report.json", write) == errors.REFUSED_EXIT
    assert capsys.readouterr().err.strip() == "massive-mt evaluate: error: /ro/report.json: Permission denied"
    assert bench.main(["--data-bin", "unused", "--steps", "0"]) == errors.REFUSED_EXIT
    assert capsys.readouterr().err.strip() == \
        "massive-mt bench: error: --steps and --repeats must be >= 1, --warmup >= 0"


def test_train_command_line_refusal_exits_2(tmp_path):
    missing = tmp_path / "nope.json"
    p = subprocess.run([sys.executable, "-m", "massive_mt.train", "--ds-config", str(missing)],
                       env=dist_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == REFUSED_EXIT, p.stderr[-3000:]
    assert p.stderr.strip().splitlines()[-1] == f"massive-mt train: error: {missing}: ds_config not found"
