"""NCCL's device rule on 2 CPU ranks (tests/dist/device_rule.py): every collective of the training step
(plain, GradVac, CATS with both objectives, ZeRO 0-3), checkpoint save and resume, the output lock,
`evaluate --nproc 2` and `bench` runs after the rank's device was set, with every tensor on it."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, TEST_LANGS, dist_env, format_rank_errors, one_launch, rank_errors, train_args
from massive_mt.launch import free_port

pytestmark = pytest.mark.distributed
CATS = ["cats+param=softmax+eps=0", "cats+meta_data=valid+objective=lookahead+eps=0"]


def ruled(target: list[str], rule_dir, nproc: int = 2, tensors: bool = True, timeout: int = 900) -> list[dict]:
    """Run `target` on `nproc` torchrun ranks (or, for ["-m", "massive_mt.cli", ...], as the command line
    starts its own) under the device rule; returns each rank's record (rank order). `tensors`: the
    target hands tensors to collectives (evaluate has object collectives only). The run's stderr is
    kept in rule_dir/stderr."""
    env = dict(dist_env(), MASSIVE_MT_DEVICE_RULE=str(rule_dir),
               PYTHONPATH=os.pathsep.join([str(REPO / "tests" / "dist" / "site"), str(REPO)]))
    rule_dir.mkdir(parents=True, exist_ok=True)
    if target[:2] == ["-m", "massive_mt.cli"]:
        cmd = [sys.executable, *target]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(free_port()), *target]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    (rule_dir / "stderr").write_text(p.stderr)
    violations = [json.loads(f.read_text()) for f in sorted(rule_dir.glob("violation-rank*.json"))]
    assert not violations, "\n".join(f"rank {v['rank']}: {v['problem']}\n{v['stack']}" for v in violations)
    errors = rank_errors(p.stdout)
    assert p.returncode == 0 and not errors, (format_rank_errors(errors) if errors else
                                              f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    records = [json.loads((rule_dir / f"rank{r}.json").read_text()) for r in range(nproc)]
    for r, rec in enumerate(records):
        assert rec["rank"] == r and rec["world_size"] == nproc
        assert rec["first"]["current"] == rec["expected"] == r      # the device was set before the first one
        assert rec["counts"]["object"] > 0, rec
        assert (rec["counts"]["tensor"] > 0) == tensors and rec["devices"] == ([r] if tensors else []), rec
    return records


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_training_step_collectives_are_on_the_rank_device(request, launches, data_bin, tmp_path, stage):
    """The stages this session selected run in one launch (`one_launch`, tests/conftest.py): a
    violation at any of them fails each."""
    def launch(world, stages):
        overrides = [f"data.data_bin={data_bin}", f"data.langs={json.dumps(TEST_LANGS)}", "data.max_len=48",
                     "model.preset=test", "model.dropout=0.0", "sampling.tasks_per_step=2",
                     "sampling.max_tokens=128", "train.tensorboard=false", f"train.output_dir={tmp_path / 'run'}"]
        configs = ",".join(str(REPO / "ds_configs" / f"zero{s}.json") for s in stages)
        records = ruled(["tests/dist/reconcile_equivalence.py", configs, "1", "plain", "gradvac:all_layer", *CATS,
                         "--", *overrides], tmp_path / "rule", nproc=world)
        return {s: records for s in stages}

    records = one_launch(request, launches, 2, lambda params: params["stage"], launch)[stage]
    assert [rec["world_size"] for rec in records] == [2, 2]


def test_lock_checkpoint_resume_evaluate_and_bench_on_the_rank_device(data_bin, real_corpus, tmp_path):
    out = tmp_path / "run"
    args = train_args(data_bin, out, "zero1.json", "train.save_interval=1", "train.tensorboard=false",
                      "reconcile.method=gradvac")
    ruled([*args, "train.max_steps=1"], tmp_path / "rule-train")
    # the start-up note of a reconciler at ZeRO-1 (K = sampling.tasks_per_step = 2 reductions per step)
    assert ("ZeRO-1 with reconcile.method=gradvac: every task ends at an accumulation boundary, so DeepSpeed "
            "reduces the full gradient 2 times per step instead of once; ZeRO-2 is the layout where "
            "reconciliation adds no gradient reduction") in (tmp_path / "rule-train" / "stderr").read_text()
    ruled([*args, "train.max_steps=2"], tmp_path / "rule-resume")
    starts = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"start"' in l]
    assert [s["resumed_from_step"] for s in starts] == [0, 1]
    ruled(["-m", "massive_mt.cli", "evaluate", "--nproc", "2", "--model", str(out / "model"), "--corpus",
           str(real_corpus), "--max-sentences", "4", "--beam", "1", "--max-new-tokens", "4", "--no-progress",
           "--out", str(tmp_path / "eval")], tmp_path / "rule-eval", tensors=False)
    assert (tmp_path / "eval" / "results.json").is_file()
    ruled(["-m", "massive_mt.experiments.bench", "--data-bin", str(data_bin), f"data.langs={json.dumps(TEST_LANGS)}",
           "data.max_len=48", "--preset", "test", "--max-tokens", "128", "--steps", "1", "--warmup", "0",
           "--tasks-per-step", "2", "--methods", "plain", "gradvac:all_layer", "--out", str(tmp_path / "b.jsonl")],
          tmp_path / "rule-bench")


def test_virtual_devices_follow_the_tensors():
    """The shim's model of devices on CPU: where each kind of op puts its result."""
    import types

    import torch

    from dist.device_rule import HOST, VirtualDevices, vdev

    grad = torch.ones(3)                                # made outside the mode: a device tensor (a gradient)
    with VirtualDevices(types.SimpleNamespace(current=1)):
        host = torch.zeros(3)                           # no device: the host, as on a GPU machine
        dev = torch.zeros(3, device="cpu:1")
        assert (vdev(host), vdev(dev), vdev(host + 1), vdev(dev * host)) == (HOST, 1, HOST, 1)
        assert vdev(host.to(dev.device)) == 1 and str(dev.device) == "cpu:1" and str(host.device) == "cpu"
        assert vdev(dev.cpu()) == HOST and vdev(dev) == 1            # .cpu() is a copy, the original stays
        assert vdev(grad.cpu()) == HOST and vdev(grad * 2) is None and str(grad.device) == "cpu:1"
        assert vdev(torch.tensor([1.0], device=grad.device)) == 1
        assert vdev(host.to(torch.float64)) == HOST


def test_host_syncs_are_counted(tmp_path):
    """The shim's count of host synchronisations (tests/test_host_syncs.py relies on it): a device
    tensor read or copied to the host, a blocking copy to the device; not host work, not
    non-blocking copies."""
    import torch

    from dist.device_rule import Rule, VirtualDevices

    rule = Rule(tmp_path)
    rule.current = 1
    with VirtualDevices(rule):
        dev, host = torch.zeros(3, device="cpu:1"), torch.zeros(3)
        host.sum().item(), host.tolist(), host.to(torch.float64)              # the host's own: none
        host.to(dev.device, non_blocking=True)                                # none
        torch.empty(3).copy_(dev, non_blocking=True)                          # none
        dev.sum().item()                                                      # 1: read
        bool(dev.any())                                                       # 2: read
        dev.cpu()                                                             # 3: to the host
        host.to(dev.device)                                                   # 4: blocking copy to the device
        torch.empty(3).copy_(dev)                                             # 5: blocking copy to the host
        torch.tensor([1.0], device="cpu:1")                                   # 6: Python data to the device
    assert sum(rule.syncs.values()) == 6, rule.syncs
    assert rule.own_syncs == 0                  # none of them in massive_mt's code
