"""Task sampling and token-budget batching for multi-task (multi-direction) training.

* :func:`temperature_probs` -- temperature-scaled task (or language) distribution.
* :func:`token_budget_batches` -- fairseq-style length-bucketed micro-batches of one task.
* :class:`TaskStepSampler` -- the deterministic, resumable plan of which tasks and which
  micro-batches each rank trains on at every optimizer step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from massive_mt.errors import ConfigError

# Appended to the permutation seeds so that they can never coincide with the task-choice
# seed [seed, step] (SeedSequence pads short entropy with zeros: [s, 5] == [s, 5, 0]).
_PERMUTATION_STREAM = 0x5EED


def temperature_probs(sizes: Sequence[float], T: float) -> np.ndarray:
    """Return p_i = q_i^(1/T) / sum_k q_k^(1/T) with q_i = n_i / sum(n).

    T=1 is proportional to size, larger T flattens towards uniform, T=inf is uniform.
    """
    n = np.asarray(sizes, dtype=np.float64)
    if n.ndim != 1 or n.size == 0:
        raise ConfigError(f"temperature_probs: sizes must be a non-empty 1-D sequence, got shape {n.shape}")
    if not np.all(np.isfinite(n)) or np.any(n <= 0):
        raise ConfigError(f"temperature_probs: every size must be a positive finite number, got {n.tolist()}")
    if not (isinstance(T, (int, float)) and not math.isnan(T)) or T <= 0:
        raise ConfigError(f"temperature must be > 0 (or inf for uniform), got {T!r}")
    if math.isinf(T):
        return np.full(n.size, 1.0 / n.size)
    # Softmax of log(q)/T: stable for extreme size ratios and large T.
    logits = (np.log(n) - np.log(n.sum())) / T
    p = np.exp(logits - logits.max())
    return p / p.sum()


def token_budget_batches(
    src_sizes: Sequence[int],
    tgt_sizes: Sequence[int],
    max_tokens: int,
    max_sentences: int | None = None,
    seed: int = 0,
) -> list[np.ndarray]:
    """Group sentence indices into length-bucketed batches under a padded token budget.

    Sentences are sorted by max(src, tgt) length (ties broken by a seeded random order)
    and packed greedily so that ``len(batch) * longest_in_batch <= max_tokens`` (padding
    included) and ``len(batch) <= max_sentences``. Every index appears in exactly one
    batch. Batches come out shortest first; shuffle their order per epoch.
    """
    src = np.asarray(src_sizes, dtype=np.int64)
    tgt = np.asarray(tgt_sizes, dtype=np.int64)
    if src.ndim != 1 or src.shape != tgt.shape:
        raise ConfigError(f"src_sizes and tgt_sizes must be 1-D of equal length, got {src.shape} and {tgt.shape}")
    if int(max_tokens) != max_tokens or max_tokens < 1:
        raise ConfigError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if max_sentences is not None and (int(max_sentences) != max_sentences or max_sentences < 1):
        raise ConfigError(f"max_sentences must be a positive integer or None, got {max_sentences!r}")
    if src.size == 0:
        return []
    lengths = np.maximum(src, tgt)
    if lengths.min() < 1:
        raise ConfigError("token_budget_batches: sentence lengths must be >= 1")
    if lengths.max() > max_tokens:
        raise ConfigError(
            f"max_tokens={max_tokens} is smaller than a sentence of {int(lengths.max())} tokens; "
            f"raise max_tokens or lower the dataset max_len (it must be <= max_tokens)"
        )

    tiebreak = np.random.default_rng(seed).random(lengths.size)
    order = np.lexsort((tiebreak, lengths))
    sorted_len = lengths[order]
    cap = int(max_sentences) if max_sentences is not None else lengths.size

    batches = []
    start = 0
    while start < order.size:
        # Lengths are non-decreasing, so k * sorted_len[start + k - 1] is increasing in k and
        # the fitting candidates form a prefix: take its length.
        limit = min(cap, max_tokens // int(sorted_len[start]), order.size - start)
        window = sorted_len[start : start + limit]
        fits = np.arange(1, window.size + 1) * window <= max_tokens
        take = window.size if fits.all() else int(np.argmin(fits))
        batches.append(order[start : start + take])
        start += take
    return batches


def elastic_micro_batches(saved_m: int, saved_world: int, world: int, configured_m: int) -> tuple[int, str]:
    """m (micro-batches per task per rank) for a resume on ``world`` ranks of a run that took
    ``saved_m * saved_world`` micro-batches per task per step, and a sentence saying what changes.

    The global batch is kept where it divides: m = saved_m * saved_world / world. Otherwise m is
    the configured one (sampling.micro_batches_per_task) and the step's batch per task changes
    from saved_m * saved_world to configured_m * world micro-batches.
    """
    total = saved_m * saved_world
    if total % world == 0:
        m = total // world
        return m, (f"{total} micro-batches per task per step kept: m = {saved_m} -> {m} per rank "
                   f"(world size {saved_world} -> {world})")
    return configured_m, (f"{total} micro-batches per task per step (m = {saved_m} x world size {saved_world}) "
                          f"cannot be split over {world} ranks: m = {configured_m} "
                          f"(sampling.micro_batches_per_task), so a step now takes {configured_m * world} "
                          f"micro-batches per task; the batch, the gradient noise and the data consumed "
                          f"per step change by a factor {configured_m * world / total:.3g}")


class TaskStepSampler:
    """Deterministic, resumable plan of tasks and micro-batches for every training step.

    At step ``s`` the K tasks are drawn *without replacement* from ``probs`` with
    ``np.random.default_rng([seed, s])`` and listed in task-index order, so every rank
    derives the same tasks from (seed, step) alone. For each chosen task the world
    consumes the next ``m * world_size`` micro-batches of that task's current epoch order
    (a permutation seeded by (seed, task index, epoch), continuing into the next epoch when
    one runs out); rank ``r`` gets positions ``j * world_size + r`` for ``j < m``. Hence all
    ranks train the same task at the same micro-step on different micro-batches (a batch
    can repeat within a step only across an epoch boundary or when a task has fewer than
    ``m * world_size`` batches).

    ``probs`` is the per-draw distribution. Drawing K *distinct* tasks flattens it: the
    probability that a task is trained at a step is not K * p_i, and when K is a large
    fraction of the task count every task approaches inclusion probability 1. Log both
    ``probs`` and :meth:`task_frequencies`.

    The state (step, per-task epoch and cursor) is rank-independent: ``state_dict()`` from
    any rank resumes all ranks, and the plans after ``load_state_dict`` equal those of an
    uninterrupted run.

    Another world size (``load_state_dict(state, elastic=True)``): the task sequence is a
    function of (seed, step) and the cursors count micro-batches of the whole world, so both
    carry over to any N. What N changes is how many micro-batches a step takes per task,
    ``m * N``; :func:`elastic_micro_batches` picks the new m that keeps it.
    """

    STATE_VERSION = 1

    def __init__(
        self,
        tasks: Sequence[str],
        batches: Mapping[str, Sequence[np.ndarray]],
        probs: Sequence[float],
        tasks_per_step: int,
        micro_batches_per_task: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
    ):
        self.tasks = list(tasks)
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"tasks must be a non-empty list of distinct names, got {self.tasks}")
        missing = [t for t in self.tasks if t not in batches or len(batches[t]) == 0]
        if missing:
            raise ConfigError(f"tasks without micro-batches: {missing}")
        p = np.asarray(probs, dtype=np.float64)
        if p.shape != (len(self.tasks),) or not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
            raise ConfigError(f"probs must be {len(self.tasks)} non-negative numbers, got {list(probs)}")
        self.probs = p / p.sum()
        for name, value, low in (
            ("tasks_per_step", tasks_per_step, 1),
            ("micro_batches_per_task", micro_batches_per_task, 1),
            ("world_size", world_size, 1),
            ("rank", rank, 0),
            ("seed", seed, 0),
        ):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if tasks_per_step > len(self.tasks):
            raise ConfigError(f"tasks_per_step={tasks_per_step} exceeds the number of tasks ({len(self.tasks)})")
        if tasks_per_step > np.count_nonzero(self.probs):
            raise ConfigError(
                f"tasks_per_step={tasks_per_step} exceeds the number of tasks with non-zero probability "
                f"({np.count_nonzero(self.probs)})"
            )
        if rank >= world_size:
            raise ConfigError(f"rank={rank} must be < world_size={world_size}")

        self.batches = {t: list(batches[t]) for t in self.tasks}
        self.tasks_per_step = int(tasks_per_step)
        self.micro_batches_per_task = int(micro_batches_per_task)
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.seed = int(seed)
        self.step = 0  # the next step plan() expects
        self._epoch = [0] * len(self.tasks)
        self._cursor = [0] * len(self.tasks)
        self._perm_cache: dict[int, tuple[int, np.ndarray]] = {}

    # -- planning -------------------------------------------------------------------------

    def choose_tasks(self, step: int) -> list[int]:
        """Indices of the K tasks of ``step`` (ascending); a pure function of (seed, step)."""
        rng = np.random.default_rng([self.seed, int(step)])
        chosen = rng.choice(len(self.tasks), size=self.tasks_per_step, replace=False, p=self.probs)
        return sorted(int(i) for i in chosen)

    def _permutation(self, task_index: int, epoch: int) -> np.ndarray:
        cached = self._perm_cache.get(task_index)
        if cached is None or cached[0] != epoch:
            rng = np.random.default_rng([self.seed, task_index, epoch, _PERMUTATION_STREAM])
            cached = (epoch, rng.permutation(len(self.batches[self.tasks[task_index]])))
            self._perm_cache[task_index] = cached
        return cached[1]

    def _take(self, task_index: int, count: int) -> list[int]:
        """Advance the task's (epoch, cursor) by ``count`` batches; return their batch ids."""
        n = len(self.batches[self.tasks[task_index]])
        taken: list[int] = []
        while len(taken) < count:
            epoch, cursor = self._epoch[task_index], self._cursor[task_index]
            k = min(count - len(taken), n - cursor)
            taken.extend(int(b) for b in self._permutation(task_index, epoch)[cursor : cursor + k])
            cursor += k
            if cursor == n:
                epoch, cursor = epoch + 1, 0
            self._epoch[task_index], self._cursor[task_index] = epoch, cursor
        return taken

    def plan(self, step: int) -> list[tuple[str, list[np.ndarray]]]:
        """Return ``[(task, [m micro-batches of this rank]), ...]`` for ``step`` and advance.

        Steps must be planned in order 0, 1, 2, ... (continuing from a loaded state);
        any other step raises ConfigError.
        """
        if step != self.step:
            raise ConfigError(
                f"TaskStepSampler.plan: expected step {self.step}, got {step} "
                f"(sampler state and trainer step disagree; was the right sampler state resumed?)"
            )
        m, world = self.micro_batches_per_task, self.world_size
        out = []
        for ti in self.choose_tasks(step):
            ids = self._take(ti, m * world)
            task = self.tasks[ti]
            out.append((task, [self.batches[task][ids[j * world + self.rank]] for j in range(m)]))
        self.step += 1
        return out

    def task_frequencies(self, num_steps: int, start: int = 0) -> np.ndarray:
        """Fraction of task draws per task over steps [start, start + num_steps) (sums to 1).

        Does not change the state; compare with ``probs`` to see the flattening of
        drawing K distinct tasks per step.
        """
        counts = np.zeros(len(self.tasks))
        for s in range(start, start + num_steps):
            counts[self.choose_tasks(s)] += 1
        return counts / max(counts.sum(), 1)

    # -- checkpointing --------------------------------------------------------------------

    def _signature(self) -> dict:
        return {
            "seed": self.seed,
            "tasks": self.tasks,
            "tasks_per_step": self.tasks_per_step,
            "micro_batches_per_task": self.micro_batches_per_task,
            "world_size": self.world_size,
            "num_batches": [len(self.batches[t]) for t in self.tasks],
            "probs": self.probs.tolist(),
        }

    def state_dict(self) -> dict:
        """JSON-serialisable state (identical on every rank)."""
        return {
            "version": self.STATE_VERSION,
            **self._signature(),
            "step": self.step,
            "epoch": list(self._epoch),
            "cursor": list(self._cursor),
        }

    def load_state_dict(self, state: Mapping, elastic: bool = False) -> None:
        """Restore a state saved by :meth:`state_dict`; ConfigError if it does not match this sampler.

        ``elastic``: the state may come from another world size and m (see the class doc); the
        step, the task sequence and the per-task (epoch, cursor) carry over unchanged."""
        if not isinstance(state, Mapping) or state.get("version") != self.STATE_VERSION:
            raise ConfigError(
                f"sampler state: unsupported version {state.get('version') if isinstance(state, Mapping) else state!r}"
            )
        mine = self._signature()
        if elastic:
            del mine["world_size"], mine["micro_batches_per_task"]
        for key, value in mine.items():
            saved = state.get(key)
            same = (
                saved is not None and len(saved) == len(value) and np.allclose(saved, value, rtol=1e-9, atol=1e-12)
                if key == "probs"
                else saved == value
            )
            if not same:
                raise ConfigError(
                    f"cannot resume sampler: '{key}' was {saved!r} in the checkpoint but is {value!r} now "
                    f"(resuming exactly requires the same tasks, batching, seed, K, m and world size)"
                )
        n = len(self.tasks)
        epoch, cursor, step = state.get("epoch"), state.get("cursor"), state.get("step")
        if (
            not isinstance(step, int)
            or step < 0
            or not isinstance(epoch, list)
            or not isinstance(cursor, list)
            or len(epoch) != n
            or len(cursor) != n
            or any(not 0 <= c < len(self.batches[t]) for c, t in zip(cursor, self.tasks))
            or any(e < 0 for e in epoch)
        ):
            raise ConfigError("cannot resume sampler: malformed 'step', 'epoch' or 'cursor' in the checkpoint")
        self.step = step
        self._epoch = [int(e) for e in epoch]
        self._cursor = [int(c) for c in cursor]
        self._perm_cache.clear()
