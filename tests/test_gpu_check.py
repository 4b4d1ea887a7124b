"""scripts/gpu_check.sh, the device check: its --dry-run on CPU end to end (the data-bin built from the
wheelhouse's corpus wheels, every check, the benchmark, the three files), the offline install it
runs when a module is missing, and its refusals."""
import json
import os
import shutil
import subprocess
import sys
import tarfile
import warnings

import pytest
import torch

from conftest import REPO, TEST_WHEEL, dist_env

SCRIPT = str(REPO / "scripts" / "gpu_check.sh")
METHODS = ["plain", "gradvac:all_layer", "cats", "naive", "bare"]
FILES = ["gpu_check.json", "gpu_check.md", "gpu_check_logs.tar.gz"]
STAGES = ["zero1_bf16_gpu.json", "zero2_bf16_gpu.json", "zero3_bf16_gpu.json"]


def run(*args, timeout=900, env=None):
    return subprocess.run(["bash", SCRIPT, *args], env=env or dist_env(), cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def archive(out) -> dict:
    """{member name: text} of the log archive's files."""
    with tarfile.open(out / "gpu_check_logs.tar.gz") as t:
        return {m.name: t.extractfile(m).read().decode(errors="replace") for m in t.getmembers() if m.isfile()}


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory):
    """A wheelhouse as scripts/wheelhouse.sh lays it out, holding the default corpus's allauth wheel
    (the dry run builds its data-bin from that one pinned wheel) in corpus/wheels."""
    from massive_mt.data.wheels import default_cache_dir, download_wheels

    wh = tmp_path_factory.mktemp("wheelhouse")
    (wh / "corpus" / "wheels").mkdir(parents=True)
    [wheel] = download_wheels([TEST_WHEEL], default_cache_dir())
    shutil.copy(wheel, wh / "corpus" / "wheels")
    return wh


@pytest.mark.distributed
def test_dry_run_builds_its_data_bin_checks_benchmarks_and_writes_three_files(wheelhouse, tmp_path):
    out = tmp_path / "check"
    p = run("--wheelhouse", str(wheelhouse), "--out", str(out), "--dry-run")
    assert p.returncode == 0, p.stderr[-4000:]
    assert sorted(os.listdir(out)) == sorted(FILES)
    s = json.loads((out / "gpu_check.json").read_text())
    assert s["passed"] and s["dry_run"] and s["budget_s"] == 600 and s["environment"]["accelerator"] == "cpu"
    assert s["environment"]["modules_imported"] > 50                    # every massive_mt module, imported first
    checks = {c["check"]: c for c in s["checks"]}
    assert list(checks) == ["data", "equivalence", "variants", "pipeline"] and all(c["ok"] for c in checks.values())
    assert checks["data"]["note"] == "built: de,fr,ru,ja, vocabulary 4000" and checks["data"]["seconds"] > 0
    assert all(0 < c["seconds"] <= c["cap_s"] for n, c in checks.items() if n != "data")

    eq = checks["equivalence"]["result"]
    assert eq["world_size"] == 1 and sorted(ds.split("/")[-1] for ds in eq["configs"]) == STAGES
    for c in eq["configs"].values():
        assert [s.split("+")[0] for s in c["methods"]] == ["plain", "gradvac:all_layer", "cats"]
        assert all(m["rel_diff"] <= 2e-2 and m["moved"] > 1e-3 for m in c["methods"].values()), c
        cats = next(m for spec, m in c["methods"].items() if spec.startswith("cats"))
        assert cats["ranks_agree"] and cats["meta_steps"] == cats["ref_meta_steps"] == 2 and cats["alpha_rel_diff"] <= 2e-2
    v = checks["variants"]["result"]["variants"]
    assert v["model.activation_checkpointing=true"]["checkpointed_layers"] == 4 and v["base"]["checkpointed_layers"] == 0
    assert v["model.attn_implementation=eager"]["attn_implementation"] == "eager" and v["base"]["attn_implementation"] == "sdpa"
    assert all(len(x["losses"]) == 2 and x["rel_diff"] <= 2e-2 and x["stage"] == 3 for x in v.values())
    pipe = checks["pipeline"]["result"]
    assert pipe["starts"] == [0, 2] and {"step2", "step4"} <= set(pipe["checkpoints"]) and "config.json" in pipe["export"]
    assert sorted(pipe["evaluation"]) == ["en-de", "en-fr", "en-ja", "en-ru"] and pipe["eval_dtype"] == "fp32"
    assert all(e["n_sentences"] == 4 for e in pipe["evaluation"].values()), pipe      # --max-sentences 4

    b = s["benchmark"]
    assert b["passed"] and b["rounds"] == 1 and list(b["methods"]) == METHODS and not b["missing"]
    assert b["configuration"]["preset"] == "test" and b["configuration"]["K"] == 2
    for m in b["methods"].values():
        assert m["step_s_median"] > 0 and m["peak_memory_bytes"] > 0 and m["model_tflops_per_rank"] > 0
        assert m["mfu"] is None and m["host_syncs_per_step"] is None and m["device_synchronize_per_step"] is None
    report = (out / "gpu_check.md").read_text()
    assert report.startswith("# Device check (dry run on CPU): passed")
    for part in ("| equivalence | yes |", "| zero3_bf16_gpu.json | cats", "| model.attn_implementation=eager |",
                 "| naive |", "| explicit synchronize per step |", "## Throughput per rank and model FLOPs utilisation"):
        assert part in report, part
    files = archive(out)
    for name in ("logs/equivalence.log", "logs/variants.log", "logs/pipeline.log", "logs/bench.log",
                 "logs/build-corpus.log", "logs/prepare.log", "results/bench-report/report.md"):
        assert name in files, sorted(files)
    records = [json.loads(l) for l in files["results/bench.jsonl"].splitlines()]
    assert sorted(r["method"] for r in records) == sorted(METHODS)
    assert all(r["world_size"] == 1 and r["host_syncs_per_step"] is r["device_synchronize_per_step"] is None
               for r in records)                                         # no CUDA to count on a CPU


@pytest.mark.slow
def test_wheelhouse_installs_what_is_missing_with_the_index_off(wheelhouse, tmp_path):
    """A module that does not import (a shadow sacrebleu raising ModuleNotFoundError) makes the check
    run scripts/setup.sh from the wheelhouse: the pip it runs (a stub on PYTHONPATH that records its
    arguments) gets --no-index --find-links WHEELHOUSE; the module still missing afterwards is named
    and nothing else runs."""
    stub = tmp_path / "stub"
    (stub / "pip").mkdir(parents=True)
    (stub / "pip" / "__init__.py").write_text("")
    (stub / "pip" / "__main__.py").write_text(
        "import os, sys\nopen(os.environ['STUB_PIP_LOG'], 'a').write(' '.join(sys.argv[1:]) + '\\n')\n")
    (stub / "sacrebleu.py").write_text("raise ModuleNotFoundError(\"No module named 'sacrebleu'\", name='sacrebleu')\n")
    log = tmp_path / "pip.log"
    env = dict(dist_env(), PYTHONPATH=f"{stub}{os.pathsep}{REPO}", STUB_PIP_LOG=str(log), PYTHON=sys.executable)
    out = tmp_path / "check"
    p = run("--wheelhouse", str(wheelhouse), "--out", str(out), "--dry-run", env=env, timeout=300)
    assert p.returncode == 1, p.stderr[-3000:]
    assert "missing: sacrebleu (importing sacrebleu: ModuleNotFoundError" in p.stderr
    assert "a module the check uses does not import: sacrebleu" in p.stderr
    [call] = log.read_text().splitlines()
    args = call.split()
    assert args[0] == "install" and args[-2:] == ["-e", ".[test]"], call
    assert "--no-index" in args and args[args.index("--find-links") + 1] == str(wheelhouse.resolve()), call
    s = json.loads((out / "gpu_check.json").read_text())
    assert not s["passed"] and s["stopped"].startswith("a module the check uses does not import: sacrebleu")
    assert sorted(os.listdir(out)) == sorted(FILES)
    assert "package index disabled" in archive(out)["logs/setup.log"]


def test_a_budget_without_room_for_the_checks_and_the_benchmark_is_refused(tmp_path):
    p = run("--out", str(tmp_path / "x"), "--dry-run", "--budget-s", "120", timeout=60)
    assert p.returncode == 2 and "--budget-s 120 is too small" in p.stderr and "need at least 185 s" in p.stderr, p.stderr
    p = run("--out", str(tmp_path / "x"), "--budget-s", "300", timeout=60)
    assert p.returncode == 2 and "need at least 310 s" in p.stderr, p.stderr      # the GPU run's floors
    assert not any((tmp_path / "x").iterdir())


@pytest.mark.parametrize("args, message", [
    (["--frobnicate"], "usage:"),
    (["--out"], "--out needs a value"),
    (["--budget-s", "ten"], "--budget-s ten: expected a whole number of seconds"),
    (["--wheelhouse", "/nonexistent/wheels"], "--wheelhouse /nonexistent/wheels: no such directory"),
    (["--data-bin", "."], "give --data-bin and --corpus together"),
    (["--data-bin", ".", "--corpus", "."], "--data-bin .: no manifest.json"),
])
def test_usage_errors_exit_2(tmp_path, args, message):
    p = run(*args, "--out", str(tmp_path / "x"), timeout=60) if args != ["--out"] else run(*args, timeout=60)
    assert p.returncode == 2 and message in p.stderr, p.stderr


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_without_a_gpu_the_device_check_refuses(data_bin, real_corpus, tmp_path):
    env = {k: v for k, v in dist_env().items() if k != "DS_ACCELERATOR"}
    out = tmp_path / "x"
    p = run("--data-bin", str(data_bin), "--corpus", str(real_corpus), "--out", str(out), timeout=300, env=env)
    assert p.returncode == 1 and "no usable CUDA accelerator" in p.stderr, p.stderr[-2000:]
    s = json.loads((out / "gpu_check.json").read_text())
    assert not s["passed"] and s["stopped"].startswith("no usable CUDA accelerator") and s["checks"] == []
    assert sorted(os.listdir(out)) == sorted(FILES)


def test_host_syncs_are_counted_over_the_timed_steps_only(monkeypatch):
    """tests/dist/bench_syncs.py: the sync-debug warnings between the peak-memory reset and the peak
    read (the timed steps) are counted, others not, explicit torch.cuda.synchronize() calls apart
    (with the debug mode off around them), and each record gets both per step; off CUDA both are
    null. CUDA's sync-debug mode and synchronize are stood in for by recording what is called."""
    monkeypatch.syspath_prepend(str(REPO / "tests" / "dist"))
    import bench_syncs
    from massive_mt.experiments import bench

    modes, sync = [], "called a synchronizing CUDA operation"
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    def synchronize(device=None):              # as if it warned like a synchronous copy, when the mode is on
        if modes[-1:] == ["warn"]:
            warnings.warn(sync)
    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)

    def run_config(cfg, ds, rank, world, runner, steps, warmup, memory):
        warnings.warn(sync)                     # warm-up: before the reset
        memory.reset()
        for _ in range(steps):
            warnings.warn(sync)
            warnings.warn(sync)
            warnings.warn("an unrelated warning")
            torch.cuda.synchronize()
        memory.peak()
        warnings.warn(sync)                     # the comms-logger step: after the peak
        return {"step_s_median": 1.0}

    def fake_bench():
        monkeypatch.setattr(bench, "run_config", run_config)
        monkeypatch.setattr(bench.PeakMemory, "reset", lambda self: None)
        monkeypatch.setattr(bench.PeakMemory, "peak", lambda self: 0)
    memory = bench.PeakMemory.__new__(bench.PeakMemory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")             # those outside the counted steps
        for cuda, host, explicit in ((True, 2.0, 1.0), (False, None, None)):
            fake_bench()
            bench_syncs.install(bench_syncs.SyncCounter(cuda))
            out = bench.run_config(None, None, 0, 1, "plain", 3, 1, memory)
            assert out == {"step_s_median": 1.0, "host_syncs_per_step": host, "device_synchronize_per_step": explicit}
    assert modes == ["warn"] + ["default", "warn"] * 3 + ["default"]
