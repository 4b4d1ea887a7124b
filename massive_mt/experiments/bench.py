"""Scaling benchmark: the training step with and without sharded reconciliation, against `plain`
(DeepSpeed's own accumulation in the trainer), a bare DeepSpeed loop and the naive full-gradient
approach.

One process per rank (deepspeed / torchrun / srun), e.g. on CPU:
    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 -m massive_mt.experiments.bench --data-bin data-bin \\
        --ds-config ds_configs/zero2.json --tasks-per-step 2 4 8 --methods plain bare gradvac cats naive
(`massive-mt bench ...` is the same entry point.) Then `massive-mt bench-report bench.jsonl`.

Methods (`--methods`):
  plain               the trainer without per-task capture (one accumulation boundary per step)
  bare                a bare DeepSpeed loop on the same engine and data: forward, backward, step
  sum, pcgrad[:G], gradvac[:G], cats
                      the trainer with sharded reconciliation (G: granularity, default all_layer;
                      any method registered in massive_mt/reconcile/methods.py)
  naive[:G]           GradVac on full per-task gradients gathered on every rank (for comparison
                      only, massive_mt/reconcile/naive.py)

For every repetition, K and method, a fresh trainer (same seed, same data) runs `--warmup`
untimed steps, then `--steps` timed ones with a barrier before and after each, then one more
step with DeepSpeed's comms logger on, which counts every collective's bytes (it synchronises
each operation, so that step is not timed). Rank 0 appends one JSON line per configuration to
`--out`: step times (and median / quartiles), target tokens/s, the reconciler's time split,
peak memory per rank during the timed steps (CUDA: max allocated; CPU: peak resident set size,
reset through /proc/self/clear_refs) and its increase over the memory in use before the
configuration's trainer was built (freed memory returned to the system first), snapshot bytes against K*P/N*4, bytes per collective per
step, the last step's update weights w, and the machine, versions and configuration; the model
FLOPs of the timed steps (massive_mt.engine.model.train_flops over the sentence pairs every rank
trained on) and the accelerator's dense bf16 peak (`--peak-tflops`, or from PEAK_BF16_TFLOPS by
GPU name), from which bench-report derives the model FLOPs utilisation.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

from massive_mt.errors import ConfigError, MassiveMTError, exit_code, exit_line

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_METHODS = ["plain", "bare", "sum", "pcgrad", "gradvac:whole_model", "gradvac:all_layer", "cats", "naive"]


def method_names() -> list[str]:
    """Every --methods name, in report order: the catalogue's (reconcile/catalogue.py: plain, the
    registered Gram methods, cats) and the benchmark's own two baselines, which exist only here:
    `bare` (a bare DeepSpeed loop on the same engine, after `plain`) and `naive` (GradVac on full
    per-task gradients gathered on every rank, reconcile/naive.py, last)."""
    from massive_mt.reconcile.catalogue import names

    plain, *reconciled = names()
    return [plain, "bare", *reconciled, "naive"]


# dense bf16 peak per GPU (vendor data sheets, without sparsity); the first name contained in
# torch.cuda.get_device_name() wins
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


def peak_tflops(gpu_name: Optional[str]) -> Optional[float]:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if gpu_name and k in gpu_name), None)


def parse_method(spec: str) -> tuple[str, list[str]]:
    """'gradvac:whole_model' -> ('trainer', overrides): the runner ('trainer', 'bare' or 'naive') and the
    method's experiment overrides."""
    from massive_mt.reconcile.catalogue import kind

    name, _, gran = spec.partition(":")
    if name not in method_names():
        hint = " (experiment overrides go before --methods, or after --)" if "=" in spec else ""
        raise ValueError(f"--methods: unknown method {spec!r}; known: {', '.join(method_names())}{hint}")
    if name == "bare" or (name != "naive" and kind(name) == "plain"):    # bare: a plain trainer's engine
        if gran:
            raise ValueError(f"--methods: {spec!r}: {name} takes no granularity")
        return ("bare" if name == "bare" else "trainer"), ["reconcile.method=plain"]
    over = [f"reconcile.method={'gradvac' if name == 'naive' else name}",
            f"reconcile.granularity={gran or 'all_layer'}"]
    return ("naive" if name == "naive" else "trainer"), over


class PeakMemory:
    """Peak memory of this process between `reset()` and `peak()`: CUDA max allocated, or on CPU
    the resident set's high-water mark (VmHWM, reset by writing 5 to /proc/self/clear_refs)."""

    def __init__(self, device_name: str):
        self.cuda = device_name == "cuda"
        self.measure = "cuda_max_allocated" if self.cuda else "peak_rss"

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status") as f:
            return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024

    def current(self) -> int:
        """In use now, after returning freed memory (CUDA cache, glibc heap) to the system."""
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            return torch.cuda.memory_allocated()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        return self._status("VmRSS")

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def peak(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return self._status("VmHWM")


def bare_step(trainer, step: int) -> int:
    """What a DeepSpeed user writes: forward, loss, engine.backward, engine.step per micro-batch
    (DeepSpeed steps the optimizer at its gradient_accumulation_steps boundary). Returns the
    step's target tokens on this rank. `trainer.loss` is the forward pass and the loss only."""
    engine, tokens = trainer.engine, 0
    for task, micro_batches in trainer.sampler.plan(step):
        for indices in micro_batches:
            batch = trainer.datasets[task].collate(indices)
            loss, _, _ = trainer.loss(batch)
            engine.backward(loss)
            engine.step()
            tokens += batch["n_tokens"]
    return tokens


def step_flops(trainer, sampler, steps: int) -> float:
    """Model FLOPs of this rank's micro-batches in the next `steps` steps of `sampler` (a copy of the
    trainer's, taken before the timed steps), counted without padding."""
    from massive_mt.engine.model import train_flops

    total = 0.0
    for _ in range(steps):
        for task, micro_batches in sampler.plan(sampler.step):
            ds = trainer.datasets[task]
            for indices in micro_batches:
                total += train_flops(trainer.engine.module.config, ds.sizes_src[indices], ds.sizes_tgt[indices])
    return total


def comm_per_step(run_step) -> dict:
    """{op: {"calls", "bytes"}} of one step on this rank, from DeepSpeed's comms logger (message
    sizes as it logs them: the tensor of an all-reduce, each rank's input of an all-gather)."""
    import deepspeed.comm as dist

    dist.comms_logger.reset_data()
    dist.configure(enabled=True, prof_all=True)
    try:
        run_step()
    finally:
        dist.configure(enabled=False, prof_all=False)
    out = {}
    for op, sizes in dist.comms_logger.comms_dict.items():
        calls = sum(v[0] for v in sizes.values())
        out[op] = {"calls": calls, "bytes": sum(int(size) * v[0] for size, v in sizes.items())}
    dist.comms_logger.reset_data()
    return out


def run_config(cfg, ds, rank: int, world: int, runner: str, steps: int, warmup: int, memory: PeakMemory) -> dict:
    import deepspeed.comm as dist

    from massive_mt.engine.preemption import StopSignals
    from massive_mt.train import Trainer

    start = memory.current()     # before this configuration's trainer exists
    cls = None
    if runner == "naive":
        from massive_mt.reconcile.naive import NaiveReconciler
        cls = NaiveReconciler
    trainer = Trainer(cfg, ds, rank, world, reconciler_cls=cls)
    agree = StopSignals([])      # fit() agrees on stop signals after every step: timed with the step

    def run_step():
        if runner == "bare":
            tokens = bare_step(trainer, trainer.step)
            trainer.step += 1
            return tokens
        trainer.train_step()
        agree.agreed(trainer.device)
        return 0

    for _ in range(warmup):
        run_step()
    rec = trainer.reconciler
    if rec is not None:
        rec.timings.reset()
        rec.sync_timings = True              # the split points wait for the device (GPU kernels are asynchronous)
    trainer.meter.reset()
    gc.collect()
    memory.reset()
    times, bare_tokens, sampler = [], 0, copy.deepcopy(trainer.sampler)
    for _ in range(steps):
        dist.barrier()
        t0 = time.perf_counter()
        bare_tokens += run_step()
        dist.barrier()
        times.append(time.perf_counter() - t0)
    peak = memory.peak()
    local = torch.tensor([float(bare_tokens), float(start), float(peak), step_flops(trainer, sampler, steps)],
                         dtype=torch.float64, device=trainer.device)             # NCCL gathers device tensors
    per_rank = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(per_rank, local)
    per_rank = torch.stack(per_rank).cpu()
    if runner == "bare":
        target_tokens = int(per_rank[:, 0].sum())
    else:
        target_tokens = trainer.meter.reduce(lambda t: (dist.all_reduce(t), t)[1])["target_tokens"]
    comm = comm_per_step(run_step)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    out = {"step_s_median": statistics.median(times), "step_s_q1": q[0], "step_s_q3": q[2], "step_s": times,
           "target_tokens": target_tokens, "target_tokens_per_s": target_tokens / sum(times),
           "parameters": trainer.n_params, "wrapper": type(trainer.engine.optimizer).__name__,
           "zero_stage": trainer.engine.zero_optimization_stage(),
           "memory": {"measure": memory.measure, "start_bytes": [int(x) for x in per_rank[:, 1]],
                      "peak_bytes": [int(x) for x in per_rank[:, 2]],
                      "peak_above_start": [int(x) for x in per_rank[:, 2] - per_rank[:, 1]]},
           "comm_per_step": comm,
           "comm_bytes_per_step": sum(v["bytes"] for v in comm.values()),
           "model_flops": float(per_rank[:, 3].sum())}
    if rec is not None:
        K = cfg.sampling.tasks_per_step
        out.update({"reconcile_s_per_step": rec.timings.per_step(steps),
                    "snapshot_bytes": rec.snapshot_bytes, "local_numel": rec.shards.numel,
                    "kpn_bytes": K * trainer.n_params / world * 4, "n_groups": len(rec.groups),
                    "allreduce_bytes": rec.traffic.allreduce_bytes,   # the step's one collective, as sent
                    "gather_bytes": rec.traffic.gather_bytes,
                    "weights_last": rec.last_stats.weights.tolist()})
    trainer.writer.close()
    trainer.telemetry.close()
    trainer.engine.destroy()
    del trainer, rec
    gc.collect()
    return out


def machine_info() -> dict:
    import deepspeed

    accel = deepspeed.get_accelerator()
    info = {"node": platform.node(), "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "accelerator": accel.device_name(), "omp_threads": torch.get_num_threads()}
    if accel.device_name() == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="massive-mt bench", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--data-bin", required=True)
    p.add_argument("--ds-config", default=str(REPO_ROOT / "ds_configs" / "zero2.json"))
    p.add_argument("--preset", default="tiny")
    p.add_argument("--tasks-per-step", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--steps", type=int, default=8, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    p.add_argument("--repeats", type=int, default=1, help="rounds over all configurations (interleaved)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the accelerator's dense bf16 peak per rank, for the FLOPs utilisation (default: "
                        "from the GPU name: " + ", ".join(f"{k} {v:g}" for k, v in PEAK_BF16_TFLOPS.items()) + ")")
    p.add_argument("--out", default="bench.jsonl")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help="set by the deepspeed launcher")
    p.add_argument("overrides", nargs="*", help="experiment overrides for every method, e.g. data.max_len=64; "
                                                "a method's option (reconcile.ema_rate=0.5) goes to the methods that read it")
    return p


def _refused(e: MassiveMTError) -> int:
    print(exit_line("bench", e), file=sys.stderr, flush=True)
    return exit_code(e)


def main(argv: Optional[list[str]] = None) -> int:
    a = build_parser().parse_intermixed_args(argv)
    try:
        methods = [(spec, *parse_method(spec)) for spec in a.methods]
    except ValueError as e:         # a --methods name
        return _refused(ConfigError(str(e)))
    if a.steps < 1 or a.warmup < 0 or a.repeats < 1:
        return _refused(ConfigError("--steps and --repeats must be >= 1, --warmup >= 0"))

    import deepspeed
    import deepspeed.comm as dist

    from massive_mt.engine.config import load_config, load_ds_config, resolve_ds_config, shared_overrides
    from massive_mt.engine.distributed import init_distributed, leave, rank_device

    try:
        rank, world = init_distributed()
        ds_raw = load_ds_config(a.ds_config)
        memory = PeakMemory(deepspeed.get_accelerator().device_name())
        run_id = torch.tensor([int(time.time() * 1000) % (1 << 52)], dtype=torch.float64,
                              device=rank_device())
        dist.broadcast(run_id, 0)
        meta = {"run_id": f"{int(run_id.item()):x}", "world_size": world, "preset": a.preset,
                "ds_config": a.ds_config, "max_tokens": a.max_tokens, "steps": a.steps, "warmup": a.warmup,
                "overrides": a.overrides, "machine": machine_info(),
                "peak_tflops": a.peak_tflops or peak_tflops(torch.cuda.get_device_name()
                                                            if torch.cuda.is_available() else None),
                "versions": {"torch": torch.__version__, "deepspeed": deepspeed.__version__,
                             "python": platform.python_version()}}
        for rep in range(a.repeats):
            for K in a.tasks_per_step:
                for spec, runner, method_over in methods:
                    over = [f"data.data_bin={a.data_bin}", f"model.preset={a.preset}", f"sampling.tasks_per_step={K}",
                            f"sampling.max_tokens={a.max_tokens}", "train.tensorboard=false", "model.dropout=0.0",
                            f"train.output_dir={Path(tempfile.gettempdir()) / 'massive_mt_bench'}", *method_over,
                            *a.overrides]
                    cfg = load_config(None, shared_overrides(over))     # options: where the method reads them
                    ds = resolve_ds_config(ds_raw, cfg, world, where=a.ds_config)
                    res = run_config(cfg, ds, rank, world, runner, a.steps, a.warmup, memory)
                    if rank == 0:
                        rec = {"method": spec, "runner": runner, "K": K, "repeat": rep, **meta, **res,
                               "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
                        with open(a.out, "a", encoding="utf-8") as f:
                            f.write(json.dumps(rec) + "\n")
                        print(f"[bench] N={world} K={K} {spec:20s} step {res['step_s_median']:.3f}s "
                              f"[{res['step_s_q1']:.3f}, {res['step_s_q3']:.3f}] "
                              f"{res['target_tokens_per_s']:.0f} tok/s", file=sys.stderr, flush=True)
    except MassiveMTError as e:
        return leave(_refused(e))
    dist.barrier()
    return leave(0)


if __name__ == "__main__":
    sys.exit(main())
