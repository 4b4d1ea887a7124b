"""Training metrics: JSON lines (one record per log interval) and TensorBoard, written by rank 0."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import torch


class TaskMeter:
    """Per-task running sums on this rank, all-reduced once per log interval."""

    def __init__(self, tasks: list[str]):
        self.tasks = list(tasks)
        self.index = {t: i for i, t in enumerate(self.tasks)}
        self.reset()

    def reset(self):
        # columns: smoothed-loss * tokens, nll sum, target tokens, sentences, micro-batches
        self.sums = torch.zeros(len(self.tasks), 5, dtype=torch.float64)
        self.t0 = time.perf_counter()

    def add(self, task: str, loss: float, nll_sum: float, n_tokens: int, n_sentences: int):
        self.sums[self.index[task]] += torch.tensor([loss * n_tokens, nll_sum, n_tokens, n_sentences, 1],
                                                    dtype=torch.float64)

    def reduce(self, all_reduce=None) -> dict:
        """Sum over ranks (all_reduce: a callable on a tensor, or None for one process) and summarise."""
        sums = self.sums.clone()
        if all_reduce is not None:
            sums = all_reduce(sums)
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
    """metrics.jsonl + TensorBoard event files under the run directory (rank 0 only)."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool = True):
        self.enabled = enabled
        self.jsonl = None
        self.tb = None
        if not enabled:
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

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

    def close(self):
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()


def flatten_scalars(summary: dict, lr: float) -> dict:
    """The TensorBoard tags: train/loss, train/loss/<task>, throughput, lr."""
    s = {"train/loss": summary["loss"], "train/nll": summary["nll"], "train/ppl": summary["ppl"],
         "throughput/target_tokens_per_s": summary["tokens_per_s"], "lr": lr}
    for t, m in summary["per_task"].items():
        s[f"train_loss_per_task/{t}"] = m["loss"]
    return s


def per_task_table(per_task: dict) -> dict:
    return {t: round(m["loss"], 4) for t, m in sorted(per_task.items())}

