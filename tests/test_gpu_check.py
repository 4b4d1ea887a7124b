"""scripts/gpu_check.sh, the prepared device check: its --dry-run on CPU end to end, and its refusals."""
import json
import subprocess

import pytest
import torch

from conftest import REPO, dist_env

SCRIPT = str(REPO / "scripts" / "gpu_check.sh")
METHODS = {"plain", "bare", "gradvac:all_layer", "cats", "naive"}


def run(*args, timeout=900, env=None):
    return subprocess.run(["bash", SCRIPT, *args], env=env or dist_env(), cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.distributed
def test_dry_run_checks_benchmarks_and_reports(data_bin, tmp_path):
    out = tmp_path / "check"
    p = run("--data-bin", str(data_bin), "--out", str(out), "--dry-run")
    assert p.returncode == 0, p.stderr[-4000:]
    checks = [json.loads(l) for l in (out / "checks.jsonl").read_text().splitlines()]
    [c] = checks
    assert c["check"] == "equivalence-zero2-fp32-checkpointing" and c["ok"] and c["result"]["world_size"] == 1, c
    eq = c["result"]["methods"]
    assert set(eq) == {"plain", "sum", "gradvac:all_layer"}
    assert all(m["checkpointed_layers"] == 4 and m["rel_diff"] <= 1e-6 for m in eq.values()), eq
    records = [json.loads(l) for l in (out / "bench.jsonl").read_text().splitlines()]
    assert sorted((r["zero_stage"], r["method"]) for r in records) == sorted((z, m) for z in (2, 3) for m in METHODS)
    for r in records:
        assert r["world_size"] == 1 and r["preset"] == "test" and r["K"] == 2 and r["ds_config"].endswith("_gpu.json")
        assert r["model_flops"] > 0 and r["peak_tflops"] is None          # no peak known for a CPU
    report = (out / "report.md").read_text()
    assert "## Throughput per rank and model FLOPs utilisation" in report and "| test | 1 | 3 | 2 | naive |" in report
    for fig in ("overhead_vs_k.png", "memory_vs_n.png", "step_time_vs_n.png"):
        assert (out / fig).stat().st_size > 10_000
    summary = (out / "summary.md").read_text()
    assert "(dry run on CPU)" in summary and "10 of 10 configurations measured" in summary
    assert json.loads((out / "environment.json").read_text())["accelerator"] == "cpu"


def test_usage_errors_exit_2(tmp_path):
    p = run("--out", str(tmp_path / "x"), timeout=60)
    assert p.returncode == 2 and "usage:" in p.stderr
    p = run("--data-bin", str(tmp_path), timeout=60)
    assert p.returncode == 2 and "no manifest.json" in p.stderr


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_without_a_gpu_the_device_check_refuses(data_bin, tmp_path):
    env = {k: v for k, v in dist_env().items() if k != "DS_ACCELERATOR"}
    p = run("--data-bin", str(data_bin), "--out", str(tmp_path / "x"), timeout=300, env=env)
    assert p.returncode == 1 and "no usable CUDA accelerator" in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "x" / "bench.jsonl").exists()


@pytest.mark.slow
def test_a_spent_budget_skips_and_says_so(data_bin, tmp_path):
    """Checks stop at half of --budget-s (1 s here: less than the start-up takes, so nothing runs),
    benchmarks at the budget less the report's share; the
    summary names what was not measured and the exit status is 1."""
    out = tmp_path / "check"
    p = run("--data-bin", str(data_bin), "--out", str(out), "--dry-run", "--budget-s", "2", timeout=300)
    assert p.returncode == 1, p.stderr[-2000:]
    [c] = [json.loads(l) for l in (out / "checks.jsonl").read_text().splitlines()]
    assert c["check"].endswith("(skipped: budget)") and c["ok"] is False
    summary = (out / "summary.md").read_text()
    assert "0 of 10 configurations measured" in summary and "test/ZeRO-3/K=2/naive" in summary
    assert not (out / "bench.jsonl").exists()
