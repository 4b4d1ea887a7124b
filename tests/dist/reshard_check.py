"""Run by tests/test_reshard.py with N ranks: a checkpoint resumed on another layout.

`save`: the real Trainer trains train.max_steps steps (saving at the end), then rank 0 writes REF:
the consolidated fp32 master weights and Adam moments (exp_avg, exp_avg_sq) per parameter, the
reconciler's, the sampler's and the non-finite counters' state.
`load`: a Trainer of this run's layout (N ranks, DS_CONFIG) resumes the newest checkpoint (converted
when the layout differs), the same quantities are consolidated and compared with REF bit for bit,
then training continues to train.max_steps (its losses must be finite).

usage: reshard_check.py save|load DS_CONFIG REF -- OVERRIDES...
"""
import math
import sys

import torch

import deepspeed
import deepspeed.comm as dist

from massive_mt.engine.config import load_config, load_ds_config, resolve_ds_config
from massive_mt.engine.distributed import init_distributed
from massive_mt.train import Trainer

from common import finish, run_rank     # tests/dist/common.py (the script's folder)

MOMENTS = ("exp_avg", "exp_avg_sq")


def consolidated(engine) -> dict:
    """Collective: {param name: [fp32 master, exp_avg, exp_avg_sq]} as full CPU tensors."""
    out = {}
    for name, p in engine.module.named_parameters():
        out[name] = [deepspeed.utils.safe_get_full_fp32_param(p).float().cpu().clone()] + \
                    [deepspeed.utils.safe_get_full_optimizer_state(p, k).float().cpu().clone() for k in MOMENTS]
    return out


def same(a, b) -> bool:
    """Exact equality through dicts, lists and tensors."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and \
            torch.equal(a.cpu(), b.cpu())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def snapshot(trainer: Trainer) -> dict:
    return {"params": consolidated(trainer.engine),
            "reconciler": trainer.reconciler.state_dict() if trainer.reconciler is not None else None,
            "sampler": trainer.sampler.state_dict(), "nonfinite": trainer.nonfinite.state_dict(),
            "lr": trainer.scheduler.get_last_lr()}


def main():
    sep = sys.argv.index("--")
    phase, ds_path, ref_path, overrides = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[sep + 1:]
    rank, world = init_distributed()
    cfg = load_config(None, overrides)
    trainer = Trainer(cfg, resolve_ds_config(load_ds_config(ds_path), cfg, world), rank, world)
    e = trainer.engine
    result = {"world_size": dist.get_world_size(), "zero_stage": e.zero_optimization_stage(),
              "bf16": e.bfloat16_enabled(), "micro_batches_per_task": trainer.sampler.micro_batches_per_task,
              "gradient_accumulation_steps": e.gradient_accumulation_steps()}
    if phase == "save":
        trainer.fit()
        snap = snapshot(trainer)
        if rank == 0:
            torch.save(snap, ref_path)
        result.update(step=trainer.step, nonfinite=snap["nonfinite"])
    else:
        trainer.maybe_resume()
        snap, ref = snapshot(trainer), torch.load(ref_path, weights_only=False)
        params = {name: [same(a, b) for a, b in zip(ref["params"][name], got)] for name, got in snap["params"].items()}
        result.update(
            step=trainer.step, params_match=set(params) == set(ref["params"]),
            fp32_equal=all(v[0] for v in params.values()),
            moments_equal=all(all(v[1:]) for v in params.values()),
            unequal=[name for name, v in params.items() if not all(v)][:5],
            reconciler_equal=same(snap["reconciler"], ref["reconciler"]),
            sampler_equal={k: snap["sampler"][k] == ref["sampler"][k] for k in ("step", "epoch", "cursor")},
            nonfinite=snap["nonfinite"], nonfinite_equal=snap["nonfinite"] == ref["nonfinite"],
            lr_equal=snap["lr"] == ref["lr"], reshard_note=trainer.reshard_note)
        trainer.resume_from = None                    # resumed above: fit() continues from here
        start = trainer.step
        last = trainer.fit()
        result.update(trained=trainer.step - start, final_loss=last.get("loss"),
                      finite=last.get("loss") is not None and math.isfinite(last["loss"]))
    dist.barrier()
    finish(result, rank)


if __name__ == "__main__":
    run_rank(main)
