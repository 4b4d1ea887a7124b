"""Data-parallel evaluation: 2 ranks give exactly the hypotheses and scores of 1 process."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, dist_env, run_ranks

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _args(model, corpus, out):
    # small token-bounded batches: each task is cut into several, dealt across the ranks
    return ["--model", str(model), "--corpus", str(corpus), "--max-sentences", "12", "--beam", "2",
            "--max-new-tokens", "16", "--batch-size", "4", "--max-tokens", "64", "--no-progress", "--out", str(out)]


def _report(out):
    report = json.loads((out / "results.json").read_text())
    speed = report.pop("speed")
    hyps = {p.name: p.read_text(encoding="utf-8") for p in sorted(out.glob("hyp.*.txt"))}
    return report, speed, hyps


@pytest.fixture()
def chatty_model(trained_run, tmp_path):
    """The trained model directory with seeded random weights: the 40-step model ends every hypothesis
    at once, which would make equal hypotheses prove nothing; random weights give long, varied ones."""
    import shutil

    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    model = Path(shutil.copytree(trained_run / "model", tmp_path / "model"))
    config = M2M100Config.from_pretrained(model)
    config.init_std = 0.5                                   # large enough for the input to matter
    torch.manual_seed(0)
    M2M100ForConditionalGeneration(config).save_pretrained(model)
    return model


def test_two_ranks_match_one_process(chatty_model, real_corpus, tmp_path):
    model = chatty_model
    one = subprocess.run([sys.executable, "-m", "massive_mt.evaluation.evaluate", *_args(model, real_corpus, tmp_path / "one")],
                         env=dist_env(), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert one.returncode == 0, one.stderr[-4000:]
    two = run_ranks(2, ["-m", "massive_mt.evaluation.evaluate", *_args(model, real_corpus, tmp_path / "two")])
    assert "rank 1 of 2 joined" in two.stderr
    # the same through the command line, which starts its ranks itself
    cli = subprocess.run([sys.executable, "-m", "massive_mt.cli", "evaluate", "--nproc", "2",
                          *_args(model, real_corpus, tmp_path / "cli")],
                         env=dist_env(), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert cli.returncode == 0, cli.stderr[-4000:]
    assert "rank 1 of 2 joined" in cli.stderr

    report_1, speed_1, hyps_1 = _report(tmp_path / "one")
    n_tasks = len(json.loads((model / "massive_mt.json").read_text())["tasks"])
    assert len(report_1["tasks"]) == n_tasks and len(hyps_1) == n_tasks
    n = sum(r["n_sentences"] for r in report_1["tasks"])
    assert n > 8 * n_tasks and all(r["n_sentences"] <= 12 for r in report_1["tasks"])
    lines = [h for text in hyps_1.values() for h in text.splitlines()]
    assert len(lines) == n and sum(bool(h.strip()) for h in lines) > n / 2    # real, varied hypotheses
    assert len(set(lines)) > 3 * n / 4 and all(r["chrf"] > 0 for r in report_1["tasks"])
    assert speed_1["world_size"] == 1 and speed_1["rank_sentences"] == [n] and speed_1["sentences"] == n
    for out in ("two", "cli"):
        report_2, speed_2, hyps_2 = _report(tmp_path / out)
        assert speed_2["world_size"] == 2                      # it ran on 2 ranks, both translating
        assert len(speed_2["rank_sentences"]) == 2 and min(speed_2["rank_sentences"]) > 0
        assert sum(speed_2["rank_sentences"]) == speed_2["sentences"] == n
        assert hyps_2 == hyps_1                                # every hypothesis, in the original order
        assert report_2 == report_1                            # scores, signatures, test-set identity
    assert (tmp_path / "one" / "results.md").read_text() == (tmp_path / "two" / "results.md").read_text()
