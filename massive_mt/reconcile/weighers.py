"""What the sharded reconciler asks for a step's weights: a weigher (reconcile/sharded.py).

The reconciler captures, all-reduces, drops non-finite tasks, clips from the Gram and writes
back; a weigher turns the step's all-reduced `Statistics` into the [n_groups, K] weights of the
update and holds the state that goes into checkpoints. Two kinds:

- `MethodWeigher`: a registered Gram method (reconcile/methods.py: sum, pcgrad, gradvac), with
  its state and the keyword arguments its options give for the run;
- `CATSWeigher`: CATS around a base `MethodWeigher`: it scales the base's corrected gradients
  with its task scales (reconcile/cats.py) and takes its meta step, and says when it needs the
  valid split's statistics (`meta_data: valid`) and the training-valid cross Grams (`lookahead`).

Everything here is float64 on the CPU and identical on every rank: no collectives, no DeepSpeed.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

from torch import Tensor

from massive_mt.errors import ConfigError
from massive_mt.reconcile.cats import CATSConfig, CATSState, LookAhead, check_state, corrected_gram, is_meta_step
from massive_mt.reconcile.cats import cats as cats_weights
from massive_mt.reconcile.methods import make_state, reconcile, step_generator
from massive_mt.reconcile.stats import CATSStepStats, StepStats


class Statistics(NamedTuple):
    """A step's all-reduced statistics over its kept tasks (float64, CPU, step-local task order)."""

    grams: Tensor                           # [n_groups, K, K] Grams of the captured task gradients
    losses: Tensor                          # [K, 2]: each task's summed micro-batch losses, micro-batches
    valid_gram: Optional[Tensor] = None     # [K, K] whole-model Gram of the valid gradients (valid pass)
    valid_losses: Optional[Tensor] = None   # [K, 2] their losses, micro-batches
    cross: Optional[Tensor] = None          # [n_groups, K, K] training x valid Grams (cross_grams)


class MethodWeigher:
    """A registered Gram method: its weights from the step's Grams, its state, its keywords."""

    reads_losses = False      # whether the weights depend on the tasks' losses
    valid_split = False       # whether it ever needs a valid pass (`needs_valid_statistics`)
    cross_grams = False       # whether it needs the training-valid cross Grams with the valid statistics

    def __init__(self, method: str, n_groups: int, n_tasks: int, keywords: dict, seed: int):
        self.method, self.keywords, self.seed = method, keywords, seed
        self.state = make_state(method, n_groups, n_tasks)

    def needs_valid_statistics(self) -> bool:
        """Whether this step needs the valid pass before its training micro-batches."""
        return False

    def weights(self, s: Statistics, ids: list[int], step: int) -> tuple[Tensor, StepStats]:
        """[n_groups, K] weights and the step's statistics; `ids`: the kept tasks' global ids."""
        return reconcile(self.method, s.grams, ids, self.state, step_generator(self.seed, step), **self.keywords)

    def state_dict(self) -> dict:
        return {"state": self.state.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        """Raises KeyError or ValueError for a state that does not fit."""
        self.state.load_state_dict(sd["state"])


class CATSWeigher:
    """CATS around a base method. Units: the captured gradient of a task is
    (1 / (N * gas)) * (sum of its micro-batch loss gradients over all ranks), and its mean loss
    L_i averages n_i micro-batches, so grad L_i = (N * gas / n_i) * captured (`n_gas` = N * gas).
    The meta Gram is that of the corrected training gradients, or of the valid gradients
    (`cats.meta_data: valid`). Objective `lookahead`: the update is sum_j w_j * captured_j, so the
    cross Grams keep the captured training gradients and take the valid ones as gradients of their
    mean losses; `lr()` is the learning rate `engine.step()` applies at this step (warm-up
    included), `clip_norm` the update's clipping threshold."""

    reads_losses = True

    def __init__(self, base: MethodWeigher, cfg: CATSConfig, n_tasks: int, n_gas: int, lr: Callable[[], float],
                 clip_norm: float):
        self.base, self.cfg, self.n_gas, self.lr, self.clip_norm = base, cfg, n_gas, lr, clip_norm
        self.state = CATSState.uniform(n_tasks, cfg.param)
        self.valid_split = cfg.meta_data == "valid"
        self.cross_grams = cfg.objective == "lookahead"

    def needs_valid_statistics(self) -> bool:
        """With `meta_data: valid`, at a meta step: the valid pass runs before the training micro-batches."""
        return self.valid_split and is_meta_step(self.state, self.cfg)

    def valid_batch_index(self) -> int:
        """Which valid micro-batch this meta step uses (the valid pass takes batch index * N + rank)."""
        return self.state.meta_steps

    def weights(self, s: Statistics, ids: list[int], step: int) -> tuple[Tensor, StepStats]:
        _, stats = self.base.weights(s, ids, step)
        valid = s.valid_gram is not None
        gram, losses = (s.valid_gram, s.valid_losses) if valid else (corrected_gram(s.grams, stats.coef), s.losses)
        scale = self.n_gas / losses[:, 1]
        meta_gram = gram * scale[:, None] * scale[None, :]
        look = None
        if s.cross is not None:
            look = LookAhead(s.cross * scale[None, None, :], s.grams, self.lr(), self.clip_norm)
        weights, cats = cats_weights(stats.coef, ids, self.state, self.cfg, losses[:, 0] / losses[:, 1], meta_gram, look)
        stats.cats = CATSStepStats.of(cats)
        return weights, stats

    def state_dict(self) -> dict:
        return dict(self.base.state_dict(), cats=dict(self.state.state_dict(), param=self.cfg.param,
                                                      floor=self.cfg.floor))

    def load_state_dict(self, sd: dict) -> None:
        """A checkpoint of another parameterisation or floor is refused naming the field; raises
        KeyError or ValueError for a state that does not fit."""
        for name in ("param", "floor"):
            if sd["cats"][name] != getattr(self.cfg, name):
                raise ConfigError(f"field 'reconcile.cats.{name}': the checkpoint was written with "
                                  f"{sd['cats'][name]!r}, this run uses {getattr(self.cfg, name)!r}")
        self.base.load_state_dict(sd)
        self.state.load_state_dict(sd["cats"])
        check_state(self.state, self.cfg)
