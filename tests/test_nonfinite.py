"""Non-finite values (docs/failures.md#non-finite-values): a NaN in one task's loss, injected on one
rank through the test hook massive_mt.train.FAULT_NONFINITE_ENV (a real NaN gradient through the
real training step), in every gradient layout (ZeRO 0, 2, 3 in fp32, ZeRO 1 and 2 in bf16), with a reconciler (the
task is dropped) and with `plain` (the step is skipped); too many consecutive non-finite steps and a
learning rate that makes the parameters non-finite stop the run with exit status 3.

Each case is one 2-rank CPU job of the `test` preset (4 steps, a checkpoint after every step)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import read_metrics, train_args
from test_faults import train
from massive_mt.engine import checkpoint
from massive_mt.engine.config import OptimConfig
from massive_mt.engine.optim import inverse_sqrt_lambda
from massive_mt.train import FAULT_NONFINITE_ENV, NONFINITE_EXIT

# one ds_config per gradient layout of the ZeRO adapter (fp32 ZeRO-1 shares ZeRO-2's)
LAYOUTS = [("zero0.json", 0), ("zero2.json", 2), ("zero3.json", 3), ("zero1_bf16.json", 1), ("zero2_bf16.json", 2)]
ARGS = ["train.max_steps=4", "train.save_interval=1", "train.keep_last=4"]
FAULT = {FAULT_NONFINITE_ENV: "1:1:0"}     # rank 1, the second step (step 2), the step's first task


def weights(run: Path, step: int, stage: int) -> dict:
    """The full weights saved with checkpoint `step<step>`."""
    tag = run / "checkpoints" / f"step{step}"
    if stage == 3:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        return get_fp32_state_dict_from_zero_checkpoint(str(run / "checkpoints"), tag=tag.name)
    return torch.load(tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def exported_finite(run: Path) -> bool:
    from safetensors.torch import load_file
    tensors = load_file(run / "model" / "model.safetensors")
    return len(tensors) > 0 and all(bool(torch.isfinite(t.float()).all()) for t in tensors.values())


def start_record(run: Path) -> dict:
    return next(r for r in read_metrics(run) if r.get("event") == "start")


def check_run(run: Path, stage: int, action: str) -> list[dict]:
    recs = read_metrics(run)
    assert start_record(run)["world_size"] == 2 and start_record(run)["zero_stage"] == stage
    events = [r for r in recs if r.get("event") == "nonfinite"]
    assert [(e["step"], e["action"], len(e["tasks"])) for e in events] == [(2, action, 1)]
    for tag in ("step1", "step2", "step3", "step4"):
        assert checkpoint.read_marker(run / "checkpoints" / tag)["finite"] is True
    assert exported_finite(run)
    return recs


@pytest.mark.distributed
@pytest.mark.parametrize("ds_config,stage", LAYOUTS)
def test_nonfinite_task_is_dropped_with_a_reconciler(data_bin, tmp_path, ds_config, stage):
    """GradVac: the NaN task gets weight 0, the other task's gradient is applied."""
    run = tmp_path / "run"
    p = train(2, train_args(data_bin, run, ds_config, *ARGS, "reconcile.method=gradvac"), env=FAULT, timeout=400)
    assert p.returncode == 0, p.stderr[-6000:]
    recs = check_run(run, stage, "dropped")
    logs = [r for r in recs if "loss" in r]
    assert [(r["step"], r["nonfinite_dropped_tasks"], r["nonfinite_skipped_steps"]) for r in logs] == \
        [(2, 1, 0), (4, 0, 0)]
    assert not same(weights(run, 1, stage), weights(run, 2, stage))      # the other task's step happened


@pytest.mark.distributed
@pytest.mark.parametrize("ds_config,stage", LAYOUTS)
def test_nonfinite_step_is_skipped_with_plain(data_bin, tmp_path, ds_config, stage):
    """plain has one accumulated gradient: the step is skipped on every rank."""
    run = tmp_path / "run"
    p = train(2, train_args(data_bin, run, ds_config, *ARGS), env=FAULT, timeout=400)
    assert p.returncode == 0, p.stderr[-6000:]
    recs = check_run(run, stage, "skipped")
    logs = [r for r in recs if "loss" in r]
    assert [(r["step"], r["nonfinite_dropped_tasks"], r["nonfinite_skipped_steps"]) for r in logs] == \
        [(2, 0, 1), (4, 0, 0)]
    assert same(weights(run, 1, stage), weights(run, 2, stage))          # step 2 left the parameters alone
    assert not same(weights(run, 2, stage), weights(run, 3, stage))      # step 3 trained again
    # the schedule stays a function of the step counter: the lr logged at step 4 is the schedule's
    init = OptimConfig().warmup_init_lr
    assert logs[-1]["lr"] == pytest.approx(3e-3 * inverse_sqrt_lambda(3e-3, 5, init)(4), rel=1e-9)


@pytest.mark.distributed
def test_consecutive_nonfinite_steps_stop_the_run(data_bin, tmp_path):
    """Steps 2.. all non-finite, train.max_nonfinite_steps=2: the third one stops the run (exit 3)
    with one line naming the steps and the task; every checkpoint written is finite."""
    run = tmp_path / "run"
    args = train_args(data_bin, run, "zero2.json", "train.max_steps=8", "train.save_interval=1", "train.keep_last=8",
                      "train.max_nonfinite_steps=2")
    p = train(2, args, env={FAULT_NONFINITE_ENV: "0:1-7:1"}, timeout=400)
    assert p.returncode != 0
    assert f"exitcode: {NONFINITE_EXIT}" in p.stderr, p.stderr[-6000:]
    line = next(l for l in p.stderr.splitlines() if l.startswith("massive-mt train: stopped:"))
    task = [e for e in read_metrics(run) if e.get("event") == "nonfinite"][0]["tasks"][0]
    assert "3 consecutive non-finite steps (steps 2-4" in line and task in line and "max_nonfinite_steps = 2" in line
    stopped = [r for r in read_metrics(run) if r.get("event") == "stopped"]
    assert stopped and stopped[0]["exit_status"] == NONFINITE_EXIT and stopped[0]["nonfinite_skipped_total"] == 3
    ck = run / "checkpoints"
    tags = sorted(p.name for p in ck.iterdir() if p.is_dir())
    assert tags == ["step1", "step2", "step3"]                          # nothing saved at the stop
    assert all(checkpoint.read_marker(ck / t)["finite"] for t in tags)
    assert not (run / "model").exists()


@pytest.mark.distributed
def test_a_learning_rate_that_breaks_the_model_stops_the_run(data_bin, tmp_path):
    """ZeRO-0 fp32 has no overflow check of its own. optim.lr=1e6 leaves the parameters finite but
    huge and every later loss NaN: the run stops at step 2 (exit 3), nothing saved or exported.
    optim.lr=inf is refused by the config before anything starts (one line naming the field)."""
    run = tmp_path / "run"
    p = train(2, train_args(data_bin, run, "zero0.json", "train.max_steps=6", "optim.lr=1e6", "optim.warmup_steps=1",
                            "train.max_nonfinite_steps=0"), timeout=400)
    assert start_record(run)["world_size"] == 2
    assert p.returncode != 0 and f"exitcode: {NONFINITE_EXIT}" in p.stderr, p.stderr[-6000:]
    assert "massive-mt train: stopped: 1 consecutive non-finite step (step 2; non-finite tasks: " in p.stderr
    assert not (run / "model").exists() and not (run / "checkpoints").exists()

    p = train(2, train_args(data_bin, tmp_path / "inf", "zero0.json", "optim.lr=inf"), timeout=400)
    assert p.returncode != 0 and "field 'optim.lr'" in p.stderr and not (tmp_path / "inf").exists(), p.stderr[-3000:]


# ----------------------------------------------------------------------------- GradVac near cosine 1 (item 8)

def test_gradvac_near_parallel_correction_is_left_out():
    """Cosine 1 - 2e-8, target 1 - 1e-8: the exact correction would add 0.41 g_j to each task (the
    update 1.41x the `sum` update) from cosines at the rounding level of fp32 gradients; within
    GRADVAC_TOL of |T| = 1 no correction fires, in the Gram form and in the full-vector reference
    alike. An ordinary correction (cos 0, target 0.5) still fires."""
    import reference                                        # tests/reference.py
    from massive_mt.reconcile import make_state, reconcile
    from massive_mt.reconcile.methods import GRADVAC_TOL

    theta = 2e-4                                            # 1 - cos(theta) = 2e-8
    g = torch.tensor([[1.0, 0.0, 0.3], [math.cos(theta), math.sin(theta), 0.3]], dtype=torch.float64)
    g[1] *= 1.3
    ordinary = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
    for grads, target, fires in ((g, 1 - 1e-8, False), (ordinary, 0.5, True)):
        grams = (grads @ grads.T)[None]
        state = make_state("gradvac", 1, 2)
        state.phi_hat.fill_(target)
        ref_state = make_state("gradvac", 1, 2)
        ref_state.phi_hat.fill_(target)
        weights, stats = reconcile("gradvac", grams, [0, 1], state, torch.Generator().manual_seed(0))
        update = weights[0] @ grads
        ref, _ = reference.reconcile("gradvac", [grads], [0, 1], ref_state, torch.Generator().manual_seed(0))
        plain = grads.sum(0)
        assert int(stats.n_fired[0]) == (2 if fires else 0)
        assert torch.allclose(ref[0], update, rtol=1e-9, atol=1e-12)
        if fires:
            assert float(update.norm()) > 1.05 * float(plain.norm())
        else:
            assert torch.equal(weights, torch.ones(1, 2, dtype=torch.float64))
            assert math.isclose(float(update.norm()), float(plain.norm()), rel_tol=1e-12)
        assert (1 - target ** 2 < GRADVAC_TOL) != fires       # the two cases lie on either side
