"""The trainer: DeepSpeed engine + task-grouped training step.

Launch (CPU: prefix DS_ACCELERATOR=cpu):
    deepspeed --num_gpus 2 --module massive_mt.train --config exp.yaml --ds-config ds_configs/zero2.json
    torchrun --nproc_per_node 2 -m massive_mt.train --config exp.yaml --ds-config ds_configs/zero2.json
    massive-mt train ...     (the same entry point, one process per rank)

Read `Trainer.train_step` first: one optimizer step = the step's K tasks, each task's
micro-batches back-propagated in turn by the step strategy of the run's reconcile method
(massive_mt/engine/step.py), then one `engine.step()`.

Length: the Trainer is meant to be read top to bottom (set-up, step, loop, validation,
checkpoints, export); each part delegates to engine/ (the step to engine/step.py).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from massive_mt.engine import checkpoint
from massive_mt.engine.config import ExperimentConfig, load_config, load_ds_config, resolve_ds_config, save_resolved
from massive_mt.data.sampler import TaskStepSampler, elastic_micro_batches, temperature_probs, token_budget_batches
from massive_mt.data.binarize import load_data_bin
from massive_mt.data.dataset import TaskDataset
from massive_mt.data.tokenizers import check_pretrained, load_tokenizer
from massive_mt.data.tasks import resolve_tasks, task_name
from massive_mt.engine.batches import Prefetcher, to_device
from massive_mt.engine.distributed import init_distributed, leave, shutdown
from massive_mt.errors import (NONFINITE_EXIT, REQUEUE_EXIT, ConfigError, MassiveMTError, NonFiniteStop, StopRequested,
                               Stopped, exit_code, exit_line)
from massive_mt.engine.lock import take as take_lock
from massive_mt.engine.metrics import MetricsWriter, NonFiniteCount, ReconcileTelemetry, TaskMeter, flatten_scalars, per_task_table
from massive_mt.engine.model import add_language_embeddings, build_model, count_parameters, freeze_parameters
from massive_mt.engine.optim import build_optimizer, label_smoothed_loss
from massive_mt.engine.preemption import StopSignals
from massive_mt.engine.step import PlainStep, ReconciledStep, StepStrategy, valid_split

# Tests only: "RANK:STEPS:SLOT" multiplies the loss of the step-local task SLOT (0-based) by NaN on
# rank RANK at the 0-based steps STEPS ("2" or "2-4"), giving a real non-finite gradient
FAULT_NONFINITE_ENV = "MASSIVE_MT_FAULT_NONFINITE"


def fault_nonfinite(rank: int) -> Optional[tuple[range, int]]:
    """The test hook FAULT_NONFINITE_ENV for this rank: (steps, slot), or None."""
    spec = os.environ.get(FAULT_NONFINITE_ENV)
    if not spec:
        return None
    r, steps, slot = spec.split(":")
    lo, _, hi = steps.partition("-")
    return (range(int(lo), int(hi or lo) + 1), int(slot)) if int(r) == rank else None


class Trainer:
    def __init__(self, cfg: ExperimentConfig, ds_config: dict, rank: int, world_size: int, reconciler_cls=None):
        """`reconciler_cls`: ShardedReconciler (the default) or a subclass, e.g. the benchmarks' naive baseline."""
        import deepspeed

        self.cfg, self.rank, self.world = cfg, rank, world_size
        self.run_dir = Path(cfg.train.output_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        data_bin = Path(cfg.data.data_bin)
        self.manifest = load_data_bin(data_bin)
        self.tokenizer = load_tokenizer(data_bin)

        # ---- data: one dataset and one list of token-budget micro-batches per task
        tasks = resolve_tasks(self.manifest, cfg.data.direction, cfg.data.tasks, cfg.data.langs,
                              source=f"the data-bin ({cfg.data.data_bin})")
        self.tasks = [task_name(t) for t in tasks]
        if cfg.sampling.tasks_per_step > len(self.tasks):
            raise ConfigError(f"field 'sampling.tasks_per_step' = {cfg.sampling.tasks_per_step} exceeds the "
                              f"number of tasks of this run ({len(self.tasks)})")
        self.datasets = {task_name(t): TaskDataset(data_bin, t[0], t[1], split="train", max_len=cfg.data.max_len)
                         for t in tasks}
        batches = {name: token_budget_batches(ds.sizes_src, ds.sizes_tgt, cfg.sampling.max_tokens,
                                              seed=cfg.sampling.seed)
                   for name, ds in self.datasets.items()}
        self.train_sizes = {name: len(ds) for name, ds in self.datasets.items()}
        self.probs = temperature_probs(np.array([self.train_sizes[t] for t in self.tasks]),
                                       cfg.sampling.temperature)
        self.resume_from = self.find_checkpoint()           # (ckpt_dir, tag, marker) or None
        m, self.reshard_note = self.micro_batches_per_task()
        if m != cfg.sampling.micro_batches_per_task:        # DeepSpeed's accumulation follows the sampler's m
            gas = cfg.sampling.tasks_per_step * m
            ds_config = {**ds_config, "gradient_accumulation_steps": gas, "train_batch_size": gas * world_size}
        self.sampler = TaskStepSampler(self.tasks, batches, self.probs, cfg.sampling.tasks_per_step,
                                       m, world_size, rank, cfg.sampling.seed)

        # ---- model, optimizer, DeepSpeed engine
        torch.manual_seed(cfg.train.seed)
        m = cfg.model
        start = (check_pretrained(self.manifest, data_bin, m.from_pretrained) if m.from_pretrained
                 else {"vocab_size": self.tokenizer.vocab_size, "init": {}})
        model = build_model(m.preset, start["vocab_size"], cfg.data.max_len, m.from_pretrained,
                            attn_implementation=m.attn_implementation,
                            activation_checkpointing=m.activation_checkpointing,
                            dropout=m.dropout, attention_dropout=m.attention_dropout,
                            activation_dropout=m.activation_dropout)
        add_language_embeddings(model, self.tokenizer.vocab_size, start["init"])
        self.n_params = count_parameters(model)
        self.n_trainable, self.n_frozen = freeze_parameters(model, m.freeze or [])   # before the optimizer
        optimizer, scheduler = build_optimizer(model, cfg.optim)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        if self.engine.bfloat16_enabled():
            # DeepSpeed casts the parameters; floating-point buffers (the sinusoidal position
            # table) must follow, or fp32 positions promote the bf16 activations
            for buf in self.engine.module.buffers():
                if buf.is_floating_point():
                    buf.data = buf.data.to(torch.bfloat16)
        self.device = self.engine.device
        self.prefetch = Prefetcher(self.device, lambda task, indices: self.datasets[task].collate(indices))
        self.pad_id = self.tokenizer.pad_id
        self.reconciler, self.valid_sets, self.valid_batches = None, {}, {}
        if cfg.reconcile.method == "plain":
            self.strategy: StepStrategy = PlainStep(self.engine, self.forward_backward)
        else:
            from massive_mt.engine.zero_adapter import GradShards
            from massive_mt.reconcile.sharded import ShardedReconciler
            self.reconciler = (reconciler_cls or ShardedReconciler)(
                self.engine, GradShards(self.engine), cfg.reconcile, self.tasks, self.train_sizes, cfg.sampling.seed, cfg.optim.clip_norm)
            if self.reconciler.meta_data == "valid":        # CATS's meta step on the valid split
                self.valid_sets, self.valid_batches = valid_split(data_bin, tasks, cfg)
            self.strategy = ReconciledStep(self.engine, self.reconciler, self.forward_backward, self.loss, rank,
                                           world_size, self.valid_sets, self.valid_batches)
        self.validator = None
        if cfg.train.valid_interval:
            from massive_mt.data.tasks import resource_buckets
            from massive_mt.engine.validation import Validator
            self.validator = Validator(self, data_bin, tasks, resource_buckets(self.train_sizes))
        self.best = None                                     # BestTracker, from fit() on (after the resume)
        self.resumed_best = None                             # its state in the checkpoint resumed from
        self.saved_step = None
        self.step = 0
        self.nonfinite = NonFiniteCount()
        self.fault = fault_nonfinite(rank)
        self.meter = TaskMeter(self.tasks, self.device)
        self.writer = MetricsWriter(self.run_dir, enabled=rank == 0, tensorboard=cfg.train.tensorboard,
                                    wandb=cfg.train.wandb, config=cfg.to_dict(), resumed=self.resume_from is not None)
        self.telemetry = ReconcileTelemetry(self.run_dir, rank == 0, self.tasks,
                                            self.reconciler.groups.names if self.reconciler is not None else [],
                                            cfg.reconcile.log_interval or cfg.train.log_interval, self.writer.tb)

    # ------------------------------------------------------------------ the training step
    def loss(self, batch: dict):
        """The label-smoothed loss of a micro-batch given on the host or already on the device (the prefetcher's)."""
        if batch["input_ids"].device != self.device:
            batch = to_device(batch, self.device)
        out = self.engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          decoder_input_ids=batch["decoder_input_ids"])
        return label_smoothed_loss(out.logits, batch["labels"], self.pad_id, self.cfg.optim.label_smoothing)

    def forward_backward(self, task: str, indices, k: int = -1) -> torch.Tensor:
        """One micro-batch of the step's k-th task; returns its (detached) loss without waiting for the device."""
        batch = self.prefetch.get(task, indices)            # on the device; the next one's copy is under way
        loss, nll_sum, n_tok = self.loss(batch)
        if self.fault is not None and self.step in self.fault[0] and k == self.fault[1]:
            loss = loss * float("nan")                      # the test hook FAULT_NONFINITE_ENV
        self.engine.backward(loss)
        loss = loss.detach()
        self.meter.add(task, loss, nll_sum, n_tok, batch["n_sentences"])
        return loss

    def train_step(self) -> None:
        """One optimizer step: the strategy runs the plan's micro-batches (engine/step.py: PlainStep
        or ReconciledStep) and says what they left; then the update, or on every rank no update
        when the outcome skips the step (docs/failures.md#non-finite-values)."""
        plan = self.sampler.plan(self.step)                 # [(task, [this rank's micro-batches])]
        self.prefetch.start([(task, indices) for task, micro_batches in plan for indices in micro_batches])
        outcome = self.strategy.run(plan, self.step)
        if outcome.skipped:
            from massive_mt.engine.zero_adapter import skip_step
            skip_step(self.engine)                           # every rank: no update, optimizer untouched
            self.scheduler.step()                            # the schedule follows the step counter
        else:
            self.engine.step()                               # clipping, AdamW, schedule
        if outcome.stats is not None:
            self.telemetry.add(self.step, outcome.stats)
        self.nonfinite.add(self.step, outcome.nonfinite, outcome.skipped)
        if outcome.nonfinite:
            self.writer.write(self.step + 1, {"event": "nonfinite", "tasks": outcome.nonfinite,
                                              "action": "skipped" if outcome.skipped else "dropped"})
        self.step += 1

    # ------------------------------------------------------------------ loop
    def fit(self, stop: Optional[StopSignals] = None) -> dict:
        """Train to train.max_steps; with `stop`, a stop signal ends the run early after a checkpoint."""
        from tqdm import tqdm

        self.maybe_resume()
        self.log_start()
        c = self.cfg.train
        if self.validator is not None:
            from massive_mt.engine.validation import BestTracker
            self.best = BestTracker(self.ckpt_dir, c.best_metric, c.best_average, c.patience, self.rank,
                                    self.resumed_best, c.best_min_delta)
        max_steps, start = self.cfg.train.max_steps, self.step
        bar = tqdm(total=max_steps, initial=self.step, disable=self.rank != 0, dynamic_ncols=True,
                   desc="train", file=sys.stderr, mininterval=1.0)
        last = {}
        while self.step < max_steps and not self.early_stopped:     # (a resumed early-stopped run: done)
            self.train_step()
            bar.update(1)
            logs = self.step % self.cfg.train.log_interval == 0 or self.step == max_steps
            if self.nonfinite.consecutive or logs:
                self.check_finite()
            if logs:
                last = self.log()
                bar.set_postfix(loss=f"{last['loss']:.3f}", tok_s=f"{last['tokens_per_s']:.0f}")
            stopping = self.validator is not None and self.step % c.valid_interval == 0 and self.validate()
            if self.cfg.train.save_interval and self.step % self.cfg.train.save_interval == 0 \
                    and self.saved_step != self.step:       # (validation may have saved this step)
                self.save()
            if stopping:
                break                                        # train.patience validations without improvement
            if stop is not None and self.step < max_steps and stop.agreed(self.device):
                break
        bar.close()
        if self.step > start and self.saved_step != self.step:
            self.check_finite()
            self.save()                                      # (a resume with nothing left to train keeps its tag)
        if self.step < max_steps and not self.early_stopped:
            self.writer.write(self.step, {"event": "stopped", "signal": stop.name, "exit_status": REQUEUE_EXIT})
        else:
            self.export()
        self.writer.close()
        self.telemetry.close()
        return last

    @property
    def early_stopped(self) -> bool:
        return self.best is not None and self.best.exhausted

    def validate(self) -> bool:
        """Collective. Validate, keep the best checkpoint (saving this step's when it improves) and
        say whether train.patience validations went by without improvement (the run stops, exit 0)."""
        c = self.cfg.train
        averages = self.validator.run(self.step)
        value = averages[c.best_metric]

        def save() -> str:
            self.check_finite()
            return self.save()
        if self.best.update(self.step, value, save):
            self.writer.write(self.step, {"event": "best", "metric": c.best_metric, "value": round(value, 4),
                                          "tag": self.best.tag})
        if not self.best.exhausted:
            return False
        why = (f"{c.patience} validations without improvement of {c.best_metric} (averaged over "
               f"{c.best_average}); {self.best.describe()}")
        self.writer.write(self.step, {"event": "early_stop", "reason": why, "exit_status": 0})
        if self.rank == 0:
            print(f"[massive_mt] early stop at step {self.step}: {why}", file=sys.stderr, flush=True)
        return True

    def check_finite(self) -> None:
        """Collective. Stop (NonFiniteStop) when the parameters are not finite, or after more than
        train.max_nonfinite_steps consecutive non-finite steps; nothing is saved then, and the last
        finite checkpoint stays the one a restart resumes."""
        c, limit = self.nonfinite, self.cfg.train.max_nonfinite_steps
        if not checkpoint.params_finite(self.engine):
            why = (f"the parameters are not finite (NaN/inf) after step {self.step}"
                   f"{' (the learning rate may be too high)' if not c.consecutive else ''}")
        elif c.consecutive > limit:
            steps = f"steps {c.first_bad_step + 1}-{self.step}" if c.consecutive > 1 else f"step {self.step}"
            why = (f"{c.consecutive} consecutive non-finite step{'s' * (c.consecutive > 1)} ({steps}; "
                   f"non-finite tasks: {', '.join(c.bad_tasks)}), more than train.max_nonfinite_steps = {limit}")
        else:
            return
        self.writer.write(self.step, {"event": "stopped", "reason": "nonfinite", "message": why,
                                      "exit_status": NONFINITE_EXIT, **c.record()})
        self.writer.close()
        self.telemetry.close()
        raise NonFiniteStop(f"stopped: {why}; nothing saved, exit status {NONFINITE_EXIT}; a restart "
                            f"resumes from the last finite checkpoint in {self.ckpt_dir}")

    def log_start(self):
        if self.rank != 0:
            return
        from massive_mt.engine.zero_adapter import layout_of
        info = {"event": "start", "world_size": self.world, "parameters": self.n_params,
                "trainable_parameters": self.n_trainable, "frozen_parameters": self.n_frozen,
                "zero_stage": self.engine.zero_optimization_stage(), "bf16": self.engine.bfloat16_enabled(),
                "optimizer_wrapper": type(self.engine.optimizer).__name__, "layout": layout_of(self.engine).name,
                "attn_implementation": self.engine.module.config._attn_implementation,
                "activation_checkpointing": self.cfg.model.activation_checkpointing,
                "tasks": self.tasks, "train_sentences": self.train_sizes,
                "sampling_probs": {t: round(float(p), 6) for t, p in zip(self.tasks, self.probs)},
                "truncated": {t: int(getattr(ds, "n_truncated", 0)) for t, ds in self.datasets.items()},
                "resumed_from_step": self.step}
        self.writer.write(self.step, info)
        print(f"[massive_mt] world={self.world} params={self.n_params:,} tasks={len(self.tasks)} "
              f"zero={info['zero_stage']} bf16={info['bf16']} layout={info['layout']} "
              f"start_step={self.step}", file=sys.stderr, flush=True)
        print(f"[massive_mt] trainable={self.n_trainable:,} frozen={self.n_frozen:,} (model.freeze: "
              f"{self.cfg.model.freeze})", file=sys.stderr, flush=True)
        if self.reconciler is not None and info["zero_stage"] in (0, 1):
            print(f"[massive_mt] ZeRO-{info['zero_stage']} with reconcile.method={self.cfg.reconcile.method}: every "
                  f"task ends at an accumulation boundary, so DeepSpeed reduces the full gradient "
                  f"{self.cfg.sampling.tasks_per_step} times per step instead of once; ZeRO-2 is the layout where "
                  f"reconciliation adds no gradient reduction (docs/gpu.md)", file=sys.stderr, flush=True)

    def log(self) -> dict:
        import deepspeed.comm as dist

        def all_reduce(t):
            t = t.to(self.device)
            dist.all_reduce(t)
            return t.cpu()

        summary = self.meter.reduce(all_reduce)
        self.meter.reset()
        lr = self.scheduler.get_last_lr()[0]
        nonfinite = self.nonfinite.record()
        record = {"loss": summary["loss"], "nll": summary["nll"], "ppl": summary["ppl"], "lr": lr,
                  "tokens_per_s": summary["tokens_per_s"], "target_tokens": summary["target_tokens"],
                  "loss_per_task": per_task_table(summary["per_task"]), **nonfinite,
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}  # of the writing rank
        self.writer.write(self.step, record, flatten_scalars(summary, lr, nonfinite))
        return record

    # ------------------------------------------------------------------ checkpoints
    def client_state(self) -> dict:
        e = self.engine
        state = {"step": self.step, "sampler": self.sampler.state_dict(), "tasks": self.tasks,
                 "nonfinite": self.nonfinite.state_dict(), "micro_batches_per_task": self.sampler.micro_batches_per_task,
                 "config": self.cfg.to_dict(), "world_size": self.world, "zero_stage": e.zero_optimization_stage(),
                 "precision": "bf16" if e.bfloat16_enabled() else "fp16" if e.fp16_enabled() else "fp32"}
        if self.reconciler is not None:
            state["reconciler"] = self.reconciler.state_dict()
        if self.best is not None:
            state["best"] = self.best.state_dict()
        return {"massive_mt": state}

    def save(self) -> str:
        state = self.client_state()
        run = {k: state["massive_mt"][k] for k in ("world_size", "zero_stage", "precision", "config", "tasks",
                                                   "micro_batches_per_task")}
        tag = checkpoint.save(self.engine, self.ckpt_dir, self.step, state, self.cfg.train.keep_last, run)
        self.saved_step = self.step
        return tag

    def find_checkpoint(self) -> Optional[tuple[Path, str, dict]]:
        """Collective: (ckpt_dir, tag, marker) of the checkpoint to resume (the newest complete one, or
        the one train.resume names), or None."""
        r = self.cfg.train.resume
        if r == "never":
            return None
        if r == "auto":
            tag, marker = checkpoint.select(self.ckpt_dir)
            return None if tag is None else (self.ckpt_dir, tag, marker)
        if not Path(r).is_dir():
            raise ConfigError(f"field 'train.resume': checkpoint {r!r} not found")
        return Path(r).parent, Path(r).name, checkpoint.require(Path(r))

    def micro_batches_per_task(self) -> tuple[int, Optional[str]]:
        """m of this run: the configured one, or on a resume the one that keeps the checkpoint's
        micro-batches per task per step on this world size (data/sampler.py elastic_micro_batches)."""
        m = self.cfg.sampling.micro_batches_per_task
        if self.resume_from is None:
            return m, None
        run = self.resume_from[2]["run"]
        saved_m = run.get("micro_batches_per_task", m)      # markers before it was recorded: the configured m
        if run.get("world_size", self.world) == self.world and saved_m == m:
            return m, None
        return elastic_micro_batches(saved_m, run["world_size"], self.world, m)

    def maybe_resume(self) -> None:
        """Resume from the checkpoint `find_checkpoint` chose, after checking that this run changes
        nothing a resume may not change (checkpoint.check_resume); another layout is converted
        when train.reshard is auto (docs/failures.md)."""
        if self.resume_from is None:
            return
        ckpt_dir, tag, marker = self.resume_from
        current = self.client_state()["massive_mt"]
        how = checkpoint.check_resume(marker["run"], current, ckpt_dir / tag, self.cfg.train.reshard)
        state = checkpoint.load(self.engine, ckpt_dir, tag, how)
        s = state["massive_mt"]
        if s["tasks"] != self.tasks:
            raise ConfigError(f"field 'train.resume': checkpoint in {ckpt_dir} was trained on other tasks "
                              f"({len(s['tasks'])} tasks) than this config ({len(self.tasks)} tasks)")
        self.sampler.load_state_dict(s["sampler"], elastic=self.cfg.train.reshard == "auto")
        if self.reconciler is not None:
            if "reconciler" not in s:
                raise ConfigError(f"field 'reconcile.method': checkpoint in {ckpt_dir} has no reconciler state "
                                  f"(trained with method 'plain'); start a new output_dir")
            self.reconciler.load_state_dict(s["reconciler"])
        if "nonfinite" in s:
            self.nonfinite.load_state_dict(s["nonfinite"])
        self.step = s["step"]
        self.resumed_best = s.get("best")
        if how is not None or self.reshard_note:
            layout = {k: [marker["run"].get(k), current[k]] for k in checkpoint.LAYOUT}
            self.writer.write(self.step, {"event": "reshard", "checkpoint": str(ckpt_dir / tag), "loader": how,
                                          "layout": layout, "micro_batches_per_task": self.sampler.micro_batches_per_task,
                                          "batch": self.reshard_note})
            if self.rank == 0:
                print(f"[massive_mt] resume (layout: {', '.join(f'{k} {a} -> {b}' for k, (a, b) in layout.items() if a != b) or 'unchanged'}, "
                      f"loader: {how or 'deepspeed'}): {self.reshard_note or 'micro-batches per task unchanged'}",
                      file=sys.stderr, flush=True)

    def export(self) -> None:
        """Collective: the full fp32 weights gathered from the live engine; rank 0 writes RUN/model
        with the writer of `massive-mt export` (massive_mt/engine/export.py)."""
        import deepspeed.comm as dist
        from massive_mt.engine.export import metadata, model_for, write_hf

        state = checkpoint.full_fp32_state_dict(self.engine, keep_on=0)
        if self.rank == 0:
            cfg = self.cfg.to_dict()
            tag = self.ckpt_dir / checkpoint.tag_for(self.step)
            meta = metadata(self.run_dir, cfg, self.tasks, self.train_sizes, [tag], [self.step], "last")
            if self.best is not None:                        # validated: the best checkpoint, and why it stopped
                meta["best"] = {"metric": self.best.metric, "value": self.best.best, "step": self.best.step,
                                "tag": self.best.tag}
                meta["early_stopped"] = self.early_stopped
            write_hf(self.run_dir / "model", model_for(self.engine.module.config, state, str(tag)),
                     Path(self.cfg.data.data_bin), meta, replace=True)
        dist.barrier()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="massive-mt train", description=__doc__.split("\n")[0])
    p.add_argument("--config", help="experiment YAML (defaults when omitted)")
    p.add_argument("--ds-config", required=True, help="DeepSpeed JSON config, e.g. ds_configs/zero2.json")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help="set by the deepspeed launcher")
    p.add_argument("overrides", nargs="*", help="section.field=value, e.g. train.max_steps=100")
    return p


def run(args) -> dict:
    cfg = load_config(args.config, args.overrides)
    stop = StopSignals(cfg.train.stop_signals)       # before the slow start-up: a signal must not kill it
    ds_raw = load_ds_config(args.ds_config)
    rank, world = init_distributed(cfg.train.collective_timeout_s)
    lock = take_lock(cfg.train.output_dir, rank)       # rank 0 holds output_dir for the run; before any write
    try:
        ds = resolve_ds_config(ds_raw, cfg, world, where=args.ds_config)
        trainer = Trainer(cfg, ds, rank, world)
        if rank == 0:
            save_resolved(cfg.train.output_dir, cfg, ds)
        result = trainer.fit(stop)
        if rank == 0 and (trainer.step == cfg.train.max_steps or trainer.early_stopped):
            print(json.dumps({"final": result}, default=float), flush=True)
        import deepspeed.comm as dist
        dist.barrier()
        dist.destroy_process_group()
    finally:
        if lock is not None:
            lock.release()
    if trainer.step < cfg.train.max_steps and not trainer.early_stopped:
        raise StopRequested(stop.name, trainer.step)
    return result


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    try:
        run(args)
        code = 0
    except (MassiveMTError, Stopped) as e:     # an OSError here is a crash (a collective's socket, too)
        print(exit_line("train", e), file=sys.stderr, flush=True)
        code = exit_code(e)
    except BaseException:
        shutdown()
        raise
    return leave(code)


if __name__ == "__main__":
    sys.exit(main())
