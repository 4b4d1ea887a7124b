"""What reconciliation reports: one step's statistics (`StepStats`), CATS's part of them
(`CATSStepStats`), and the reconciler's running figures (`SplitTimings`, `Traffic`).

`methods.reconcile` fills a step's per-visit statistics; CATS's weigher (reconcile/weighers.py)
adds its meta step, `ShardedReconciler.reconcile` the all-reduced Gram matrices and the update's
weights; the trainer's telemetry (engine/metrics.py ReconcileTelemetry) averages them into
`reconcile.jsonl`, and `massive-mt bench` reads the timings, traffic and last weights.

A visit (i, j) is one step of a method's inner loop: corrected task i against original task j.
PCGrad visits every ordered pair (K (K - 1) per group); GradVac only the rows of its vaccinated
tasks ((K - 1) per vaccinated task of the step); `sum` none. A visit fires when the correction
is applied; a visit that meets a zero or non-finite norm is unusable and does not fire. The
correction rate of a group is fired / visits.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import torch
from torch import Tensor


@dataclass
class CATSStepStats:
    """CATS at one step: this step's scales beta [K], the task scales alpha [T] and lam after the step, whether a
    meta step was taken and its proxy, and the meta steps left out so far (non-finite statistics)."""

    beta: Tensor
    alpha: Tensor
    lam: float
    meta: bool
    proxy: Optional[float]
    meta_steps_left_out: int

    @classmethod
    def of(cls, d: dict) -> "CATSStepStats":
        """From the statistics `reconcile.cats.cats()` returns."""
        return cls(beta=d["beta"], alpha=d["alpha"], lam=d["lam"], meta=d["meta"], proxy=d.get("proxy"),
                   meta_steps_left_out=d["meta_steps_left_out"])


@dataclass
class StepStats:
    """One reconciled step over its K kept tasks (step-local order) and n_groups parameter groups;
    tensors on the CPU, [n_groups, K, K] unless said otherwise.

    From the method (`methods.reconcile`): task_ids, cos, coef, visited, fired, unusable, nonfinite
    and weights (w = C.sum(1)). CATS's weigher adds cats; the reconciler adds grams and replaces
    weights by those of the update it writes back (after CATS and clipping from the Gram)."""

    task_ids: list[int]               # global task index of each kept task
    cos: Tensor                       # cosines of the original task gradients (0 for a zero/non-finite norm)
    coef: Tensor                      # C: g'_i = sum_j C[i, j] g_j (w = C.sum(1) before CATS and clipping)
    visited: Tensor                   # bool: visit (i, j) made (unusable ones included)
    fired: Tensor                     # bool: g'_i corrected against g_j
    unusable: Tensor                  # bool: visit (i, j) met a zero or non-finite norm (did not fire)
    nonfinite: Tensor                 # [n_groups] bool: a non-finite value was met in the group
    grams: Optional[Tensor] = None    # the all-reduced Gram matrices, float64
    weights: Optional[Tensor] = None  # [n_groups, K]: update_g = sum_j w[g, j] g_jg
    cats: Optional[CATSStepStats] = None

    @property
    def n_fired(self) -> Tensor:
        """[n_groups] int64: corrections applied."""
        return self.fired.flatten(1).sum(1)

    @property
    def n_unusable(self) -> Tensor:
        """[n_groups] int64: unusable visits (zero or non-finite norm)."""
        return self.unusable.flatten(1).sum(1)

    @property
    def n_visits(self) -> Tensor:
        """[n_groups] int64: visits made, the denominator of the correction rate."""
        return self.visited.flatten(1).sum(1)


@dataclass
class SplitTimings:
    """Seconds in each phase of reconciliation since the last `reset()` (host clocks at the split
    points; `massive-mt bench` makes them wait for the device, docs/benchmarks.md). `gather_s`:
    the naive baseline's all-gathers, None for the sharded reconciler."""

    capture_s: float = 0.0
    gram_s: float = 0.0
    allreduce_s: float = 0.0
    reconcile_s: float = 0.0
    write_back_s: float = 0.0
    gather_s: Optional[float] = None

    def reset(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) is not None:
                setattr(self, f.name, 0.0)

    def per_step(self, steps: int) -> dict[str, float]:
        """The phases' seconds per step over `steps` steps (the phases this reconciler has)."""
        return {f.name: getattr(self, f.name) / steps for f in fields(self) if getattr(self, f.name) is not None}


@dataclass
class Traffic:
    """Bytes the reconciler moved at the last step, beyond DeepSpeed's own collectives."""

    allreduce_bytes: int = 0          # the statistics all-reduce, as sent
    gather_bytes: int = 0             # all-gathered into this rank (the naive baseline's full gradients)


def visits(K: int, rows, n_groups: int) -> Tensor:
    """[n_groups, K, K] bool: the visits (i, j), j != i, of the corrected rows `rows` (none when K < 2)."""
    v = torch.zeros(K, K, dtype=torch.bool)
    if K >= 2:
        r = torch.tensor(list(rows), dtype=torch.long)
        v[r] = True
        v.fill_diagonal_(False)
    return v.expand(n_groups, K, K).clone()
