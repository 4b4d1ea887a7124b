"""Training metrics: JSON lines (one record per log interval) and TensorBoard, written by rank 0."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import torch

from massive_mt.reconcile.methods import cosines
from massive_mt.reconcile.stats import StepStats


class TaskMeter:
    """Per-task running sums on this rank, all-reduced once per log interval.

    The sums live on the training device and `add` takes the loss tensors as they are: no
    host-device synchronisation per micro-batch, one when the interval is reduced."""

    def __init__(self, tasks: list[str], device="cpu"):
        self.tasks = list(tasks)
        self.index = {t: i for i, t in enumerate(self.tasks)}
        self.device = torch.device(device)
        self.reset()

    def reset(self):
        # columns: smoothed-loss * tokens, nll sum, target tokens, sentences, micro-batches
        self.sums = torch.zeros(len(self.tasks), 5, dtype=torch.float64, device=self.device)
        self.t0 = time.perf_counter()

    def add(self, task: str, loss, nll_sum, n_tokens, n_sentences: int):
        """loss, nll_sum, n_tokens: floats or 0-d tensors (on the meter's device)."""
        row = torch.stack([torch.as_tensor(x, dtype=torch.float64, device=self.device)
                           for x in (loss, nll_sum, n_tokens)])
        row[0] *= row[2]
        self.sums[self.index[task], :3] += row
        self.sums[self.index[task], 3] += n_sentences
        self.sums[self.index[task], 4] += 1

    def reduce(self, all_reduce=None) -> dict:
        """Sum over ranks (all_reduce: a callable on a tensor, or None for one process) and summarise."""
        sums = self.sums.clone()
        if all_reduce is not None:
            sums = all_reduce(sums)
        sums = sums.cpu()
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        out = {"per_task": {}, "elapsed_s": elapsed}
        tot = sums.sum(0)
        for t, i in self.index.items():
            tok = float(sums[i, 2])
            if tok > 0:
                out["per_task"][t] = {"loss": float(sums[i, 0]) / tok, "nll": float(sums[i, 1]) / tok,
                                      "tokens": int(tok), "micro_batches": int(sums[i, 4])}
        tok = float(tot[2])
        out["loss"] = float(tot[0]) / tok if tok else math.nan
        out["nll"] = float(tot[1]) / tok if tok else math.nan
        out["ppl"] = math.exp(min(out["nll"], 50)) if tok else math.nan
        out["target_tokens"] = int(tok)
        out["tokens_per_s"] = tok / elapsed
        out["sentences_per_s"] = float(tot[3]) / elapsed
        return out


class MetricsWriter:
    """metrics.jsonl + TensorBoard event files under the run directory (rank 0 only), and the same
    scalars to Weights & Biases with ``wandb`` (train.wandb: project, name, mode)."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool = True, wandb=None, config: Optional[dict] = None,
                 resumed: bool = False):
        self.enabled = enabled
        self.jsonl = None
        self.tb = None
        self.wandb = None
        if not enabled:
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if wandb is not None:
            self.wandb = _wandb_run(run_dir, wandb, config, resumed)

    def write(self, step: int, record: dict, scalars: Optional[dict] = None):
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **record}, sort_keys=True) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in (scalars or {}).items():
                if v is not None and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            logged = {k: v for k, v in (scalars or {}).items() if v is not None and math.isfinite(v)}
            if logged:
                self.wandb.log(logged, step=step)

    def close(self):
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def _wandb_run(run_dir: Path, cfg, config: Optional[dict], resumed: bool):
    """A W&B run in RUN/wandb: a resumed training run continues the W&B run of its start (its id in
    RUN/wandb/run_id), a fresh one starts a new W&B run (W&B drops steps that go backwards)."""
    try:
        import wandb
    except ImportError:
        from massive_mt.errors import ConfigError
        raise ConfigError("field 'train.wandb': needs Weights & Biases: pip install 'massive_mt[wandb]'") from None
    import uuid

    from massive_mt.io import atomic_write_text

    id_file = run_dir / "wandb" / "run_id"
    if resumed and id_file.is_file():
        run_id = id_file.read_text(encoding="utf-8").strip()
    else:
        run_id = uuid.uuid4().hex[:16]
        id_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(id_file, run_id + "\n")
    return wandb.init(project=cfg.project, name=cfg.name or run_dir.name, mode=cfg.mode, dir=str(run_dir),
                      id=run_id, resume="allow", config=config)


class NonFiniteCount:
    """Steps with a non-finite task gradient or loss: tasks dropped from a step, steps skipped, in
    the log interval and since start, and the current run of consecutive non-finite steps."""

    def __init__(self):
        self.dropped_total = self.skipped_total = self.consecutive = 0
        self.first_bad_step: Optional[int] = None
        self.bad_tasks: list[str] = []          # the non-finite tasks of the current run of steps
        self.interval = {"dropped": 0, "skipped": 0}

    def add(self, step: int, bad_tasks: list[str], skipped: bool) -> None:
        """Step `step` (0-based): `bad_tasks` non-finite; the whole step skipped or only those dropped."""
        if not bad_tasks and not skipped:
            self.consecutive, self.first_bad_step, self.bad_tasks = 0, None, []
            return
        self.consecutive += 1
        self.first_bad_step = step if self.first_bad_step is None else self.first_bad_step
        self.bad_tasks += [t for t in bad_tasks if t not in self.bad_tasks]
        key = "skipped" if skipped else "dropped"
        n = 1 if skipped else len(bad_tasks)
        self.interval[key] += n
        if skipped:
            self.skipped_total += 1
        else:
            self.dropped_total += n

    STATE = ("dropped_total", "skipped_total", "consecutive", "first_bad_step", "bad_tasks")

    def state_dict(self) -> dict:
        """The totals and the current run of non-finite steps (saved in checkpoints: a resume continues them)."""
        return {k: getattr(self, k) for k in self.STATE}

    def load_state_dict(self, state: dict) -> None:
        for k in self.STATE:
            setattr(self, k, state[k])
        self.bad_tasks = list(self.bad_tasks)

    def record(self) -> dict:
        """Fields of the interval's metrics record (and resets the interval's counts)."""
        out = {"nonfinite_dropped_tasks": self.interval["dropped"], "nonfinite_skipped_steps": self.interval["skipped"],
               "nonfinite_dropped_total": self.dropped_total, "nonfinite_skipped_total": self.skipped_total}
        self.interval = {"dropped": 0, "skipped": 0}
        return out


def flatten_scalars(summary: dict, lr: float, nonfinite: Optional[dict] = None) -> dict:
    """The TensorBoard tags: train/loss, train/loss/<task>, throughput, lr."""
    s = {"train/loss": summary["loss"], "train/nll": summary["nll"], "train/ppl": summary["ppl"],
         "throughput/target_tokens_per_s": summary["tokens_per_s"], "lr": lr}
    for t, m in summary["per_task"].items():
        s[f"train_loss_per_task/{t}"] = m["loss"]
    if nonfinite is not None:
        s["nonfinite/dropped_tasks"] = nonfinite["nonfinite_dropped_tasks"]
        s["nonfinite/skipped_steps"] = nonfinite["nonfinite_skipped_steps"]
    return s


def per_task_table(per_task: dict) -> dict:
    return {t: round(m["loss"], 4) for t, m in sorted(per_task.items())}



class ReconcileTelemetry:
    """Pairwise gradient cosines and how often corrections fired, averaged over each interval and
    appended by rank 0 to `reconcile.jsonl` (the input of `massive-mt similarity`).

    Each record: `cos_model` (T x T cosines of the whole-model task gradients, from the summed
    per-group Grams; null where a pair did not meet in the interval), `cos_groups` (the same per
    parameter group, when n_groups * T * T is small enough to log), `fired_fraction` per group
    (corrections fired / visits made, reconcile/stats.py; null when the method made no visit: `sum`,
    or GradVac with no vaccinated task in the interval's steps) and the step range. With CATS also `cats`: the task
    scales alpha (T values, in the order of `tasks`) and the multiplier lam at the end of the
    interval, the mean curvature proxy over the interval's meta steps, their number, and the meta
    steps left out so far for non-finite statistics (`meta_steps_left_out`).
    """

    MAX_GROUP_VALUES = 250_000

    def __init__(self, run_dir: Path, enabled: bool, tasks: list[str], groups: list[str], interval: int, tb=None):
        """`tasks`: the run's tasks, in the order of the global task ids; `groups`: the names of the
        reconciler's parameter groups."""
        self.enabled, self.tasks, self.groups = enabled, list(tasks), list(groups)
        self.interval, self.tb = max(1, interval), tb
        self.path = Path(run_dir) / "reconcile.jsonl"
        self.file = None
        self._reset()

    def _reset(self):
        T = len(self.tasks)
        self.sum_model = torch.zeros(T, T, dtype=torch.float64)
        self.count = torch.zeros(T, T, dtype=torch.float64)
        self.sum_groups = None
        self.fired = None
        self.visits = None
        self.first_step = None
        self.cats = None
        self.proxy_sum, self.meta_steps = 0.0, 0

    def add(self, step: int, stats: StepStats) -> None:
        """Step `step` (0-based) with the reconciled step's statistics (its kept tasks only)."""
        if not self.enabled:
            return
        ids = torch.tensor(stats.task_ids)
        grams = stats.grams
        cos = cosines(grams.sum(0, keepdim=True))[0]                       # whole model: summed Grams
        idx = torch.meshgrid(ids, ids, indexing="ij")
        self.sum_model[idx] += cos
        self.count[idx] += 1
        G = grams.shape[0]
        if self.fired is None:
            T = len(self.tasks)
            self.fired = torch.zeros(G, dtype=torch.float64)
            self.visits = torch.zeros(G, dtype=torch.float64)
            if G * T * T <= self.MAX_GROUP_VALUES:
                self.sum_groups = torch.zeros(G, T, T, dtype=torch.float64)
        if self.sum_groups is not None:
            self.sum_groups[(slice(None),) + idx] += stats.cos
        self.fired += stats.n_fired.double()
        self.visits += stats.n_visits.double()
        if stats.cats is not None:
            self.cats = stats.cats
            if stats.cats.meta:
                self.proxy_sum += stats.cats.proxy
                self.meta_steps += 1
        self.first_step = step if self.first_step is None else self.first_step
        if (step + 1) % self.interval == 0:
            self.flush(step + 1)

    def flush(self, step: int) -> None:
        if not self.enabled or self.first_step is None:
            return
        mean = lambda s: [[round(float(v), 5) if c > 0 else None for v, c in zip(rs, rc)]
                          for rs, rc in zip((s / self.count.clamp_min(1)).tolist(), self.count.tolist())]
        rec = {"step": step, "from_step": self.first_step + 1, "tasks": self.tasks, "groups": self.groups,
               "cos_model": mean(self.sum_model),
               "fired_fraction": [round(float(f / v), 5) if v > 0 else None
                                  for f, v in zip(self.fired.tolist(), self.visits.tolist())]}
        if self.sum_groups is not None:
            rec["cos_groups"] = [mean(g) for g in self.sum_groups]
        if self.cats is not None:
            rec["cats"] = {"alpha": [round(float(a), 7) for a in self.cats.alpha], "lam": self.cats.lam,
                           "proxy": self.proxy_sum / self.meta_steps if self.meta_steps else None,
                           "meta_steps": self.meta_steps, "meta_steps_left_out": self.cats.meta_steps_left_out}
        if self.file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "a", encoding="utf-8")
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        if self.tb is not None:          # mean similarity over the pairs that met, firing rate per group
            off = (self.count > 0) & ~torch.eye(len(self.tasks), dtype=torch.bool)
            if off.any():
                self.tb.add_scalar("reconcile/mean_cos_model", float((self.sum_model[off] / self.count[off]).mean()), step)
            for name, f, v in zip(self.groups, self.fired.tolist(), self.visits.tolist()):
                if v > 0 and len(self.groups) <= 64:
                    self.tb.add_scalar(f"reconcile_fired_fraction/{name}", f / v, step)
            if self.cats is not None:
                self.tb.add_scalar("cats/lam", self.cats.lam, step)
                if self.meta_steps:
                    self.tb.add_scalar("cats/proxy", self.proxy_sum / self.meta_steps, step)
                for task, a in zip(self.tasks, self.cats.alpha.tolist()):
                    self.tb.add_scalar(f"cats_alpha/{task}", a, step)
            self.tb.flush()
        self._reset()

    def close(self):
        if self.file is not None:
            self.file.close()
