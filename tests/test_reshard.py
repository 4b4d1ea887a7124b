"""Resume on another world size, ZeRO stage or precision (`train.reshard`, docs/failures.md).

Each case saves a checkpoint with one layout (tests/dist/reshard_check.py `save`: 2 steps of the
`test` preset, one task's loss made NaN at step 0 so the non-finite counters are not zero) and
resumes it with another (`load`): the consolidated fp32 master weights and Adam moments equal the
saved ones bit for bit, the reconciler's state (GradVac targets, CATS scales), the sampler's
position and the non-finite counters are unchanged, and 2 more steps train with finite losses."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import REPO, dist_result, read_metrics, run_ranks, train_args
from massive_mt.train import FAULT_NONFINITE_ENV

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

SCRIPT = str(REPO / "tests" / "dist" / "reshard_check.py")
STEPS = 2


def overrides(data_bin: Path, out: Path, method: str, *more: str) -> list[str]:
    return train_args(data_bin, out, "zero2.json", f"reconcile.method={method}", "train.log_interval=1",
                      *more)[4:]          # without "-m massive_mt.train --ds-config X"


@pytest.fixture(scope="module")
def saved(data_bin, tmp_path_factory, monkeypatch_module):
    """saved(nproc, ds_config, method) -> (run dir, reference file, save result); each layout trained once."""
    cache = {}

    def make(nproc: int, ds: str, method: str):
        key = (nproc, ds, method)
        if key not in cache:
            d = tmp_path_factory.mktemp(f"saved-{nproc}-{ds.split('.')[0]}-{method}")
            run, ref = d / "run", d / "ref.pt"
            monkeypatch_module.setenv(FAULT_NONFINITE_ENV, "0:0:0")     # rank 0, step 0, the step's first task
            p = run_ranks(nproc, [SCRIPT, "save", str(REPO / "ds_configs" / ds), str(ref), "--",
                                  *overrides(data_bin, run, method, f"train.max_steps={STEPS}")])
            monkeypatch_module.delenv(FAULT_NONFINITE_ENV)
            res = dist_result(p)
            assert res["world_size"] == nproc and res["step"] == STEPS
            cache[key] = (run, ref, res)
        return cache[key]

    return make


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def copy_of(run: Path, dst: Path) -> Path:
    return Path(shutil.copytree(run, dst, ignore=shutil.ignore_patterns(".lock*", "model")))


# (saved world size, ds_config, method), (resumed world size, ds_config), m after the resume
CASES = {
    "zero2-n2-to-n1": ((2, "zero2.json", "gradvac"), (1, "zero2.json"), 2),
    "zero2-n1-to-n2": ((1, "zero2.json", "cats"), (2, "zero2.json"), 1),
    "zero2-to-zero3-n2": ((2, "zero2.json", "gradvac"), (2, "zero3.json"), 1),
    "bf16-zero2-n2-to-n1": ((2, "zero2_bf16.json", "cats"), (1, "zero2_bf16.json"), 2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_resume_on_another_layout(case, saved, data_bin, tmp_path):
    (n0, ds0, method), (n1, ds1), m = CASES[case]
    base, ref, before = saved(n0, ds0, method)
    run = copy_of(base, tmp_path / "run")
    p = run_ranks(n1, [SCRIPT, "load", str(REPO / "ds_configs" / ds1), str(ref), "--",
                       *overrides(data_bin, run, method, f"train.max_steps={STEPS + 2}")])
    res = dist_result(p)
    assert res["world_size"] == n1 and res["zero_stage"] == (3 if "zero3" in ds1 else 2)
    assert res["step"] == STEPS and res["params_match"]
    assert res["fp32_equal"] and res["moments_equal"], res["unequal"]
    assert res["reconciler_equal"] and res["lr_equal"]
    assert res["sampler_equal"] == {"step": True, "epoch": True, "cursor": True}
    assert res["nonfinite_equal"] and res["nonfinite"]["dropped_total"] + res["nonfinite"]["skipped_total"] > 0
    assert res["micro_batches_per_task"] == m and res["gradient_accumulation_steps"] == 2 * m  # K = 2 tasks
    assert res["trained"] == 2 and res["finite"], res
    if n0 != n1:
        assert "micro-batches per task" in res["reshard_note"]
    uni = run / "checkpoints" / f"step{STEPS}_universal"
    assert (uni / "massive_mt_universal.json").is_file()
    events = [r for r in read_metrics(run) if r.get("event") == "reshard"]
    assert len(events) == 1 and events[0]["layout"]["world_size"] == [n0, n1]
    assert "converted" in p.stderr and "MiB on disk" in p.stderr


def test_conversion_is_reused(saved, data_bin, tmp_path):
    """A second resume from the same tag finds the converted checkpoint complete and does not convert again."""
    base, ref, _ = saved(2, "zero2.json", "gradvac")
    run = copy_of(base, tmp_path / "run")
    args = [SCRIPT, "load", str(REPO / "ds_configs" / "zero2.json"), str(ref), "--",
            *overrides(data_bin, run, "gradvac", f"train.max_steps={STEPS}")]
    first = run_ranks(1, args)
    second = run_ranks(1, args)
    assert "converted" in first.stderr and "reusing" in second.stderr
    assert dist_result(second)["fp32_equal"] and dist_result(second)["world_size"] == 1


@pytest.mark.parametrize("side", ["run", "checkpoint"])
def test_zero0_is_refused(side, saved, data_bin, tmp_path):
    """ZeRO-0 on either side: no ZeRO optimizer-state partitions to convert from or load into. (The
    refusal with `train.reshard: never` is tests/test_faults.py test_refused_resume_change_names_the_field.)"""
    run = tmp_path / "run"
    if side == "run":                # a 2-rank ZeRO-2 checkpoint, resumed by a 2-rank ZeRO-0 run
        copy_of(saved(2, "zero2.json", "gradvac")[0], run)
        nproc, ds = 2, "zero0.json"
    else:                            # a 1-rank ZeRO-0 checkpoint, resumed by a 1-rank ZeRO-2 run
        run_ranks(1, train_args(data_bin, run, "zero0.json", "reconcile.method=gradvac", f"train.max_steps={STEPS}"))
        nproc, ds = 1, "zero2.json"
    p = run_ranks(nproc, train_args(data_bin, run, ds, "reconcile.method=gradvac", f"train.max_steps={STEPS + 2}"),
                  check=False)
    errors = [l for l in p.stderr.splitlines() if l.startswith("massive-mt train: error:")]
    assert p.returncode != 0 and errors, p.stderr[-4000:]
    assert "field 'zero_optimization.stage'" in errors[0] and f"the {side} is ZeRO-0" in errors[0]
    assert f"step{STEPS}" in errors[0] and f"world size {nproc}" in errors[0]
    assert not (run / "checkpoints" / f"step{STEPS}_universal").exists()
