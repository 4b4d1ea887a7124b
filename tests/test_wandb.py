"""train.wandb: what TensorBoard gets also goes to Weights & Biases (offline mode: files in RUN/wandb)."""

from __future__ import annotations

import json

import pytest

from conftest import run_ranks, train_args

pytestmark = pytest.mark.distributed


def test_wandb_offline_logs_the_tensorboard_scalars(data_bin, tmp_path):
    out = tmp_path / "run"
    run_ranks(1, train_args(data_bin, out, "zero2.json", "train.max_steps=4", "train.valid_interval=2",
                            "train.valid_max_sentences=8", "train.wandb.project=massive-mt-test",
                            "train.wandb.mode=offline"))
    start = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert start["world_size"] == 1
    [log] = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    history, runs = {}, []
    for rec in wandb_records(log):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
            history.setdefault(items.get("_step", rec.history.step.num), {}).update(items)
        elif kind == "run":
            runs.append(rec.run)
    assert runs and runs[0].project == "massive-mt-test" and runs[0].display_name == "run"
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r for r in metrics if "loss" in r}
    assert sorted(logged) == [2, 4] and {2, 4} <= set(history)
    for step, r in logged.items():                               # what metrics.jsonl (and TensorBoard) got
        assert history[step]["train/loss"] == r["loss"] and history[step]["lr"] == r["lr"]
    valid = [r for r in metrics if r.get("event") == "valid"]
    assert len(valid) == 2 and all(abs(history[r["step"]]["valid/nll"] - r["valid_nll"]) < 1e-4 for r in valid)


def wandb_records(path):
    """The records of an offline W&B run file: a 7-byte header, then LevelDB log blocks of 32 KiB
    (per record: crc32c 4 bytes, length 2, type 1: full 1, first 2, middle 3, last 4) of protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:                                            # block trailer
            pos += room
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        pending += chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(pending)
            pending = b""
            yield rec
