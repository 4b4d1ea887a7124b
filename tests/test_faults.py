"""Fault injection: interrupted and damaged checkpoints, `latest` gone wrong, pruning, the lock on
output_dir, refused resume changes, a killed launcher and a stopped rank (docs/failures.md).

The end-to-end tests start real 2-rank CPU jobs (the `test` preset, a few steps); most of them copy
one trained run (`base`: ZeRO-2, checkpoints step2 and step4) and damage the copy."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from conftest import REPO, dist_env, read_metrics, train_args
from massive_mt.engine import checkpoint
from massive_mt.launch import free_port
from massive_mt.engine.lock import LOCK_NAME, LockError, OutputDirLock

MARKER = checkpoint.MARKER


# ----------------------------------------------------------------------------- helpers

def launch(nproc: int, args: list[str], env: dict | None = None, launcher: str = "torchrun") -> subprocess.Popen:
    """Start `nproc` local ranks of massive_mt.train in a session of their own; stdout and stderr go to
    temporary files (a pipe nobody reads would block the ranks), read back with `output`."""
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(free_port())] + args
    else:
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc),
               "--master_port", str(free_port()), "--module"] + args[1:]
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    p = subprocess.Popen(cmd, env=dict(dist_env(), **(env or {})), cwd=REPO, text=True,
                         stdout=out, stderr=err, start_new_session=True)
    p.out_file, p.err_file = out, err
    return p


def output(p: subprocess.Popen) -> tuple[str, str]:
    texts = []
    for f in (p.out_file, p.err_file):
        f.seek(0)
        texts.append(f.read())
    return texts[0], texts[1]


def train(nproc: int, args: list[str], env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    p = launch(nproc, args, env)
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise AssertionError(f"timed out after {timeout}s\n{output(p)[1][-6000:]}")
    out, err = output(p)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def refused(p: subprocess.CompletedProcess) -> list[str]:
    """The ranks exited with status 2 (torchrun reports the first failed rank's status); their error lines."""
    assert p.returncode != 0 and "(exitcode: 2)" in p.stderr, p.stderr[-6000:]
    return [l for l in p.stderr.splitlines() if l.startswith("massive-mt train: error:")]


def starts(run: Path) -> list[int]:
    return [m["resumed_from_step"] for m in read_metrics(run) if m.get("event") == "start"]


def tags(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())


def wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    t0 = time.time()
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) before {what}:\n{output(proc)[1][-6000:]}")
        if time.time() - t0 > timeout:
            raise AssertionError(f"no {what} within {timeout}s")
        time.sleep(0.5)


def rank_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """rank -> pid of the ranks a launcher started (read from their environment)."""
    out = {}
    for c in psutil.Process(launcher.pid).children(recursive=True):
        try:
            env = c.environ()
        except psutil.Error:
            continue
        if "RANK" in env and "massive_mt.train" in " ".join(c.cmdline()):
            out[int(env["RANK"])] = c.pid
    return out


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def started(run: Path) -> bool:
    f = run / "metrics.jsonl"
    return f.is_file() and any(json.loads(l).get("event") == "start" for l in f.read_text().splitlines() if l)


ARGS = ("train.save_interval=2", "train.keep_last=2", "train.log_interval=1")


@pytest.fixture(scope="module")
def base(data_bin, tmp_path_factory) -> Path:
    """4 steps of 2-rank ZeRO-2 training with complete checkpoints step2 and step4."""
    out = tmp_path_factory.mktemp("faults") / "base"
    p = train(2, train_args(data_bin, out, "zero2.json", "train.max_steps=4", *ARGS))
    assert p.returncode == 0, p.stderr[-6000:]
    return out


def copy_run(base: Path, dst: Path) -> Path:
    shutil.copytree(base, dst, ignore=shutil.ignore_patterns(LOCK_NAME, "model"))
    return dst


def resume(data_bin, run: Path, *overrides: str, ds_config: str = "zero2.json", nproc: int = 2):
    """A resume that stops at step 2 or 4 (no training past the checkpoint: cheap)."""
    return train(nproc, train_args(data_bin, run, ds_config, *ARGS, *overrides))


# ----------------------------------------------------------------------------- checkpoints

@pytest.mark.distributed
def test_complete_checkpoint_layout(base):
    """Every tag has a completion marker with a sha256 per file; `latest` names the newest tag."""
    ck = base / "checkpoints"
    assert tags(base) == ["step2", "step4"]
    assert (ck / "latest").read_text().strip() == "step4"
    for tag in ("step2", "step4"):
        m = json.loads((ck / tag / MARKER).read_text())
        assert m["tag"] == tag and m["finite"] is True
        assert m["run"]["world_size"] == 2 and m["run"]["zero_stage"] == 2
        on_disk = sorted(str(p.relative_to(ck / tag)) for p in (ck / tag).rglob("*") if p.is_file() and p.name != MARKER)
        assert sorted(m["files"]) == on_disk and len(on_disk) >= 3      # model states + one optimizer shard per rank
        assert all(len(v["sha256"]) == 64 and v["bytes"] > 0 for v in m["files"].values())


@pytest.mark.distributed
def test_rank_killed_during_save_resumes_from_previous(data_bin, tmp_path):
    """Rank 1 dies after writing half of its shard of step4: step4 never counts, `latest` stays at
    step2, and the restart resumes from step2, says so, and completes step4 again."""
    run = tmp_path / "run"
    args = train_args(data_bin, run, "zero2.json", "train.max_steps=4", *ARGS)
    p = train(2, args, env={"MASSIVE_MT_FAULT_KILL_IN_SAVE": "1:4"})
    assert p.returncode != 0
    ck = run / "checkpoints"
    assert (ck / "step2" / MARKER).is_file() and not (ck / "step4" / MARKER).exists()
    assert (ck / "latest").read_text().strip() == "step2"
    p = train(2, args)
    assert p.returncode == 0, p.stderr[-6000:]
    assert starts(run) == [0, 2]
    assert "step4" in p.stderr and "incomplete" in p.stderr
    assert (ck / "step4" / MARKER).is_file() and (ck / "latest").read_text().strip() == "step4"


@pytest.mark.distributed
def test_damaged_file_is_named_and_previous_checkpoint_resumed(data_bin, base, tmp_path):
    """64 bytes of 0xff in the middle of rank 1's optimizer shard of step4 (its size unchanged: only the
    sha256 tells; `test_verify_names_the_damaged_file` covers truncated and missing files)."""
    run = copy_run(base, tmp_path / "run")
    f = run / "checkpoints" / "step4" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    data = f.read_bytes()
    mid = len(data) // 2
    f.write_bytes(data[:mid] + b"\xff" * 64 + data[mid + 64:])
    p = resume(data_bin, run, "train.max_steps=2")
    assert p.returncode == 0, p.stderr[-6000:]
    assert starts(run)[-1] == 2
    assert f"step4/{f.name}" in p.stderr
    assert (run / "checkpoints" / "step2" / MARKER).is_file()       # the fallback target was not deleted


@pytest.mark.distributed
@pytest.mark.parametrize("latest", ["dangling", "empty"])
def test_bad_latest_falls_back_to_newest_complete(data_bin, base, tmp_path, latest):
    run = copy_run(base, tmp_path / "run")
    ck = run / "checkpoints"
    if latest == "dangling":            # `latest` names a tag that was deleted: step2 is the newest left
        shutil.rmtree(ck / "step4")
        want = 2
    else:
        (ck / "latest").write_text("")
        want = 4
    p = resume(data_bin, run, f"train.max_steps={want}")
    assert p.returncode == 0, p.stderr[-6000:]
    assert starts(run)[-1] == want                 # never step 0 when checkpoints exist
    assert "latest" in p.stderr and ("step4" in p.stderr if latest == "dangling" else "empty" in p.stderr)
    assert (ck / f"step{want}" / MARKER).is_file()


@pytest.mark.distributed
def test_no_complete_checkpoint_is_refused(data_bin, base, tmp_path):
    """Checkpoints without a marker (an interrupted save, or the previous format) are never
    resumed, and the run does not silently start from step 0 over them."""
    run = copy_run(base, tmp_path / "run")
    for tag in ("step2", "step4"):
        (run / "checkpoints" / tag / MARKER).unlink()
    p = resume(data_bin, run, "train.max_steps=4")
    lines = refused(p)
    assert lines and "no complete checkpoint" in lines[0] and "step4" in lines[0], p.stderr[-3000:]
    assert starts(run) == [0]                      # nothing new was started
    assert tags(run) == ["step2", "step4"]         # nothing deleted


def _fake_tag(ck: Path, step: int, finite: bool | None) -> None:
    """A tag directory with one file and, unless finite is None, a completion marker."""
    d = ck / f"step{step}"
    d.mkdir(parents=True)
    (d / "mp_rank_00_model_states.pt").write_bytes(os.urandom(100))
    if finite is not None:
        checkpoint.write_marker(d, step, finite, run={"world_size": 1},
                                files=checkpoint.file_sums(d, checkpoint.tag_files(d)))


def test_prune_keeps_the_last_finite_checkpoint(tmp_path):
    """keep_last=1 after a run went non-finite at step6 and step8: step8 (newest) and step4 (the last
    finite one, the fallback target) stay; step2, step6 and the debris of an interrupted save go."""
    ck = tmp_path / "checkpoints"
    _fake_tag(ck, 2, True)
    _fake_tag(ck, 3, None)              # debris: no marker, older than a complete tag
    _fake_tag(ck, 4, True)
    _fake_tag(ck, 6, False)
    _fake_tag(ck, 8, False)
    checkpoint.prune(ck, keep_last=1)
    assert sorted(p.name for p in ck.iterdir()) == ["step4", "step8"]


def test_verify_names_the_damaged_file(tmp_path):
    ck = tmp_path / "checkpoints"
    _fake_tag(ck, 2, True)
    d = ck / "step2"
    assert checkpoint.verify(d) is None
    f = d / "mp_rank_00_model_states.pt"
    f.write_bytes(f.read_bytes()[:50])
    assert str(f) in checkpoint.verify(d) and "50 bytes" in checkpoint.verify(d)
    f.write_bytes(b"\xff" * 100)
    assert str(f) in checkpoint.verify(d) and "sha256" in checkpoint.verify(d)
    f.unlink()
    assert str(f) in checkpoint.verify(d) and "missing" in checkpoint.verify(d)


# ----------------------------------------------------------------------------- resume rules

SAVED = {"world_size": 2, "zero_stage": 2, "precision": "fp32",
         "config": {"optim": {"lr": 3e-3}, "reconcile": {"method": "gradvac"}, "sampling": {"tasks_per_step": 2},
                    "train": {"max_steps": 4, "log_interval": 1}}}


def with_changes(**changes) -> dict:
    """SAVED with some layout keys or flattened config fields (section__field=value) changed."""
    cur = json.loads(json.dumps(SAVED))
    for key, value in changes.items():
        if "__" in key:
            section, field = key.split("__")
            cur["config"][section][field] = value
        else:
            cur[key] = value
    return cur


@pytest.mark.parametrize("changes,field", [
    ({"optim__lr": 1e-3}, "optim.lr"),
    ({"reconcile__method": "cats"}, "reconcile.method"),
    ({"sampling__tasks_per_step": 3}, "sampling.tasks_per_step"),
    ({"zero_stage": 3}, "zero_optimization.stage"),
    ({"world_size": 1}, "world size"),
    ({"precision": "bf16"}, "bf16.enabled"),
])
def test_check_resume_names_the_refused_field(changes, field):
    """A field a resume may not change, or (train.reshard=never) the layout: refused, naming the field
    and the checkpoint."""
    with pytest.raises(checkpoint.CheckpointError, match=f"'{field}'.*checkpoint /ck/step4"):
        checkpoint.check_resume(SAVED, with_changes(**changes), Path("/ck/step4"), reshard="never")


def test_check_resume_allows_what_a_resume_may_change_and_plans_the_conversion():
    assert checkpoint.check_resume(SAVED, with_changes(train__max_steps=8, train__log_interval=5),
                                   Path("/ck/step4")) is None
    assert checkpoint.check_resume(SAVED, with_changes(world_size=1), Path("/ck/step4"), reshard="auto") == "universal"
    assert checkpoint.check_resume(SAVED, with_changes(zero_stage=3), Path("/ck/step4"), reshard="auto") == "stage"
    with pytest.raises(checkpoint.CheckpointError, match="ZeRO-0"):
        checkpoint.check_resume(SAVED, with_changes(zero_stage=0), Path("/ck/step4"), reshard="auto")


@pytest.mark.distributed
@pytest.mark.parametrize("change,field", [
    (("optim.lr=1e-3",), "optim.lr"),
    (("--nproc", "1"), "world size"),
], ids=["config-field", "layout"])
def test_refused_resume_change_names_the_field(data_bin, base, tmp_path, change, field):
    """End to end, one config field and one layout change (the rule itself: `check_resume` above): the
    ranks exit with status 2 before training, naming the field; nothing is started or deleted."""
    run = copy_run(base, tmp_path / "run")
    nproc, overrides = 2, list(change)
    if change[0] == "--nproc":               # a layout change is refused only with train.reshard=never
        nproc, overrides = int(change[1]), ["train.reshard=never"]   # (tests/test_reshard.py: converted by default)
    p = resume(data_bin, run, "train.max_steps=6", *overrides, nproc=nproc)
    lines = refused(p)
    assert lines and f"'{field}'" in lines[0] and "step4" in lines[0], p.stderr[-3000:]
    assert starts(run) == [0] and tags(run) == ["step2", "step4"]


# ----------------------------------------------------------------------------- lock, launcher, hangs

def test_lock_refuses_a_live_holder_and_takes_over_a_stale_one(tmp_path, capsys):
    fresh = tmp_path / "fresh"                     # a directory the lock created goes with it when left empty
    OutputDirLock.acquire(fresh).release()
    assert not fresh.exists()
    out = tmp_path / "run"
    out.mkdir()
    first = OutputDirLock.acquire(out)
    holder = subprocess.run([sys.executable, "-c", "from massive_mt.engine.lock import OutputDirLock; "
                             f"OutputDirLock.acquire({str(out)!r})"], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert holder.returncode != 0 and "LockError" in holder.stderr and f"pid {os.getpid()}" in holder.stderr
    first.release()
    assert not (out / LOCK_NAME).exists()
    # a lock file left by a process that died on this host: taken over, with a warning
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "started": "x"}))
    lock = OutputDirLock.acquire(out)
    assert "stale" in capsys.readouterr().err and json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    # a lock file of another host: refused, naming the host and the file to delete
    (out / LOCK_NAME).write_text(json.dumps({"host": "other-node-7", "pid": 1, "started": "x"}))
    with pytest.raises(LockError, match="other-node-7") as e:
        OutputDirLock.acquire(out)
    assert str(out / LOCK_NAME) in str(e.value)


def test_lock_of_an_earlier_start_of_a_requeued_slurm_job_is_taken_over(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"host": "other-node-7", "pid": 1, "started": "x",
                                             "slurm_job_id": "42", "slurm_restart_count": 0}))
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    with pytest.raises(LockError, match="other-node-7"):       # the same start: may still live
        OutputDirLock.acquire(out)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")              # requeued: the earlier start has ended
    lock = OutputDirLock.acquire(out)
    assert "earlier start of this Slurm job" in capsys.readouterr().err
    assert json.loads((out / LOCK_NAME).read_text())["slurm_restart_count"] == 1
    lock.release()


@contextlib.contextmanager
def long_run(data_bin, run: Path, *overrides: str, launcher: str = "torchrun"):
    """A 2-rank run that would train for ever; yields (launcher process, {rank: pid}) once it has
    started, and kills whatever is left of it at the end."""
    job = launch(2, train_args(data_bin, run, "zero2.json", "train.max_steps=100000", "train.log_interval=1",
                               *overrides), launcher=launcher)
    ranks = {}
    try:
        wait_for(lambda: started(run), 300, "start of the run", job)
        ranks.update(rank_pids(job))
        assert sorted(ranks) == [0, 1]
        yield job, ranks
    finally:
        for pid in ranks.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        try:
            os.killpg(job.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def assert_orphans_stopped(run: Path, ranks: dict[int, int]) -> None:
    """The ranks exit on their own, after a complete checkpoint, with the stop recorded and the lock released."""
    t0 = time.time()
    wait_for(lambda: not any(alive(p) for p in ranks.values()), 120, "exit of the orphaned ranks")
    print(f"orphaned ranks exited {time.time() - t0:.1f}s after their launcher")
    stopped = [m for m in read_metrics(run) if m.get("event") == "stopped"]
    assert stopped and stopped[-1]["signal"] == "launcher exit"
    assert (run / "checkpoints" / f"step{stopped[-1]['step']}" / MARKER).is_file()
    assert not (run / LOCK_NAME).exists()


@pytest.mark.distributed
def test_second_run_refused_and_orphaned_ranks_stop(data_bin, tmp_path):
    """A second run on a directory in use exits 2 with one line before writing anything; when the
    first run's launcher is killed (kill -9 of torchrun) its ranks notice, checkpoint and exit."""
    run = tmp_path / "run"
    with long_run(data_bin, run) as (first, ranks):
        before = sorted(p.name for p in run.iterdir())
        second = train(2, train_args(data_bin, run, "zero2.json", "train.max_steps=4", "train.seed=2"))
        lines = refused(second)
        assert lines and str(run) in lines[0] and "in use" in lines[0] and "pid" in lines[0], second.stderr[-3000:]
        assert sorted(p.name for p in run.iterdir()) == before
        assert starts(run) == [0]
        os.kill(first.pid, signal.SIGKILL)             # the launcher only; its ranks live on
        assert_orphans_stopped(run, ranks)
        assert "the launcher (pid" in output(first)[1]


@pytest.mark.distributed
def test_sigterm_to_deepspeed_runner_stops_its_ranks(data_bin, tmp_path):
    """SIGTERM to the single-node `deepspeed` runner does not reach the ranks (its per-node launch
    process lives on); the ranks notice the runner is gone, checkpoint and exit."""
    run = tmp_path / "run"
    with long_run(data_bin, run, launcher="deepspeed") as (job, ranks):
        job.send_signal(signal.SIGTERM)
        job.wait(timeout=60)
        assert_orphans_stopped(run, ranks)
        assert "the deepspeed runner (pid" in output(job)[1]


@pytest.mark.distributed
def test_stopped_rank_ends_the_run_after_the_collective_timeout(data_bin, tmp_path):
    """SIGSTOP of rank 1: rank 0 gives up after train.collective_timeout_s and the launcher ends the job.
    (20 s: longer than any collective of this run takes on a loaded 2-core machine, set-up included.)"""
    run = tmp_path / "run"
    with long_run(data_bin, run, "train.collective_timeout_s=20") as (job, ranks):
        os.kill(ranks[1], signal.SIGSTOP)
        t0 = time.time()
        job.wait(timeout=180)
        took = time.time() - t0
        print(f"job ended {took:.1f}s after SIGSTOP of rank 1")
        assert job.returncode != 0 and took >= 15       # not before the timeout (less the step under way)
        assert not any(alive(p) for p in ranks.values())

