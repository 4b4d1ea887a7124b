"""Reconciliation on this rank's shard of the ZeRO gradient partition.

Per step: after each task's last micro-batch (an accumulation boundary) `capture()` keeps an
fp32 copy of this rank's reduced partition of that task's gradient and clears the buffers;
`reconcile()` forms the partial per-group Gram matrices, all-reduces them ONCE over the
data-parallel group (a [n_groups, K, K] fp64 tensor), computes the task weights with a pure
reconciler (identical on every rank: same Grams, same state, same seeded generator), and
writes `sum_j w[g, j] * shard_j` back into DeepSpeed's buffers, in place, for `engine.step()`.
Memory: K * (P / N) fp32 values per rank. Extra communication: n_groups * K * K + 2 K fp64 per
step (the Grams and each task's summed micro-batch losses and counts, in the same all-reduce).

The weights come from a weigher (reconcile/weighers.py, chosen by the catalogue,
reconcile/catalogue.py): a Gram method, or CATS around one. A weigher that asks for the valid
split (CATS with `cats.meta_data: valid`, at a meta step: `weigher.needs_valid_statistics()`) gets
one valid-split micro-batch per task and rank captured into a second [K, P / N] buffer before the
training micro-batches start (`capture_valid`); their whole-model Gram and losses ride in the
same all-reduce (K * K + 2 K more values), and with `weigher.cross_grams` (CATS's `lookahead`)
so do the per-group training-valid cross Grams (n_groups * K * K more).
"""
from __future__ import annotations

import math
import time
from typing import Optional

import torch

import deepspeed.comm as dist
from deepspeed.accelerator import get_accelerator

from massive_mt.errors import ConfigError
from massive_mt.reconcile import catalogue
from massive_mt.reconcile.groups import ShardGroups
from massive_mt.reconcile.methods import update_norm_sq
from massive_mt.reconcile.shards import Shards
from massive_mt.reconcile.stats import SplitTimings, StepStats, Traffic
from massive_mt.reconcile.weighers import Statistics


def nonfinite_tasks(parts: list[torch.Tensor]) -> list[bool]:
    """Per step task: its gradient or its loss is not finite, from the all-reduced statistics
    ([n_groups, K, K] Grams, [K, 2] losses, and with CATS valid data the valid Gram and losses).
    A NaN/inf anywhere in a task's gradient on any rank reaches its Gram diagonal."""
    grams, losses = parts[0], parts[1]
    bad = ~torch.isfinite(grams.diagonal(dim1=-2, dim2=-1)).all(0) | ~torch.isfinite(losses[:, 0])
    if len(parts) > 2:
        bad |= ~torch.isfinite(parts[2].diagonal()) | ~torch.isfinite(parts[3][:, 0])
    return bad.tolist()


class ShardedReconciler:
    def __init__(self, engine, shards: Shards, cfg, tasks: list[str], train_sizes: dict[str, int], seed: int,
                 clip_norm: float):
        self.engine, self.method, self.tasks, self.seed = engine, cfg.method, list(tasks), seed
        self.task_index = {t: i for i, t in enumerate(self.tasks)}
        self.shards = shards
        self.groups = ShardGroups.of_module(engine.module, cfg.granularity, self.shards.segments(),
                                            self.shards.gram_segments())
        n_gas = dist.get_world_size(group=self.shards.dp_group) * engine.gradient_accumulation_steps()
        self.weigher = catalogue.weigher(cfg, len(self.groups), self.tasks, train_sizes, seed, n_gas,
                                         lambda: float(engine.get_lr()[0]), clip_norm)
        self.clip_norm = clip_norm if self.shards.clip_from_gram else 0.0
        self.row_numel = self.shards.numel            # values per task snapshot: this rank's partition
        self.buffer: Optional[torch.Tensor] = None   # [K, row_numel] fp32: the K task snapshots
        self.valid_buffer: Optional[torch.Tensor] = None
        self.losses = torch.zeros(0, 2, dtype=torch.float64)      # per task: summed loss, micro-batches
        self.valid_losses = torch.zeros(0, 2, dtype=torch.float64)
        self.k = self.k_valid = 0               # task rows captured so far this step
        self.traffic = Traffic()              # of the last step
        self.last_stats: Optional[StepStats] = None   # of the last reconciled step
        self.fired_total = 0                  # corrections fired since start (all groups, all pairs)
        self.timings = SplitTimings()
        self.sync_timings = False             # massive-mt bench: wait for the device at each split point

    @property
    def snapshot_bytes(self) -> int:
        """Bytes of the per-task snapshot buffers on this rank (the valid buffer included, once allocated)."""
        return sum(b.numel() * b.element_size() for b in (self.buffer, self.valid_buffer) if b is not None)

    def _buffer(self, buf: Optional[torch.Tensor], K: int) -> torch.Tensor:
        if buf is None or buf.shape[0] != K:
            buf = torch.empty(K, self.row_numel, dtype=torch.float32, device=self.engine.device)
        return buf

    def begin_step(self, K: int) -> None:
        """Before the first backward of a step of K tasks."""
        self.buffer = self._buffer(self.buffer, K)
        self.losses = torch.zeros(K, 2, dtype=torch.float64, device=self.engine.device)
        self.valid_losses = torch.zeros(0, 2, dtype=torch.float64)
        self.k = self.k_valid = 0
        self.traffic = Traffic()
        self.shards.begin_step()

    def capture(self, last: bool, loss_sum, n_micro: int) -> None:
        """This rank's partition of the task just finished (and the sum of its `n_micro` micro-batch
        losses on this rank, a float or a device tensor); clear the buffers unless it is the last task."""
        t0 = self._clock()
        self._snapshot(self.buffer[self.k])
        self.losses[self.k, 0] = loss_sum
        self.losses[self.k, 1] = n_micro
        self.k += 1
        if not last:
            self.shards.reset()
        self.timings.capture_s += self._clock() - t0

    def _snapshot(self, row: torch.Tensor) -> None:
        self.shards.snapshot(out=row)

    @property
    def meta_data(self) -> str:
        """Where the weigher's meta statistics come from: `valid` when it ever asks for a valid pass
        (the trainer then loads the valid split), else `train`."""
        return "valid" if self.weigher.valid_split else "train"

    def capture_valid(self, K: int, loss) -> None:
        """Keep the valid-split gradient just back-propagated (one micro-batch of one of the step's K
        tasks) and clear the buffers, so the training gradient of the step starts from zero."""
        t0 = self._clock()
        if self.k_valid == 0:
            self.valid_buffer = self._buffer(self.valid_buffer, K)
            self.valid_losses = torch.zeros(K, 2, dtype=torch.float64, device=self.engine.device)
        self.shards.snapshot(out=self.valid_buffer[self.k_valid])
        self.valid_losses[self.k_valid, 0] = loss
        self.valid_losses[self.k_valid, 1] = 1.0
        self.k_valid += 1
        self.shards.reset()
        self.timings.capture_s += self._clock() - t0

    def _clock(self) -> float:
        """The host clock at a split point of `timings`. GPU kernels run asynchronously: in bench mode
        (`sync_timings`, set by `massive-mt bench` only) the device's queued work is waited for
        first, so each phase is charged its own kernels; training never synchronises here."""
        if self.sync_timings:
            get_accelerator().synchronize()
        return time.perf_counter()

    def reconcile(self, step_tasks: list[str], step: int) -> tuple[Optional[StepStats], list[str]]:
        """Reconcile the step's captured tasks and write the update back. A task whose gradient or
        loss is not finite (`nonfinite_tasks`) is dropped: weight 0, left out of the reconciler and
        of its state. Returns the statistics of the kept tasks and the dropped tasks; when every
        task is dropped nothing is written back and the statistics are None: the caller skips the step."""
        t = self._clock
        t0 = t()
        S = self.buffer[:self.k]                                          # [K, local numel]
        parts = [self.groups.local_grams(S), self.losses]                 # [n_groups, K, K] partial, [K, 2]
        if self.k_valid:
            V = self.valid_buffer[:self.k_valid]
            parts += [self.groups.local_grams(V).sum(0), self.valid_losses]
            if self.weigher.cross_grams:
                parts.append(self.groups.local_grams(S, V))                # [n_groups, K, K] training x valid
        t1 = t()
        parts = self._all_reduce(parts, S.device)                         # the ONE collective
        t2 = t()
        bad = nonfinite_tasks(parts)                                      # identical on every rank
        keep = [i for i in range(self.k) if not bad[i]]
        dropped = [step_tasks[i] for i in range(self.k) if bad[i]]
        if not keep:                                                      # nothing left: the step is skipped
            return None, dropped
        sub = torch.tensor(keep)

        def square(x):                                                    # the kept rows and columns
            return x[..., sub, :][..., sub]

        valid = self.k_valid > 0
        kept = Statistics(square(parts[0]), parts[1][sub], square(parts[2]) if valid else None,
                          parts[3][sub] if valid else None, square(parts[4]) if len(parts) == 5 else None)
        w, stats = self._weights(kept, [step_tasks[i] for i in keep], step)
        weights = torch.zeros(w.shape[0], self.k, dtype=w.dtype)
        weights[:, sub] = w
        if dropped:
            S[torch.tensor(bad, device=S.device)] = 0.0                               # 0 * NaN would be NaN
        t3 = t()
        self.shards.write_back(self.groups.combine(S, weights))
        self._time(t0, t1, t2, t3, t())
        return self._finish(stats, kept.grams, w), dropped

    def _weights(self, kept: Statistics, step_tasks: list[str], step: int):
        """[n_groups, K] weights from the global statistics of the kept tasks: identical on every rank."""
        weights, stats = self.weigher.weights(kept, [self.task_index[x] for x in step_tasks], step)
        if self.clip_norm > 0:                                            # ||update||^2 = sum_g w^T G w
            norm = math.sqrt(max(float(update_norm_sq(kept.grams, weights).sum()), 0.0))
            weights = weights * min(1.0, self.clip_norm / (norm + 1e-6))
        return weights, stats

    def _time(self, t0: float, t1: float, t2: float, t3: float, t4: float) -> None:
        """Charge the split points of `reconcile()` to the Gram, all-reduce, weights and write-back phases."""
        self.timings.gram_s += t1 - t0
        self.timings.allreduce_s += t2 - t1
        self.timings.reconcile_s += t3 - t2
        self.timings.write_back_s += t4 - t3

    def _finish(self, stats: StepStats, grams: torch.Tensor, weights: torch.Tensor) -> StepStats:
        """The step's statistics with the all-reduced Grams and the update's [n_groups, K] weights."""
        self.fired_total += int(stats.n_fired.sum())
        stats.grams, stats.weights = grams, weights
        self.last_stats = stats
        return stats

    def _all_reduce(self, parts: list[torch.Tensor], device) -> list[torch.Tensor]:
        """Sum the fp64 statistics (on the device: the Grams and losses never left it) over the
        data-parallel group in one collective; the result comes to the host once, the step's one
        host synchronisation of its own."""
        flat = torch.cat([p.reshape(-1).to(device, non_blocking=True) for p in parts])   # NCCL: device tensors
        self.traffic.allreduce_bytes = flat.numel() * flat.element_size()
        dist.all_reduce(flat, group=self.shards.dp_group)
        flat, out, i = flat.cpu(), [], 0
        for p in parts:
            out.append(flat[i:i + p.numel()].view(p.shape))
            i += p.numel()
        return out

    def state_dict(self) -> dict:
        """The method, the group names and the weigher's state (`state`, and CATS's `cats`)."""
        return {"method": self.method, "groups": self.groups.names, **self.weigher.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        if sd["method"] != self.method or sd["groups"] != self.groups.names:
            raise ConfigError(f"field 'reconcile': the checkpoint was written with method {sd['method']!r} and "
                              f"{len(sd['groups'])} groups, this run uses {self.method!r} and {len(self.groups)}")
        try:
            self.weigher.load_state_dict(sd)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"field 'reconcile': the checkpoint's reconciler state does not fit this run: {e}") \
                from None
