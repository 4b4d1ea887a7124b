"""Run by tests with N ranks: the task-grouped training step vs plain DeepSpeed gradient accumulation.

Two engines from the same initialisation see the same micro-batches in the same order:
A through `Trainer.train_step` (one accumulation boundary set by the trainer), B through the
textbook DeepSpeed loop (`engine.backward(loss); engine.step()` per micro-batch, DeepSpeed's
own micro-step counter deciding the boundary). Prints one JSON line with the comparison.
"""
import sys

import torch

import deepspeed.comm as dist

from massive_mt.engine.config import load_config, load_ds_config, resolve_ds_config
from massive_mt.engine.distributed import init_distributed
from massive_mt.engine.optim import label_smoothed_loss
from massive_mt.train import Trainer

from common import finish, full_params, run_rank     # tests/dist/common.py (the script's folder)


def compare(ds_path, steps, cfg, rank, world) -> dict:
    ds = resolve_ds_config(load_ds_config(ds_path), cfg, world)
    a = Trainer(cfg, ds, rank, world)
    b = Trainer(cfg, ds, rank, world)
    assert torch.equal(full_params(a.engine), full_params(b.engine))
    start = full_params(a.engine)
    for step in range(steps):
        a.train_step()
        for task, micro_batches in b.sampler.plan(step):
            for indices in micro_batches:
                batch = b.datasets[task].collate(indices)
                out = b.engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               decoder_input_ids=batch["decoder_input_ids"])
                loss, _, _ = label_smoothed_loss(out.logits, batch["labels"], b.pad_id, cfg.optim.label_smoothing)
                b.engine.backward(loss)
                b.engine.step()
    pa, pb = full_params(a.engine), full_params(b.engine)
    return {"world_size": dist.get_world_size(), "rel_diff": float((pa - pb).abs().max() / pb.abs().max()),
            "moved": float((pa - start).abs().max()), "steps_a": a.engine.global_steps,
            "steps_b": b.engine.global_steps, "stage": a.engine.zero_optimization_stage(),
            "wrapper": type(a.engine.optimizer).__name__}


def main():
    """argv: DS_CONFIG[,DS_CONFIG...] STEPS OVERRIDES...; several ds_configs run in turn in one launch
    and report {"world_size", "configs": {path: result}}."""
    ds_paths, steps, overrides = sys.argv[1].split(","), int(sys.argv[2]), sys.argv[3:]
    cfg = load_config(None, overrides)
    rank, world = init_distributed()
    results = {path: compare(path, steps, cfg, rank, world) for path in ds_paths}
    finish(results[ds_paths[0]] if len(ds_paths) == 1 else {"world_size": world, "configs": results}, rank)


if __name__ == "__main__":
    run_rank(main)
