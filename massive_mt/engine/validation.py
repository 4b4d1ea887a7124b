"""Validation during training, the best checkpoint and early stopping (docs/training.md#validation).

Every ``train.valid_interval`` steps the trainer computes, on the valid split of every task
(its first ``train.valid_max_sentences`` sentences):

* the valid NLL: teacher-forced, no label smoothing, nats per target token as training counts
  them (the target tag included), data-parallel: the token-budget batches of all tasks are dealt
  round-robin to the ranks and one all-reduce sums (NLL, tokens) per task;
* with ``train.valid_decode``, greedy BLEU and chrF on the first ``train.valid_decode_sentences``
  sentences per task (references decoded from the token arrays, as fairseq's ``--eval-bleu``).

It runs in eval mode under ``torch.no_grad`` and draws no random numbers, so the training
trajectory is the same with and without it. Under ZeRO-3 every rank runs the same number of
forward passes (a rank with fewer batches repeats one and discards it) and generation keeps the
ranks in step (``synced_gpus``).

The best value of ``train.best_metric`` (averaged over tasks, or over resource buckets so that
each bucket weighs the same) is kept in ``checkpoints/best.json`` with its checkpoint tag, which
pruning never removes; ``train.patience`` stops the run after that many validations without
improvement. Both survive a resume.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from massive_mt.data.dataset import TaskDataset
from massive_mt.data.sampler import token_budget_batches
from massive_mt.io import atomic_write_json, read_json_object

BEST_FILE = "best.json"
LOWER_IS_BETTER = {"valid_nll": True, "valid_bleu": False, "valid_chrf": False}


def read_best(ckpt_dir: Path) -> Optional[dict]:
    """The best-checkpoint record of a run (None before the first validation)."""
    path = Path(ckpt_dir) / BEST_FILE
    return read_json_object(path) if path.is_file() else None


def improved(value: float, best: Optional[float], metric: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` (the first finite value does)."""
    if best is None:
        return math.isfinite(value)
    return value < best - min_delta if LOWER_IS_BETTER[metric] else value > best + min_delta


class Validator:
    """Valid NLL (and greedy BLEU/chrF) of every task; collective: every rank calls ``run``."""

    def __init__(self, trainer, data_bin: Path, tasks: list[tuple[str, str]], buckets: dict[str, str]):
        c = trainer.cfg.train
        self.t, self.cfg, self.buckets = trainer, c, buckets
        self.sets, self.batches, self.decode_rows = {}, [], []
        for src, tgt in tasks:
            ds = TaskDataset(data_bin, src, tgt, split="valid", max_len=trainer.cfg.data.max_len)
            name = ds.task
            n = min(len(ds), c.valid_max_sentences)
            if n == 0:
                continue
            self.sets[name] = ds
            for b in token_budget_batches(ds.sizes_src[:n], ds.sizes_tgt[:n], trainer.cfg.sampling.max_tokens,
                                          seed=trainer.cfg.sampling.seed):
                self.batches.append((name, np.sort(b)))
            if c.valid_decode:
                m = min(n, c.valid_decode_sentences)
                self.decode_rows += [(name, np.arange(i, min(i + 32, m))) for i in range(0, m, 32)]
        self.empty = sorted(f"{s}-{t}" for s, t in tasks if f"{s}-{t}" not in self.sets)
        self.names = sorted(self.sets)
        if not self.sets:
            from massive_mt.errors import ConfigError
            raise ConfigError(f"field 'train.valid_interval': no task has valid sentences in {data_bin}; "
                              "set train.valid_interval: 0 or prepare a corpus with a valid split")

    def _mine(self, items: list) -> list:
        """This rank's share, round-robin; under ZeRO-3 padded to the same count on every rank
        (None marks a repeat whose result is discarded)."""
        world, rank = self.t.world, self.t.rank
        mine = items[rank::world]
        if self.t.engine.zero_optimization_stage() == 3 and items:
            per_rank = math.ceil(len(items) / world)
            mine = mine + [None] * (per_rank - len(mine))
        return mine

    @torch.no_grad()
    def nll(self) -> dict[str, float]:
        t = self.t
        index = {name: i for i, name in enumerate(self.names)}
        sums = torch.zeros(len(self.names), 2, dtype=torch.float64, device=t.device)   # (nll, tokens)
        last = self.batches[0] if self.batches else None
        for item in self._mine(self.batches):
            name, idx = item if item is not None else last
            _, nll_sum, n_tok = t.loss(self.sets[name].collate(idx))      # nll_sum: without smoothing
            if item is not None:
                sums[index[name], 0] += nll_sum.double()
                sums[index[name], 1] += n_tok
        import deepspeed.comm as dist
        dist.all_reduce(sums)
        sums = sums.cpu()
        return {name: float(sums[i, 0] / sums[i, 1]) for i, name in enumerate(self.names)}

    @torch.no_grad()
    def decode(self) -> dict[str, dict]:
        """Greedy BLEU and chrF per task on the decoded sample, gathered on every rank and scored
        there (every rank takes the same best-checkpoint decision)."""
        from massive_mt.scoring import score

        t, tok = self.t, self.t.tokenizer
        zero3 = t.engine.zero_optimization_stage() == 3
        out = []
        last = self.decode_rows[0] if self.decode_rows else None
        for item in self._mine(self.decode_rows):
            name, idx = item if item is not None else last
            ds = self.sets[name]
            batch = ds.collate(idx)
            gen = t.engine.module.generate(
                input_ids=batch["input_ids"].to(t.device), attention_mask=batch["attention_mask"].to(t.device),
                num_beams=1, do_sample=False, max_new_tokens=int(batch["labels"].shape[1]) + 10,
                forced_bos_token_id=ds.tgt_tag, decoder_start_token_id=ds.eos_id, synced_gpus=zero3)
            if item is not None:
                out += [(name, int(i), tok.decode(g), tok.decode(r))
                        for i, g, r in zip(idx, gen.tolist(), batch["labels"].tolist())]
        parts = [out]
        if t.world > 1:
            parts = [None] * t.world
            torch.distributed.all_gather_object(parts, out)
        rows: dict[str, list] = {}
        for name, i, hyp, ref in sorted(r for p in parts for r in p):
            rows.setdefault(name, []).append((hyp, ref))
        result = {}
        for name, pairs in rows.items():
            bleu, chrf, _, _ = score([h for h, _ in pairs], [r for _, r in pairs], self.sets[name].tgt_lang)
            result[name] = {"bleu": bleu, "chrf": chrf}
        return result

    def average(self, per_task: dict[str, float]) -> float:
        """The mean over tasks, or (``best_average: buckets``) the mean of the bucket means."""
        if self.cfg.best_average == "tasks":
            return float(np.mean(list(per_task.values())))
        by_bucket: dict[str, list] = {}
        for name, v in per_task.items():
            by_bucket.setdefault(self.buckets.get(name, "-"), []).append(v)
        return float(np.mean([np.mean(v) for v in by_bucket.values()]))

    def run(self, step: int) -> dict:
        """Validate; returns {metric: average} and writes the per-task values to metrics.jsonl and
        TensorBoard (valid/...)."""
        t0 = time.perf_counter()
        was_training = self.t.engine.module.training
        self.t.engine.eval()
        try:
            values = {"valid_nll": self.nll()}
            if self.cfg.valid_decode:
                decoded = self.decode()
                values["valid_bleu"] = {n: d["bleu"] for n, d in decoded.items()}
                values["valid_chrf"] = {n: d["chrf"] for n, d in decoded.items()}
        finally:
            if was_training:
                self.t.engine.train()
        seconds = time.perf_counter() - t0
        averages = {m: self.average(v) for m, v in values.items()}
        record = {"event": "valid", "valid_s": round(seconds, 3), **{m: round(a, 4) for m, a in averages.items()},
                  **{f"{m}_per_task": {n: round(x, 4) for n, x in v.items()} for m, v in values.items()},
                  "valid_average": self.cfg.best_average, "valid_sentences": self.cfg.valid_max_sentences}
        if self.empty:
            record["valid_empty_tasks"] = self.empty
        buckets = {}
        for m, v in values.items():
            for b in ("high", "medium", "low"):
                xs = [x for n, x in v.items() if self.buckets.get(n) == b]
                if xs:
                    buckets[f"{m}_{b}"] = round(float(np.mean(xs)), 4)
        record.update(buckets)
        scalars = {f"valid/{m.removeprefix('valid_')}": a for m, a in averages.items()}
        scalars.update({f"valid/{k.removeprefix('valid_')}": v for k, v in buckets.items()})
        for m, v in values.items():
            scalars.update({f"valid/{m.removeprefix('valid_')}/{n}": x for n, x in v.items()})
        scalars["valid/seconds"] = seconds
        self.t.writer.write(step, record, scalars)
        return averages


class BestTracker:
    """The best value of train.best_metric, its step and tag, and the validations since. Its state
    travels in every checkpoint (so a resume counts exactly the validations after the checkpoint it
    resumes from); ``checkpoints/best.json`` is the same record for pruning, export and the demo."""

    def __init__(self, ckpt_dir: Path, metric: str, average: str, patience: int, rank: int,
                 saved: Optional[dict] = None, min_delta: float = 0.0):
        """``saved``: the state of the checkpoint the run resumed from (None: a fresh start)."""
        self.path, self.metric, self.average, self.patience, self.rank = Path(ckpt_dir) / BEST_FILE, metric, \
            average, patience, rank
        self.min_delta = min_delta
        saved = saved or {}
        if saved and (saved.get("metric"), saved.get("average")) != (metric, average):
            from massive_mt.errors import ConfigError
            raise ConfigError(f"field 'train.best_metric': the checkpoint tracks {saved.get('metric')} averaged over "
                              f"{saved.get('average')}, this run {metric} over {average}; start a new output_dir")
        self.best = saved.get("value")
        self.tag, self.step = saved.get("tag"), saved.get("step")
        self.since = saved.get("validations_since_best", 0)

    def state_dict(self) -> dict:
        return {"metric": self.metric, "average": self.average, "value": self.best, "tag": self.tag,
                "step": self.step, "validations_since_best": self.since}

    def update(self, step: int, value: float, save) -> bool:
        """Record a validation; returns whether it improved. On an improvement ``save()`` writes this
        step's checkpoint (collective; the tracker's new state is in it) and returns its tag, before
        best.json points to it."""
        better = improved(value, self.best, self.metric, self.min_delta)
        if better:
            self.best, self.step, self.since = value, step, 0
            self.tag = save()
        else:
            self.since += 1
        if self.rank == 0:
            atomic_write_json(self.path, self.state_dict())
        return better

    @property
    def exhausted(self) -> bool:
        return self.patience > 0 and self.since >= self.patience

    def describe(self) -> str:
        if self.step is None:
            return f"no finite {self.metric} so far"
        return f"best {self.best:.4f} at step {self.step} ({self.tag})"
