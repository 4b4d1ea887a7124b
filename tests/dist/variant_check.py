"""Run by scripts/gpu_check.sh: the same training under model variants that must not change it
(activation checkpointing on or off; the `sdpa` or `eager` attention kernel).

The real Trainer trains STEPS steps from the same seed on the same data under DS_CONFIG, once per
variant; the first variant is the baseline. Prints `RESULT {json}`: per variant the loss of every
step (all-reduced over ranks), the final fp32 parameters' largest difference from the baseline's
relative to the baseline's largest value (`rel_diff`), the largest relative difference of a
step's loss (`loss_rel_diff`), how far the parameters moved, the layers running under activation
checkpointing and the attention kernel the model runs with.

usage: variant_check.py DS_CONFIG STEPS VARIANT [VARIANT...] -- OVERRIDES...
VARIANT: `base`, or overrides joined by commas, e.g. `model.activation_checkpointing=true`
"""
import sys

import deepspeed.comm as dist

from common import finish, full_params, run_rank     # tests/dist/common.py (the script's folder)
from massive_mt.engine.config import load_config, load_ds_config, resolve_ds_config
from massive_mt.engine.distributed import init_distributed
from massive_mt.train import Trainer


def train(ds_path: str, steps: int, overrides: list[str], rank: int, world: int):
    """Per-step losses and final full parameters of STEPS steps of the Trainer under `overrides`."""
    cfg = load_config(None, overrides)
    trainer = Trainer(cfg, resolve_ds_config(load_ds_config(ds_path), cfg, world), rank, world)
    start = full_params(trainer.engine)
    losses = []
    for _ in range(steps):
        trainer.meter.reset()
        trainer.train_step()
        losses.append(trainer.meter.reduce(lambda t: (dist.all_reduce(t), t)[1])["loss"])
    got = full_params(trainer.engine)
    module = trainer.engine.module
    info = {"losses": losses, "moved": float((got - start).abs().max()),
            "checkpointed_layers": sum(bool(getattr(m, "gradient_checkpointing", False)) for m in module.modules()),
            "attn_implementation": getattr(module.config, "_attn_implementation", None),
            "stage": trainer.engine.zero_optimization_stage(), "wrapper": type(trainer.engine.optimizer).__name__}
    trainer.writer.close()
    trainer.telemetry.close()
    trainer.engine.destroy()
    return info, got


def main():
    sep = sys.argv.index("--")
    ds_path, steps, variants, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:sep], sys.argv[sep + 1:]
    if not variants:
        raise SystemExit("variant_check.py: name at least one VARIANT")
    rank, world = init_distributed()
    results, base = {}, None
    for variant in variants:
        extra = [] if variant == "base" else variant.split(",")
        try:
            info, got = train(ds_path, steps, overrides + extra, rank, world)
        except Exception as e:
            e.add_note(f"(in the run of variant {variant} under {ds_path}, {world} rank(s))")
            raise
        if base is None:
            base = (info["losses"], got)
        info["rel_diff"] = float((got - base[1]).abs().max() / base[1].abs().max())
        info["loss_rel_diff"] = max(abs(a - b) / abs(b) for a, b in zip(info["losses"], base[0]))
        results[variant] = info
        dist.barrier()
    finish({"world_size": dist.get_world_size(), "ds_config": ds_path, "steps": steps, "variants": results}, rank)


if __name__ == "__main__":
    run_rank(main)
