"""Multi-task gradient reconcilers computed from per-group Gram matrices (docs/algorithms.md#the-gram-matrix-form).

Notation. A step has K tasks with step-local indices 0..K-1; `task_ids[i]` is the global
index (0..T-1) of local task i. For parameter group k, `grams[k, i, j] = g_ik . g_jk`.
A corrected task gradient is kept in coefficient form `g'_i = sum_j C[i, j] g_j` (C = I at
the start), so that

    ||g'_i||^2 = C[i] G C[i]^T,    g'_i . g_j = (C G)[i, j],

and the update of group k is `sum_j w[k, j] g_jk` with `w = 1^T C` (the column sums of C).

Random visiting order. For each group k = 0..n_groups-1 (group-major), then for each
corrected task i in ascending step-local order (PCGrad: every task; GradVac: the vaccinated
tasks only), one `torch.randperm(K - 1, generator=generator)` is drawn and task i visits
`others[perm]`, where `others = [j for j in range(K) if j != i]`. The draws never depend
on the gradient values (a task taking no part, or a group that gets the `sum` update, still
draws); nothing is drawn when K < 2 or for `sum`.

Zero and non-finite values. In group k a task whose squared norm G[t, t] is not finite takes
no part: it is not corrected (weight 1) and never serves as j. If entries among the
remaining tasks are still not finite, the whole group gets the `sum` update (all-ones
weights). A visit (i, j) is unusable (it does not fire and moves no EMA target) when either
task takes no part, ||g_j|| = 0 or ||g'_i|| = 0. Such groups are flagged `nonfinite` in the stats. The trainer
never gets here with a non-finite task: ShardedReconciler drops such a task from the step first
(docs/failures.md#non-finite-values).

Everything is float64 on the CPU; the scalar recurrences run on Python floats (IEEE double).

Registry. Each method is one function `correct(grams, task_ids, state, generator, **keywords)`
returning its Corrections, registered by name with `@register(name, make_state=..., options=...)`,
where `options` is the pydantic model of the fields it reads from the `reconcile` config section
(a `MethodOptions`; none by default), which also turns them into its keywords for a run;
`reconcile()` and `make_state()` dispatch on the name, and the catalogue (reconcile/catalogue.py)
from which the experiment config, the CLI and `massive-mt bench` take their names lists every
registered method. Adding a method is one registered function here and its test.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Annotated, Callable, NamedTuple, Optional

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from massive_mt.errors import ConfigError
from massive_mt.reconcile.stats import StepStats, visits

F64 = torch.float64
EMA_RATE = 0.01     # GradVac's default EMA rate of the targets phi_hat (docs/algorithms.md#gradvac)
# GradVac corrects only when 1 - T^2 >= GRADVAC_TOL: the coefficient divides by sqrt(1 - T^2), and a
# cosine error d moves it by about d / (1 - T^2) ||g'_i|| / ||g_j|| (docs/algorithms.md#gradvac)
GRADVAC_TOL = 1e-6


class MethodOptions(BaseModel):
    """The options a method reads: fields of the `reconcile` config section, typed with their bounds
    (the config refuses one that the chosen method does not read: engine/config.py `check`). This
    base has none; a method's own model subclasses it and says how its fields become the keyword
    arguments of its function for a run."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    def keywords(self, tasks: list[str], train_sizes: dict[str, int]) -> dict:
        """The keyword arguments of the method's function for a run over `tasks` (with their training sizes)."""
        return {}


class GradVacOptions(MethodOptions):
    """GradVac's options (docs/algorithms.md#gradvac)."""

    ema_rate: float = Field(EMA_RATE, ge=0, le=1)    # EMA rate of the cosine targets
    # tasks to correct (None = all), or ["low_resource"]
    vaccinate: Optional[Annotated[list[Annotated[str, Field(pattern=r"\S")]], Field(min_length=1)]] = None
    low_resource_quantile: float = Field(0.5, gt=0, le=1)  # with vaccinate: [low_resource], tasks below this quantile

    def keywords(self, tasks: list[str], train_sizes: dict[str, int]) -> dict:
        return {"ema_rate": self.ema_rate,
                "vaccinate_ids": vaccinate_ids(self.vaccinate, tasks, train_sizes, self.low_resource_quantile)}


def vaccinate_ids(spec: Optional[list], tasks: list[str], train_sizes: dict[str, int],
                  quantile: float) -> Optional[frozenset]:
    """GradVac's vaccinated subset as global task ids: None (all), explicit tasks, or
    ["low_resource"]: the tasks whose training size is below the given quantile."""
    if spec is None:
        return None
    if spec == ["low_resource"]:
        cut = float(np.quantile([train_sizes[t] for t in tasks], quantile))
        return frozenset(i for i, t in enumerate(tasks) if train_sizes[t] <= cut)
    unknown = sorted(set(spec) - set(tasks))
    if unknown:
        raise ConfigError(f"field 'reconcile.vaccinate': {unknown} are not tasks of this run")
    return frozenset(tasks.index(t) for t in spec)


@dataclass(frozen=True)
class Method:
    """A reconciler: `correct(grams, task_ids, state, generator, **keywords) -> Corrections`, a pure
    function of the step's Gram matrices (float64, CPU) that may update its own `state`;
    `make_state(n_groups, n_tasks)` gives a fresh state for `n_tasks` tasks in the run; `options`:
    the model of its config options (a `MethodOptions`); `keywords`: the keyword arguments
    `correct` takes after its four positional ones."""

    name: str
    correct: Callable
    make_state: Callable
    options: type = MethodOptions
    keywords: tuple = ()


METHODS: dict[str, Method] = {}     # name -> Method, in the order of registration


def register(name: str, make_state: Optional[Callable] = None, options: type = MethodOptions):
    """Decorator: register `correct` as reconcile method `name`, reading the config options of the
    `options` model (the catalogue, reconcile/catalogue.py, lists it for the config, CLI and bench)."""
    if not (isinstance(options, type) and issubclass(options, MethodOptions)):
        raise TypeError(f"method {name!r}: options must be a MethodOptions model, got {options!r}")

    def deco(correct: Callable) -> Callable:
        keywords = tuple(list(inspect.signature(correct).parameters)[4:])
        METHODS[name] = Method(name, correct, make_state or (lambda n_groups, n_tasks: NoState()), options, keywords)
        return correct
    return deco


@dataclass
class NoState:
    """State of the stateless methods (`sum`, `pcgrad`)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        if sd:
            raise ValueError(f"stateless reconciler got state {sorted(sd)}")


@dataclass
class GradVacState:
    """phi_hat[k, a, b]: EMA target of cos(g'_a, g_b) in group k, by GLOBAL task ids a, b."""

    phi_hat: Tensor  # [n_groups, n_tasks, n_tasks] float64 over the run's n_tasks tasks, starts at 0

    @classmethod
    def zeros(cls, n_groups: int, n_tasks: int) -> "GradVacState":
        return cls(torch.zeros(n_groups, n_tasks, n_tasks, dtype=F64))

    def state_dict(self) -> dict:
        return {"phi_hat": self.phi_hat.clone()}

    def load_state_dict(self, sd: dict) -> None:
        phi_hat = torch.as_tensor(sd["phi_hat"]).detach().to("cpu", F64).clone()
        if phi_hat.shape != self.phi_hat.shape:
            raise ValueError(f"GradVac phi_hat has shape {tuple(phi_hat.shape)}, expected "
                             f"{tuple(self.phi_hat.shape)} (n_groups, n_tasks, n_tasks)")
        if not (torch.isfinite(phi_hat).all() and phi_hat.abs().le(1).all()):
            raise ValueError("GradVac phi_hat must be finite and within [-1, 1]")
        self.phi_hat = phi_hat


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown reconcile method {name!r}; one of {tuple(METHODS)}")
    return METHODS[name]


def make_state(method: str, n_groups: int, n_tasks: int):
    """Fresh state of `method` for `n_groups` parameter groups and `n_tasks` tasks in the run."""
    return get_method(method).make_state(n_groups, n_tasks)


class Corrections(NamedTuple):
    coef: Tensor       # [n_groups, K, K] C: g'_i = sum_j C[i, j] g_j
    visited: Tensor    # [n_groups, K, K] bool: visit (i, j) made (reconcile/stats.py)
    fired: Tensor      # [n_groups, K, K] bool: g'_i was corrected against g_j
    unusable: Tensor   # [n_groups, K, K] bool: visit (i, j) met a zero or non-finite norm (did not fire)
    nonfinite: Tensor  # [n_groups] bool: a non-finite value was met in the group


# ---------------------------------------------------------------------------------------------
# helpers on one group (nested Python lists of floats)

def _visit_orders(generator: torch.Generator, K: int, rows) -> dict[int, list[int]]:
    """The tasks j != i that row i visits, in the order of one randperm(K - 1) per row."""
    if K < 2:
        return {}
    orders = {}
    for i in rows:
        others = [j for j in range(K) if j != i]
        orders[i] = [others[p] for p in torch.randperm(K - 1, generator=generator).tolist()]
    return orders


def _prepare(G: Tensor) -> tuple[list, list, bool]:
    """(G with non-finite tasks zeroed, usable[t] = finite and non-zero norm, nonfinite)."""
    d = G.diagonal()
    part = torch.isfinite(d)
    nonfinite = not bool(torch.isfinite(G).all())
    if not torch.isfinite(G[part][:, part]).all():
        part = torch.zeros_like(part)  # no consistent sub-Gram: the `sum` update
    Gz = torch.where(part[:, None] & part[None, :], G, torch.zeros((), dtype=F64))
    return Gz.tolist(), (part & (d > 0)).tolist(), nonfinite


def _dot(x: list, y: list) -> float:
    return sum(a * b for a, b in zip(x, y))


def _run(grams: Tensor, generator: torch.Generator, rows, solve: Callable) -> Corrections:
    """Per group: draw the visiting orders, then `solve(k, G, usable, orders, C, fired, unusable)`
    fills the identity-initialised C and the flags."""
    n_groups, K, _ = grams.shape
    coef, fired, unusable, nonfinite = [], [], [], []
    for k in range(n_groups):
        orders = _visit_orders(generator, K, rows)
        G, usable, bad = _prepare(grams[k])
        C = [[float(i == j) for j in range(K)] for i in range(K)]
        f = [[False] * K for _ in range(K)]
        s = [[False] * K for _ in range(K)]
        solve(k, G, usable, orders, C, f, s)
        coef.append(C)
        fired.append(f)
        unusable.append(s)
        nonfinite.append(bad)
    shape = (n_groups, K, K)
    return Corrections(torch.tensor(coef, dtype=F64).reshape(shape), visits(K, rows, n_groups),
                       torch.tensor(fired, dtype=torch.bool).reshape(shape),
                       torch.tensor(unusable, dtype=torch.bool).reshape(shape),
                       torch.tensor(nonfinite, dtype=torch.bool).reshape(n_groups))


def _visit(usable, i, j, c, r) -> Optional[float]:
    """||g'_i|| when visit (i, j) can be made (both usable, 0 < ||g'_i|| < inf), else None."""
    nsq = _dot(c, r)
    return math.sqrt(nsq) if usable[i] and usable[j] and 0.0 < nsq < math.inf else None


def _add(G, c, r, a, j) -> None:
    """g'_i += a g_j: C[i, j] += a and (C G)[i] += a G[j]."""
    c[j] += a
    r[:] = [x + a * y for x, y in zip(r, G[j])]


# ---------------------------------------------------------------------------------------------
# methods

@register("sum")
def sum_method(grams: Tensor, task_ids: list[int], state, generator: torch.Generator) -> Corrections:
    """The K task gradients added unchanged: update = sum_i g_i (C = I, w = 1)."""
    n_groups, K, _ = grams.shape
    z = torch.zeros(n_groups, K, K, dtype=torch.bool)
    return Corrections(torch.eye(K, dtype=F64).expand(n_groups, K, K).clone(), z, z.clone(), z.clone(),
                       ~torch.isfinite(grams).flatten(1).all(1))


@register("pcgrad")
def pcgrad(grams: Tensor, task_ids: list[int], state, generator: torch.Generator) -> Corrections:
    """PCGrad (docs/algorithms.md#pcgrad), every task i, j in random order:
    if g'_i . g_j < 0:  g'_i <- g'_i - (g'_i . g_j / ||g_j||^2) g_j   (g_j ORIGINAL),
    i.e. C[i, j] -= (C G)[i, j] / G[j, j]."""
    K = grams.shape[1]

    def solve(k, G, usable, orders, C, fired, unusable):
        for i, order in orders.items():
            c, r = C[i], list(G[i])
            for j in order:
                if _visit(usable, i, j, c, r) is None:
                    unusable[i][j] = True
                elif r[j] < 0:
                    a = -r[j] / G[j][j]
                    if math.isfinite(a):
                        _add(G, c, r, a, j)
                        fired[i][j] = True

    return _run(grams, generator, range(K), solve)


@register("gradvac", make_state=GradVacState.zeros, options=GradVacOptions)
def gradvac(grams: Tensor, task_ids: list[int], state: GradVacState, generator: torch.Generator,
            ema_rate: float = EMA_RATE, vaccinate_ids=None) -> Corrections:
    """GradVac, Algorithm 1 of Wang et al. 2021 (docs/algorithms.md#gradvac). Per group k, for each
    vaccinated task i, for j != i in random order, with T = phi_hat[k, task_ids[i], task_ids[j]]:
        phi = cos(g'_i, g_j)                          (g'_i corrected so far, g_j ORIGINAL)
        if phi < T:  g'_i += ||g'_i|| (T sqrt(1-phi^2) - phi sqrt(1-T^2)) / (||g_j|| sqrt(1-T^2)) g_j
        T <- (1 - ema_rate) T + ema_rate phi          (every visit, after the test)
    After a correction cos(g'_i, g_j) = T. A correction is left out when 1 - T^2 < GRADVAC_TOL
    (|T| within 5e-7 of 1: the coefficient would be rounding noise); the target still moves.
    vaccinate_ids: the global task ids to correct (None: all). state.phi_hat is replaced by the new
    targets."""
    if not 0.0 <= ema_rate <= 1.0:
        raise ValueError(f"GradVac ema_rate must be in [0, 1], got {ema_rate}")
    n_groups, n_tasks = state.phi_hat.shape[:2]
    if n_groups != grams.shape[0] or not all(0 <= t < n_tasks for t in task_ids):
        raise ValueError(f"GradVac state is for {n_groups} groups and {n_tasks} tasks; got grams "
                         f"{tuple(grams.shape)} and task_ids {task_ids}")
    ids = torch.tensor(task_ids, dtype=torch.long)
    rows = [i for i, t in enumerate(task_ids) if vaccinate_ids is None or t in vaccinate_ids]
    phi_hat = state.phi_hat.clone()

    def solve(k, G, usable, orders, C, fired, unusable):
        target = phi_hat[k][ids][:, ids].tolist()
        for i, order in orders.items():
            c, r = C[i], list(G[i])
            for j in order:
                ni = _visit(usable, i, j, c, r)
                if ni is None:
                    unusable[i][j] = True
                    continue
                nj = math.sqrt(G[j][j])
                phi = min(1.0, max(-1.0, r[j] / ni / nj))
                t = target[i][j]
                if phi < t and 1.0 - t * t >= GRADVAC_TOL:
                    den = math.sqrt(1.0 - t * t)
                    a = ni / nj * (t * math.sqrt(1.0 - phi * phi) - phi * den) / den
                    if math.isfinite(a):
                        _add(G, c, r, a, j)
                        fired[i][j] = True
                target[i][j] = (1.0 - ema_rate) * t + ema_rate * phi
        phi_hat[k, ids[:, None], ids[None, :]] = torch.tensor(target, dtype=F64)

    out = _run(grams, generator, rows, solve)
    state.phi_hat = phi_hat
    return out


# ---------------------------------------------------------------------------------------------
# entry points

def cosines(grams: Tensor) -> Tensor:
    """[n_groups, K, K] cos(g_i, g_j) from the Gram; 0 where a norm is zero or not finite."""
    d = grams.diagonal(dim1=-2, dim2=-1)
    ok = torch.isfinite(d) & (d > 0)
    n = torch.where(ok, d, torch.ones((), dtype=F64)).sqrt()
    cos = (grams / n[..., :, None] / n[..., None, :]).clamp(-1.0, 1.0)
    keep = ok[..., :, None] & ok[..., None, :] & torch.isfinite(cos)
    return torch.where(keep, cos, torch.zeros((), dtype=F64))


def reconcile(method: str, grams: Tensor, task_ids: list[int], state, generator: torch.Generator,
              **options) -> tuple[Tensor, StepStats]:
    """Weights w [n_groups, K] of the update `update_k = sum_j w[k, j] g_jk`, and the step's
    statistics (reconcile/stats.py StepStats: cosines of the original gradients, C, per-visit
    flags, non-finite groups; `weights` is w).

    grams: [n_groups, K, K] Gram matrices of the step's task gradients (any float dtype/device;
    computed in float64 on the CPU). task_ids: global task index of each step-local task.
    state: from `make_state(method, n_groups, n_tasks)`; GradVac's state object is updated.
    generator: seeded identically on every rank (`step_generator`); see the module docstring for
    the draw order. options: the method's keyword arguments (GradVac: `ema_rate`, `vaccinate_ids` as
    global task ids, from `GradVacOptions.keywords`); those other methods take are ignored.
    """
    m = get_method(method)
    grams = grams.detach().to("cpu", F64)
    if grams.dim() != 3 or grams.shape[1] != grams.shape[2]:
        raise ValueError(f"grams must be [n_groups, K, K], got {tuple(grams.shape)}")
    task_ids = [int(t) for t in task_ids]
    if len(task_ids) != grams.shape[1] or len(set(task_ids)) != len(task_ids):
        raise ValueError(f"task_ids {task_ids} must be {grams.shape[1]} distinct task indices")

    out = m.correct(grams, task_ids, state, generator, **{k: v for k, v in options.items() if k in m.keywords})

    coef, nonfinite = out.coef, out.nonfinite.clone()
    weights = coef.sum(1)
    overflow = ~torch.isfinite(weights).all(1)
    if overflow.any():  # corrections overflowed: the `sum` update for those groups
        weights[overflow] = 1.0
        coef[overflow] = torch.eye(coef.shape[1], dtype=F64)
        nonfinite |= overflow
    stats = StepStats(task_ids=task_ids, cos=cosines(grams), coef=coef, visited=out.visited, fired=out.fired,
                      unusable=out.unusable, nonfinite=nonfinite, weights=weights)
    return weights, stats


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of step `step`'s visiting orders: seeded identically on every rank."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def update_norm_sq(grams: Tensor, weights: Tensor) -> Tensor:
    """[n_groups] squared norm of each group's update, w^T G w (for clipping from the Gram)."""
    grams = grams.to(F64)
    weights = weights.to(grams.device, F64)
    return torch.einsum("gi,gij,gj->g", weights, grams, weights)
