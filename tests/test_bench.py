"""The benchmark machinery: `massive-mt bench` on 2 CPU ranks for a test-size model, its accounting,
and `massive-mt bench-report`. No timing thresholds: times are only checked to exist."""
import json
import subprocess
import sys

import pytest

from conftest import REPO, TEST_LANGS, dist_env, run_ranks
from massive_mt.experiments.bench import parse_method
from massive_mt.experiments.bench_report import load, summarise
from massive_mt.errors import DataError

METHODS = ["plain", "bare", "gradvac:all_layer", "cats", "naive"]
KS = [2, 3]


@pytest.fixture(scope="module")
def bench_run(data_bin, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.jsonl"
    run_ranks(2, ["-m", "massive_mt.experiments.bench", "--data-bin", str(data_bin), f"data.langs={json.dumps(TEST_LANGS)}",
                  "data.max_len=48", "reconcile.ema_rate=0.5", "--preset", "test", "--max-tokens", "256",
                  "--steps", "3", "--warmup", "1", "--tasks-per-step", *map(str, KS), "--methods", *METHODS,
                  "--out", str(out)])
    return out, [json.loads(line) for line in out.read_text().splitlines()]


def by(records, K, method):
    [r] = [r for r in records if r["K"] == K and r["method"] == method]
    return r


@pytest.mark.distributed
def test_bench_runs_every_configuration_on_two_ranks(bench_run):
    _, records = bench_run
    assert [(r["K"], r["method"]) for r in records] == [(K, m) for K in KS for m in METHODS]
    for r in records:
        assert r["world_size"] == 2 and r["zero_stage"] == 2 and r["wrapper"] == "DeepSpeedZeroOptimizer"
        assert r["runner"] == parse_method(r["method"])[0] and r["memory"]["measure"] == "peak_rss"
        assert len(r["step_s"]) == 3 and r["warmup"] == 1 and all(t > 0 for t in r["step_s"])
        assert r["target_tokens"] > 0 and r["target_tokens_per_s"] > 0
        assert len(r["memory"]["peak_bytes"]) == 2 and min(r["memory"]["peak_bytes"]) > 0
        assert r["versions"]["deepspeed"] and r["machine"]["accelerator"] == "cpu"
        assert len({r["run_id"] for r in records}) == 1
    for K in KS:
        # the same data in every configuration: the bare loop sees exactly the trainer's tokens
        assert len({r["target_tokens"] for r in records if r["K"] == K}) == 1


@pytest.mark.distributed
def test_bench_accounting(bench_run):
    _, records = bench_run
    for K in KS:
        plain, bare, ours, cats, naive = (by(records, K, m) for m in METHODS)
        n, P = ours["local_numel"], ours["parameters"]
        # snapshot memory: K partitions of P/N values (plus ZeRO's alignment padding), fp32
        assert ours["snapshot_bytes"] == cats["snapshot_bytes"] == K * n * 4
        assert 0 <= 2 * n - P < 1024 and ours["kpn_bytes"] == K * P / 2 * 4
        # the naive baseline keeps K full gradients: N times ours, delivered by its all-gathers
        assert naive["snapshot_bytes"] == naive["gather_bytes"] == 2 * ours["snapshot_bytes"]
        # the statistics all-reduce: n_groups * K^2 Gram values + 2K loss statistics, fp64
        for r in (ours, cats):
            assert r["allreduce_bytes"] == (r["n_groups"] * K * K + 2 * K) * 8
        assert naive["allreduce_bytes"] == 0
        # measured by DeepSpeed's comms logger: the only extra traffic of a reconciling step over
        # plain ZeRO-2 is that one all-reduce, less plain's non-finite check (K + 1 int32 flags,
        # which a reconciling step reads from its Gram); the bare loop lacks both plain's check and
        # the trainer's 8-byte agreement on stop signals and a lost launcher (two int32 flags)
        flags = (K + 1) * 4
        assert ours["comm_bytes_per_step"] - plain["comm_bytes_per_step"] == ours["allreduce_bytes"] - flags
        assert cats["comm_bytes_per_step"] - plain["comm_bytes_per_step"] == cats["allreduce_bytes"] - flags
        assert plain["comm_bytes_per_step"] - bare["comm_bytes_per_step"] == 8 + flags
        extra = naive["comm_per_step"]["all_gather_into_tensor"]["calls"] - \
            plain["comm_per_step"]["all_gather_into_tensor"]["calls"]
        assert extra == K
        # the naive baseline reconciles to the same weights (same gradients, same reconciler)
        w_ours, w_naive = ours["weights_last"], naive["weights_last"]
        assert len(w_ours) == ours["n_groups"] and len(w_ours[0]) == K
        assert any(abs(w - 1.0) > 1e-4 for row in w_ours for w in row), "no correction fired: a weak check"
        assert max(abs(a - b) for ra, rb in zip(w_ours, w_naive) for a, b in zip(ra, rb)) <= 1e-6


@pytest.mark.distributed
def test_bench_report_tables_and_figures(bench_run, tmp_path):
    path, records = bench_run
    rows = summarise(load([path]))
    assert len(rows) == len(records)
    for r in rows:
        plain = next(x for x in rows if x["K"] == r["K"] and x["method"] == "plain")
        assert r["vs_plain"] == pytest.approx(r["step_s"] / plain["step_s"]) and r["n_steps"] == 3
    p = subprocess.run([sys.executable, "-m", "massive_mt.cli", "bench-report", str(path), "--out", str(tmp_path / "rep")],
                       env=dist_env(), capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    text = (tmp_path / "rep" / "report.md").read_text()
    for K in KS:
        assert f"| test | 2 | 2 | {K} | naive |" in text and f"| test | 2 | 2 | {K} | cats |" in text
    assert "plain / bare" in text
    for fig in ("overhead_vs_k.png", "memory_vs_n.png", "step_time_vs_n.png"):
        assert (tmp_path / "rep" / fig).stat().st_size > 10_000


def test_report_reads_records_from_before_the_runner_was_named():
    """docs/benchmarks/cpu-2core/bench.jsonl was written when the runner and the memory measure were
    both called 'kind'."""
    rows = summarise(load([REPO / "docs" / "benchmarks" / "cpu-2core" / "bench.jsonl"]))
    assert {r["runner"] for r in rows} == {"trainer", "bare", "naive"}
    assert {r["memory_measure"] for r in rows} == {"peak_rss"}


def test_parse_method():
    assert parse_method("plain") == ("trainer", ["reconcile.method=plain"])
    assert parse_method("bare")[0] == "bare"
    assert parse_method("gradvac:whole_model") == ("trainer", ["reconcile.method=gradvac",
                                                              "reconcile.granularity=whole_model"])
    assert parse_method("naive") == ("naive", ["reconcile.method=gradvac", "reconcile.granularity=all_layer"])
    with pytest.raises(ValueError, match="overrides go before --methods"):
        parse_method("data.max_len=64")
    with pytest.raises(ValueError, match="takes no granularity"):
        parse_method("plain:all_layer")


@pytest.mark.slow
def test_report_names_file_and_line_of_bad_input(tmp_path):
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"run_id": "x"}\n')
    with pytest.raises(DataError, match=r"b.jsonl:1: not a massive-mt bench record \(missing method"):
        load([bad])
    bad.write_text("\n{oops\n")
    with pytest.raises(DataError, match=r"b.jsonl:2: not valid JSON"):
        load([bad])
    p = subprocess.run([sys.executable, "-m", "massive_mt.cli", "bench-report", str(bad), "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 2 and "b.jsonl:2" in p.stderr
