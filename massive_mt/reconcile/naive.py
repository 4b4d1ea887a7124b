"""The naive baseline, for benchmarks only: full per-task gradients on every rank.

This is how single-process multi-task libraries (LibMTL, TorchJD) would run under data
parallelism: every rank holds the K full task gradients and runs the aggregator on them. It is
built here in its strongest form on top of ZeRO, so that the comparison with
`ShardedReconciler` measures only what holding full gradients costs:

- capture: after each task's boundary, the reduced partitions of all ranks are all-gathered
  (`all_gather_into_tensor`, (N-1)/N * P values received per rank, the cheapest way to a full
  gradient once ZeRO has reduce-scattered it) into a [K, N * P/N] buffer on every rank;
- reconcile: the Gram matrices of the full vectors are computed locally (no Gram all-reduce),
  the same pure reconciler gives the weights, the full update is combined on every rank and this
  rank's partition of it is written back for `engine.step()`.

The weights equal those of the sharded path up to floating-point summation order (the bench
records both); memory is K * P values per rank instead of K * P / N.
"""
from __future__ import annotations

import torch

import deepspeed.comm as dist

from massive_mt.errors import ConfigError
from massive_mt.reconcile.groups import ShardGroups
from massive_mt.reconcile.sharded import ShardedReconciler
from massive_mt.reconcile.shards import Segment
from massive_mt.reconcile.stats import StepStats
from massive_mt.reconcile.weighers import Statistics


class NaiveReconciler(ShardedReconciler):
    def __init__(self, engine, shards, cfg, tasks, train_sizes, seed, clip_norm):
        super().__init__(engine, shards, cfg, tasks, train_sizes, seed, clip_norm)
        if not self.shards.partitioned:
            raise ConfigError("the naive baseline gathers ZeRO partitions: use a ds_config with "
                              "zero_optimization.stage 1, 2 or 3 (stage 0 already holds full gradients)")
        if self.meta_data != "train":
            raise ConfigError("the naive baseline supports reconcile.cats.meta_data: train only")
        group = self.shards.dp_group
        self.rank, self.world = dist.get_rank(group=group), dist.get_world_size(group=group)
        per_rank = [None] * self.world
        dist.all_gather_object(per_rank, [(s.name, s.start, s.numel) for s in self.shards.segments()], group=group)
        n = self.shards.numel                 # every rank's partition has the same (padded) length
        full = [Segment(name, r * n + start, numel) for r, segs in enumerate(per_rank) for name, start, numel in segs]
        self.groups = ShardGroups.of_module(engine.module, cfg.granularity, full, full)
        self.row_numel = n * self.world
        self.timings.gather_s = 0.0

    def _snapshot(self, row: torch.Tensor) -> None:
        """The full task gradient in `row`: this rank's partition, all-gathered."""
        local = self.shards.snapshot()
        t0 = self._clock()
        dist.all_gather_into_tensor(row, local, group=self.shards.dp_group)
        dt = self._clock() - t0
        self.traffic.gather_bytes += row.numel() * row.element_size()      # the K all-gathers' outputs
        self.timings.gather_s += dt
        self.timings.capture_s -= dt              # capture() times the whole; the gather is reported apart

    def reconcile(self, step_tasks: list[str], step: int) -> tuple[StepStats, list[str]]:
        t = self._clock
        t0 = t()
        S = self.buffer[:self.k]                                  # [K, P] full task gradients
        grams = self.groups.local_grams(S).cpu()                  # exact: nothing to all-reduce
        t1 = t()
        losses = self._all_reduce([self.losses], S.device)[0] if self.weigher.reads_losses else self.losses.cpu()
        t2 = t()
        weights, stats = self._weights(Statistics(grams, losses), step_tasks, step)
        t3 = t()
        update = self.groups.combine(S, weights)                  # the full update, on every rank
        n = self.shards.numel
        self.shards.write_back(update[self.rank * n:(self.rank + 1) * n])
        self._time(t0, t1, t2, t3, t())
        # a benchmark baseline: it does not drop non-finite tasks (the trainer's policy, ShardedReconciler)
        return self._finish(stats, grams, weights), []
