"""Validation during training (massive_mt/engine/validation.py): per-task valid NLL in metrics.jsonl and
TensorBoard, the same training losses with and without it, the best tag kept through pruning,
early stopping by patience, and the best-so-far carried over a resume. 2 ranks, ZeRO-2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import run_ranks, train_args
from massive_mt.engine.checkpoint import tag_for

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def records(run: Path, event: str | None = None) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("event") == event] if event else [r for r in rows if "loss" in r]


def test_validation_logs_every_task_and_leaves_the_trajectory_alone(data_bin, tmp_path):
    plain, validated = tmp_path / "plain", tmp_path / "valid"
    common = ("train.max_steps=8", "sampling.micro_batches_per_task=1")
    run_ranks(2, train_args(data_bin, plain, "zero2.json", *common))
    run_ranks(2, train_args(data_bin, validated, "zero2.json", *common, "train.valid_interval=4",
                            "train.valid_max_sentences=40", "train.valid_decode=true", "train.valid_decode_sentences=6"))
    start = records(validated, "start")[0]
    assert start["world_size"] == 2
    assert [r["loss"] for r in records(plain)] == [r["loss"] for r in records(validated)]   # bit for bit
    valids = records(validated, "valid")
    assert [r["step"] for r in valids] == [4, 8]
    tasks = start["tasks"]
    for r in valids:
        assert sorted(r["valid_nll_per_task"]) == sorted(tasks)
        assert all(math.isfinite(x) and x > 0 for x in r["valid_nll_per_task"].values())
        assert r["valid_nll"] == pytest.approx(sum(r["valid_nll_per_task"].values()) / len(tasks), abs=1e-3)
        assert sorted(r["valid_bleu_per_task"]) == sorted(tasks) and r["valid_s"] > 0
        assert {"valid_nll_high", "valid_nll_low"} <= set(r)
    best = json.loads((validated / "checkpoints" / "best.json").read_text())
    assert best["metric"] == "valid_nll" and (validated / "checkpoints" / best["tag"]).is_dir()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(validated / "tensorboard")).Reload()
    tags = acc.Tags()["scalars"]
    assert "valid/nll" in tags and f"valid/nll/{tasks[0]}" in tags and "valid/seconds" in tags


def test_patience_stops_and_the_best_survives_pruning_and_resume(data_bin, tmp_path):
    out = tmp_path / "run"
    common = ("train.valid_interval=2", "train.valid_max_sentences=20", "train.save_interval=2",
              "train.keep_last=1", "train.patience=3", "train.best_min_delta=100.0")   # nothing improves by 100 nats
    run_ranks(2, train_args(data_bin, out, "zero2.json", "train.max_steps=4", *common))
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    assert (best["step"], best["tag"], best["validations_since_best"]) == (2, tag_for(2), 1)
    res = run_ranks(2, train_args(data_bin, out, "zero2.json", "train.max_steps=40", *common))
    assert res.returncode == 0
    stop = records(out, "early_stop")
    assert len(stop) == 1 and stop[0]["step"] == 8 and "3 validations without improvement" in stop[0]["reason"]
    assert json.loads((out / "checkpoints" / "best.json").read_text())["validations_since_best"] == 3
    tags = sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())
    assert best["tag"] in tags and len(tags) == 2                  # keep_last=1 plus the best
    assert (out / "model" / "config.json").is_file()               # an early stop exports like a finished run
    assert records(out, "start")[-1]["resumed_from_step"] == 4
    meta = json.loads((out / "model" / "massive_mt.json").read_text())
    assert meta["early_stopped"] is True and meta["best"]["tag"] == best["tag"] and meta["steps"] == 8
    from massive_mt.cli import main
    assert main(["export", str(out), "--step", "best", "--out", str(tmp_path / "best")]) == 0
    exported = json.loads((tmp_path / "best" / "massive_mt.json").read_text())["checkpoint"]
    assert exported["select"] == "best" and exported["steps"] == [best["step"]]
