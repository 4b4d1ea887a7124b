"""Reconciliation on this rank's shard of the ZeRO gradient partition.

Per step: after each task's last micro-batch (an accumulation boundary) `capture()` keeps an
fp32 copy of this rank's reduced partition of that task's gradient and clears the buffers;
`reconcile()` forms the partial per-group Gram matrices, all-reduces them ONCE over the
data-parallel group (a [n_groups, K, K] fp64 tensor), computes the task weights with a pure
reconciler (identical on every rank: same Grams, same state, same seeded generator), and
writes `sum_j w[g, j] * shard_j` back into DeepSpeed's buffers, in place, for `engine.step()`.
Memory: K * (P / N) fp32 values per rank. Extra communication: n_groups * K * K fp64 per step.
"""
from __future__ import annotations

import math
import time
from typing import Optional

import numpy as np
import torch

import deepspeed.comm as dist

from ..zero_adapter import GradShards
from .groups import ShardGroups
from .methods import ReconcileConfig, make_state, reconcile, update_norm_sq


def vaccinated_ids(spec: Optional[list], tasks: list[str], train_sizes: dict[str, int],
                   quantile: float) -> Optional[frozenset]:
    """GradVac's vaccinated subset as global task ids: None (all), explicit tasks, or
    ["low_resource"]: the tasks whose training size is below the given quantile."""
    if spec is None:
        return None
    if spec == ["low_resource"]:
        cut = float(np.quantile([train_sizes[t] for t in tasks], quantile))
        return frozenset(i for i, t in enumerate(tasks) if train_sizes[t] <= cut)
    from ..errors import ConfigError
    unknown = sorted(set(spec) - set(tasks))
    if unknown:
        raise ConfigError(f"field 'reconcile.vaccinate': {unknown} are not tasks of this run")
    return frozenset(tasks.index(t) for t in spec)


class ShardedReconciler:
    def __init__(self, engine, cfg, tasks: list[str], train_sizes: dict[str, int], seed: int, clip_norm: float):
        self.engine, self.method, self.tasks, self.seed = engine, cfg.method, list(tasks), seed
        self.task_index = {t: i for i, t in enumerate(self.tasks)}
        self.shards = GradShards(engine)
        names = [n for n, _ in engine.module.named_parameters()]
        self.groups = ShardGroups(names, cfg.granularity, self.shards.segments(), self.shards.gram_segments())
        self.config = ReconcileConfig(beta=cfg.beta, vaccinated=vaccinated_ids(
            cfg.vaccinate, self.tasks, train_sizes, cfg.low_resource_quantile))
        self.state = make_state(self.method, len(self.groups), len(self.tasks))
        self.clip_norm = clip_norm if self.shards.clip_from_gram else 0.0
        self.buffer: Optional[torch.Tensor] = None   # [K, local numel] fp32: the K task snapshots
        self.k = 0
        self.fired_total = 0                  # corrections fired since start (all groups, all pairs)
        self.timings = {"capture_s": 0.0, "gram_s": 0.0, "allreduce_s": 0.0, "reconcile_s": 0.0, "write_back_s": 0.0}

    @property
    def snapshot_bytes(self) -> int:
        return 0 if self.buffer is None else self.buffer.numel() * self.buffer.element_size()

    def begin_step(self, n_tasks: int) -> None:
        if self.buffer is None or self.buffer.shape[0] != n_tasks:
            self.buffer = torch.empty(n_tasks, self.shards.numel, dtype=torch.float32, device=self.engine.device)
        self.k = 0
        self.shards.begin_step()

    def capture(self, last: bool) -> None:
        """This rank's partition of the task just finished; clear the buffers unless it is the last task."""
        t0 = time.perf_counter()
        self.buffer[self.k].copy_(self.shards.snapshot())
        self.k += 1
        if not last:
            self.shards.reset()
        self.timings["capture_s"] += time.perf_counter() - t0

    def reconcile(self, step_tasks: list[str], step: int) -> dict:
        t = time.perf_counter
        t0 = t()
        S = self.buffer[:self.k]                                          # [K, local numel]
        grams = self.groups.local_grams(S)                                # [n_groups, K, K] partial
        t1 = t()
        grams = self._all_reduce(grams, S.device)                         # the ONE collective
        t2 = t()
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        ids = [self.task_index[x] for x in step_tasks]
        weights, stats = reconcile(self.method, grams, ids, self.state, gen, self.config)
        if self.clip_norm > 0:                                            # ||update||^2 = sum_g w^T G w
            norm = math.sqrt(max(float(update_norm_sq(grams, weights).sum()), 0.0))
            weights = weights * min(1.0, self.clip_norm / (norm + 1e-6))
        t3 = t()
        self.shards.write_back(self.groups.combine(S, weights))
        t4 = t()
        for k, dt in zip(("gram_s", "allreduce_s", "reconcile_s", "write_back_s"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            self.timings[k] += dt
        self.fired_total += int(stats["n_fired"].sum()) if "n_fired" in stats else 0
        stats["grams"] = grams
        stats["weights"] = weights
        return stats

    def _all_reduce(self, grams: torch.Tensor, device) -> torch.Tensor:
        g = grams.to(device)                 # NCCL reduces device tensors; on CPU this is the same tensor
        dist.all_reduce(g, group=self.shards.dp_group)
        return g.cpu()

    def state_dict(self) -> dict:
        return {"method": self.method, "groups": self.groups.names, "state": self.state.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        from ..errors import ConfigError
        if sd["method"] != self.method or sd["groups"] != self.groups.names:
            raise ConfigError(f"field 'reconcile': the checkpoint was written with method {sd['method']!r} and "
                              f"{len(sd['groups'])} groups, this run uses {self.method!r} and {len(self.groups)}")
        self.state.load_state_dict(sd["state"])
