"""The training step by strategy: what runs between the sampler's plan and the optimizer step.

`Trainer.train_step` asks its strategy to run one step's micro-batches and gets back one
`StepOutcome`; it then applies the update (`engine.step()`, or `zero_adapter.skip_step` on every
rank when the outcome says so), counts non-finite steps and logs. Two strategies:

- `PlainStep` (reconcile.method `plain`): DeepSpeed gradient accumulation, one accumulation
  boundary at the step's last micro-batch; a non-finite loss or gradient on any rank skips the step.
- `ReconciledStep` (every other method): every task's last micro-batch is a boundary after which
  the reconciler captures this rank's partition of that task's gradient; the reconciled update is
  written back before the optimizer step. CATS with `meta_data: valid` first runs its valid pass
  at a meta step. A non-finite task is dropped; the step is skipped when every task is.

Both decisions come from all-reduced values, so every rank takes the same one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Protocol

import numpy as np
import torch

from massive_mt.data.dataset import TaskDataset
from massive_mt.data.sampler import token_budget_batches
from massive_mt.data.tasks import task_name
from massive_mt.engine.zero_adapter import local_grads_nonfinite
from massive_mt.errors import ConfigError
from massive_mt.reconcile.stats import StepStats

Plan = list[tuple[str, list]]      # [(task, [this rank's micro-batches])], the sampler's plan of one step
# forward_backward(task, indices, k): one micro-batch of the step's k-th task back-propagated; its detached loss
ForwardBackward = Callable[[str, object, int], torch.Tensor]


@dataclass(frozen=True)
class StepOutcome:
    """What a step's micro-batches left for the optimizer step."""

    nonfinite: list[str] = field(default_factory=list)   # tasks whose loss or gradient is not finite on some rank
    skipped: bool = False                   # no update at all: zero_adapter.skip_step instead of engine.step()
    stats: Optional[StepStats] = None       # the reconciliation statistics of the kept tasks (ReconciledStep)


class StepStrategy(Protocol):
    def run(self, plan: Plan, step: int) -> StepOutcome:
        """Back-propagate the plan's micro-batches and prepare the gradient for the optimizer step."""


class PlainStep:
    """Plain gradient accumulation: one accumulation boundary, at the step's last micro-batch."""

    def __init__(self, engine, forward_backward: ForwardBackward):
        self.engine, self.forward_backward = engine, forward_backward

    def run(self, plan: Plan, step: int) -> StepOutcome:
        n_micro, done, losses = sum(len(mbs) for _, mbs in plan), 0, []
        for k, (task, micro_batches) in enumerate(plan):   # same task on every rank at this micro-step
            loss_sum = 0.0                                 # a device tensor after the first micro-batch
            for indices in micro_batches:
                done += 1
                self.engine.set_gradient_accumulation_boundary(done == n_micro)
                loss_sum += self.forward_backward(task, indices, k)
            losses.append(loss_sum)
        bad = self.nonfinite([task for task, _ in plan], losses)
        return StepOutcome(nonfinite=bad, skipped=bool(bad))

    def nonfinite(self, tasks: list[str], losses: list) -> list[str]:
        """Without per-task capture: the step's tasks whose loss is not finite on some rank, or all of
        them when only the accumulated gradient is (one all-reduce of K + 1 flags)."""
        import deepspeed.comm as dist
        device = self.engine.device
        flags = [~torch.isfinite(torch.as_tensor(x, device=device)).all() for x in losses]
        flags = torch.stack(flags + [local_grads_nonfinite(self.engine)]).to(torch.int32)   # no host sync
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        flags = flags.tolist()
        named = [t for t, f in zip(tasks, flags) if f]
        return named or (list(tasks) if flags[-1] else [])


class ReconciledStep:
    """Per-task capture and reconciliation (reconcile/sharded.py ShardedReconciler or a subclass).

    `loss(batch) -> (loss, nll_sum, n_tokens)`: the forward pass of the valid pass (no meter, no
    fault hook). `valid_sets`, `valid_batches`: CATS's valid split (`valid_split`), empty unless the
    reconciler's meta data is `valid`."""

    def __init__(self, engine, reconciler, forward_backward: ForwardBackward, loss: Callable, rank: int, world: int,
                 valid_sets: Optional[dict] = None, valid_batches: Optional[dict] = None):
        self.engine, self.reconciler, self.forward_backward, self.loss = engine, reconciler, forward_backward, loss
        self.rank, self.world = rank, world
        self.valid_sets, self.valid_batches = valid_sets or {}, valid_batches or {}

    def run(self, plan: Plan, step: int) -> StepOutcome:
        tasks = [task for task, _ in plan]
        self.reconciler.begin_step(len(plan))
        weigher = self.reconciler.weigher
        if weigher.needs_valid_statistics():                # CATS meta step on valid batches
            self.valid_pass(tasks, weigher.valid_batch_index())
        for k, (task, micro_batches) in enumerate(plan):   # same task on every rank at this micro-step
            loss_sum = 0.0                                 # a device tensor after the first micro-batch
            for j, indices in enumerate(micro_batches):
                self.engine.set_gradient_accumulation_boundary(j == len(micro_batches) - 1)
                loss_sum += self.forward_backward(task, indices, k)
            self.reconciler.capture(last=k == len(plan) - 1, loss_sum=loss_sum, n_micro=len(micro_batches))
        stats, dropped = self.reconciler.reconcile(tasks, step)        # one all-reduce, the write-back
        self.engine.set_gradient_accumulation_boundary(True)
        return StepOutcome(nonfinite=dropped, skipped=stats is None, stats=stats)

    def valid_pass(self, tasks: list[str], i: int) -> None:
        """CATS with `meta_data: valid`: one valid micro-batch per step task on each rank (rank r takes
        batch (i * N + r) mod n of the task's n valid batches, i the weigher's meta step), forward/backward
        in eval mode (no dropout, no random numbers drawn), its gradient partition captured apart. The
        buffers are cleared after each, so the training gradient of the step starts from zero."""
        self.engine.eval()
        for task in tasks:
            batches = self.valid_batches[task]
            batch = self.valid_sets[task].collate(batches[(i * self.world + self.rank) % len(batches)])
            self.engine.set_gradient_accumulation_boundary(True)
            loss, _, _ = self.loss(batch)
            self.engine.backward(loss)
            self.reconciler.capture_valid(len(tasks), loss.detach())
        self.engine.train()


def valid_split(data_bin: Path, tasks: list[tuple[str, str]], cfg) -> tuple[dict, dict]:
    """The valid split of every task, in token-budget micro-batches (CATS `meta_data: valid`):
    ({task: TaskDataset}, {task: [micro-batches]}), the batches shuffled once with the sampling seed."""
    max_tokens = cfg.reconcile.cats.valid_max_tokens or cfg.sampling.max_tokens
    sets, batches = {}, {}
    for t in tasks:
        ds = TaskDataset(data_bin, t[0], t[1], split="valid", max_len=cfg.data.max_len)
        if len(ds) == 0:
            raise ConfigError(f"field 'reconcile.cats.meta_data': task {task_name(t)} has no valid "
                              f"sentences in {data_bin}; use meta_data: train")
        sets[task_name(t)] = ds
        b = token_budget_batches(ds.sizes_src, ds.sizes_tgt, max_tokens, seed=cfg.sampling.seed)
        order = np.random.default_rng(cfg.sampling.seed).permutation(len(b))    # mixed lengths over meta steps
        batches[task_name(t)] = [b[i] for i in order]
    return sets, batches
