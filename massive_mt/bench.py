"""Step-time benchmark of the training step with and without sharded reconciliation.

One process per rank (torchrun / deepspeed / srun), e.g. on CPU:
    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 -m massive_mt.bench --data-bin data-bin \\
        --ds-config ds_configs/zero2.json --tasks-per-step 4 8 --methods plain sum gradvac:all_layer

For every K and method, the same Trainer as in training runs `--warmup` untimed steps, then
`--steps` timed ones (a barrier before and after each), on the same data (the step plan is a
function of the seed). Rank 0 appends one JSON line per configuration to `--out`: median and
quartiles of the step time, target tokens/s, the reconciler's time split (capture, Gram,
all-reduce, reconcile, write-back), the snapshot bytes per rank against K*P/N*4, and the
machine, versions and configuration. Ratios against `plain` are taken between lines of the
same run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path


def run_config(cfg, ds, rank, world, steps, warmup) -> dict:
    import deepspeed.comm as dist

    from .train import Trainer

    trainer = Trainer(cfg, ds, rank, world)
    for _ in range(warmup):
        trainer.train_step()
    rec = trainer.reconciler
    if rec is not None:
        rec.timings = {k: 0.0 for k in rec.timings}
    trainer.meter.reset()
    times = []
    for _ in range(steps):
        dist.barrier()
        t0 = time.perf_counter()
        trainer.train_step()
        dist.barrier()
        times.append(time.perf_counter() - t0)
    summary = trainer.meter.reduce(lambda t: (dist.all_reduce(t), t)[1])
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    out = {"step_s_median": statistics.median(times), "step_s_q1": q[0], "step_s_q3": q[2],
           "step_s": times, "target_tokens_per_s": summary["target_tokens"] / sum(times),
           "parameters": trainer.n_params, "wrapper": type(trainer.engine.optimizer).__name__,
           "zero_stage": trainer.engine.zero_optimization_stage()}
    if rec is not None:
        out["reconcile_s_per_step"] = {k: v / steps for k, v in rec.timings.items()}
        out["snapshot_bytes"] = rec.snapshot_bytes
        out["local_numel"] = rec.shards.numel
        out["kpn_bytes"] = cfg.sampling.tasks_per_step * trainer.n_params / world * 4
        out["n_groups"] = len(rec.groups)
        out["allreduce_bytes"] = rec.allreduce_bytes          # the step's one collective, as sent
    del trainer
    import gc
    gc.collect()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="massive_mt.bench", description=__doc__.split("\n")[0])
    p.add_argument("--data-bin", required=True)
    p.add_argument("--ds-config", default=str(Path(__file__).resolve().parents[1] / "ds_configs" / "zero2.json"))
    p.add_argument("--preset", default="tiny")
    p.add_argument("--tasks-per-step", type=int, nargs="+", default=[4, 8])
    p.add_argument("--methods", nargs="+", default=["plain", "sum", "pcgrad:all_layer", "gradvac:whole_model",
                                                    "gradvac:all_layer", "cats"])
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default="bench.jsonl")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None)
    p.add_argument("overrides", nargs="*")
    a = p.parse_intermixed_args(argv)

    import deepspeed
    import torch

    from .config import load_config, load_ds_config, resolve_ds_config
    from .distributed import init_distributed

    rank, world = init_distributed()
    ds_raw = load_ds_config(a.ds_config)
    for K in a.tasks_per_step:
        for spec in a.methods:
            method, _, gran = spec.partition(":")
            over = [f"data.data_bin={a.data_bin}", f"model.preset={a.preset}", f"sampling.tasks_per_step={K}",
                    f"sampling.max_tokens={a.max_tokens}", "train.tensorboard=false", "model.dropout=0.0",
                    "train.output_dir=/tmp/massive_mt_bench", f"reconcile.method={method}",
                    *([f"reconcile.granularity={gran}"] if gran else []), *a.overrides]
            cfg = load_config(None, over)
            ds = resolve_ds_config(ds_raw, cfg, world, where=a.ds_config)
            res = run_config(cfg, ds, rank, world, a.steps, a.warmup)
            if rank == 0:
                rec = {"method": spec, "K": K, "world_size": world, "preset": a.preset, "ds_config": a.ds_config,
                       "max_tokens": a.max_tokens, "steps": a.steps, "warmup": a.warmup,
                       "machine": {"node": platform.node(), "cpu_count": os.cpu_count(),
                                   "processor": platform.processor() or platform.machine(),
                                   "accelerator": deepspeed.get_accelerator().device_name(),
                                   "omp_threads": torch.get_num_threads()},
                       "versions": {"torch": torch.__version__, "deepspeed": deepspeed.__version__,
                                    "python": platform.python_version()}, **res}
                with open(a.out, "a", encoding="utf-8") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"K={K} {spec:22s} step {res['step_s_median']:.3f}s "
                      f"[{res['step_s_q1']:.3f}, {res['step_s_q3']:.3f}]", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
