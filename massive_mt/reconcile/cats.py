"""CATS, Curvature Aware Task Scaling (docs/algorithms.md#cats), from the step's losses and Gram matrix.

Task scales alpha live on the simplex over the run's T tasks with a floor,
alpha_n >= floor / T. A step that draws K of them (step-local i, global id task_ids[i]) uses
the renormalised scales beta = alpha[task_ids] / sum(alpha[task_ids]) and the update

    update = K * sum_i beta_i g'_i,    g'_i = sum_j C[i, j] g_j,

where C comes from the base method (identity for `sum`: CATS alone; GradVac's or PCGrad's
corrections otherwise), so the weights of the Gram form are w[k, j] = K * (beta^T C_k)[j].
Uniform alpha gives beta = 1/K: the base's own update (with `sum`: sum_i g_i). When K = T,
beta = alpha.

Meta step (every `interval` steps once `warmup` steps are done), on the step tasks:
    L_i   = task i's mean loss;  G = the K x K Gram of the gradients of L_i
    c     = beta^T G beta  (combined: ||update||^2)  or  sum_i beta_i^2 G_ii  (diagonal)
    J     = sum_i beta_i L_i + lam * (c - eps)
    simplex: beta <- projection onto {beta_i >= floor / (T m), sum beta = 1} of
             beta - lr_alpha * dJ/dbeta, with m = sum(alpha[task_ids]); alpha[task_ids] = m * beta
             (the step tasks keep their total mass; the other tasks' scales do not move)
    softmax: alpha = floor / T + (1 - floor) * softmax(theta); theta <- theta - lr_alpha * dJ/dtheta
    lam   <- max(0, lam + lr_lam * (c(new beta) - eps))             (ascent on the multiplier)

Objective `lookahead` (needs meta_data: valid) replaces sum_i beta_i L_i by the first-order valid
loss of the step tasks after this step's update, sum_n L_n^valid(theta - lr * clip * u(beta)):
    dJ/dbeta = -lr * K * d(clip * beta . x)/dbeta + 2 lam G beta,   x_i = g'_i . sum_n v_n,
v_n the valid gradients, clip = min(1, clip_norm / (||u|| + 1e-6)) the clipping factor of the
update (its dependence on beta included), lr the learning rate of the step; Adam's
preconditioner is ignored (an SGD-style look-ahead).

The meta step runs after the step's scales are taken: it shapes the next steps. Everything
is float64 on the CPU and identical on every rank (same all-reduced inputs, same state).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from torch import Tensor

from massive_mt.reconcile.methods import METHODS, MethodOptions

F64 = torch.float64


class CATSConfig(BaseModel):
    """CATS options: the `reconcile.cats` section of the experiment config (reconcile.method: cats)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    # which gradients CATS scales: sum (the task gradients unchanged) | pcgrad | gradvac (the corrected gradients)
    base: Literal[tuple(METHODS)] = "sum"
    # meta losses + Gram from: train (this step's micro-batches, free) | valid (a valid-split micro-batch)
    meta_data: Literal["train", "valid"] = "train"
    # meta objective: loss (sum_i beta_i L_i) | lookahead (valid loss after the step's update; meta_data valid)
    objective: Literal["loss", "lookahead"] = "loss"
    proxy: Literal["combined", "diagonal"] = "combined"   # combined (beta^T G beta) | diagonal (sum beta_i^2 G_ii)
    param: Literal["simplex", "softmax"] = "simplex"      # simplex (projected descent on alpha) | softmax (on logits)
    lr_alpha: float = Field(0.01, ge=0)     # meta learning rate of the task scales
    lr_lam: float = Field(0.01, ge=0)       # ascent rate of the multiplier lam
    eps: float = Field(1.0, ge=0)           # curvature budget, in units of the squared update norm
    interval: int = Field(1, ge=1)          # steps between meta steps
    warmup: int = Field(0, ge=0)            # steps before the first meta step
    floor: float = Field(0.1, ge=0, le=1)   # alpha_n >= floor / T (1: alpha fixed at uniform; 0 only with softmax)
    valid_max_tokens: int = Field(0, ge=0)  # token budget of a valid micro-batch (0 = sampling.max_tokens)

    @field_validator("objective")
    @classmethod
    def _objective(cls, objective: str, info: ValidationInfo) -> str:
        if objective == "lookahead" and info.data.get("meta_data") != "valid":
            raise ValueError("lookahead needs meta_data: valid (the valid-split gradients it looks ahead with)")
        return objective

    @field_validator("floor")
    @classmethod
    def _floor(cls, floor: float, info: ValidationInfo) -> float:
        if floor == 0.0 and info.data.get("param") != "softmax":
            raise ValueError("must be in (0, 1] (0 only with param softmax): a task at scale 0 in the "
                             "simplex could never come back")
        return floor


@dataclass
class CATSState:
    """`values`: alpha itself (simplex) or the logits theta (softmax), [T] float64."""

    values: Tensor
    lam: float = 0.0
    steps: int = 0          # steps reconciled so far
    meta_steps: int = 0     # meta steps taken
    meta_steps_left_out: int = 0   # meta steps left out (non-finite losses or Gram)

    @classmethod
    def uniform(cls, n_tasks: int, param: str) -> "CATSState":
        if param == "simplex":
            return cls(torch.full((n_tasks,), 1.0 / n_tasks, dtype=F64))
        return cls(torch.zeros(n_tasks, dtype=F64))

    def state_dict(self) -> dict:
        return {"values": self.values.clone(), "lam": self.lam, "steps": self.steps,
                "meta_steps": self.meta_steps, "meta_steps_left_out": self.meta_steps_left_out}

    def load_state_dict(self, sd: dict) -> None:
        values = torch.as_tensor(sd["values"]).detach().to("cpu", F64).clone()
        if values.shape != self.values.shape or not torch.isfinite(values).all():
            raise ValueError(f"CATS state has {tuple(values.shape)} finite scales, expected {tuple(self.values.shape)}")
        if not (math.isfinite(sd["lam"]) and sd["lam"] >= 0):
            raise ValueError(f"CATS multiplier must be finite and >= 0, got {sd['lam']}")
        self.values, self.lam = values, float(sd["lam"])
        left_out = sd["meta_steps_left_out"] if "meta_steps_left_out" in sd else sd["skipped"]  # older checkpoints
        self.steps, self.meta_steps, self.meta_steps_left_out = int(sd["steps"]), int(sd["meta_steps"]), int(left_out)


def check_state(state: CATSState, cfg: CATSConfig) -> None:
    """Refuse scales that cannot come from `cfg` (e.g. a checkpoint of another parameterisation)."""
    if cfg.param == "simplex":
        v, T = state.values, state.values.numel()
        if abs(float(v.sum()) - 1.0) > 1e-9 or float(v.min()) < cfg.floor / T - 1e-12:
            raise ValueError(f"CATS scales must lie on the simplex with every entry >= floor / T = "
                             f"{cfg.floor / T:.3g}; got sum {float(v.sum()):.6g}, min {float(v.min()):.3g}")


def softmax_scales(theta: Tensor, floor: float) -> Tensor:
    """alpha = floor / T + (1 - floor) * softmax(theta): on the simplex, every entry >= floor / T."""
    return floor / theta.numel() + (1.0 - floor) * torch.softmax(theta, 0)


def task_scales(state: CATSState, cfg: CATSConfig) -> Tensor:
    """alpha [T] on the simplex, every entry >= floor / T."""
    if cfg.param == "simplex":
        return state.values.clone()
    return softmax_scales(state.values, cfg.floor)


def step_scales(alpha: Tensor, task_ids: list[int]) -> Tensor:
    """beta [K]: the step tasks' scales renormalised to sum to 1."""
    a = alpha[task_ids]
    return a / a.sum()


def softmax_step_scales(theta: Tensor, floor: float, task_ids: list[int]) -> Tensor:
    """`step_scales(softmax_scales(theta, floor), task_ids)` computed in log space: at floor 0 the
    softmax can underflow to exact zeros for every task of a step, where the plain ratio is 0 / 0;
    here beta is the softmax of log alpha over the step's tasks, finite for any theta."""
    log_alpha = torch.log_softmax(theta, 0) + torch.log1p(torch.tensor(-floor, dtype=theta.dtype))   # -inf at 1
    if floor > 0.0:
        log_alpha = torch.logaddexp(log_alpha, torch.full_like(theta, math.log(floor) - math.log(theta.numel())))
    return torch.softmax(log_alpha[task_ids], 0)


def beta_of(state: CATSState, cfg: CATSConfig, task_ids: list[int]) -> Tensor:
    """beta [K]: this step's scales, the task scales alpha renormalised over the step's tasks."""
    if cfg.param == "simplex":             # alpha >= floor / T > 0: the ratio is safe
        return step_scales(state.values, task_ids)
    return softmax_step_scales(state.values, cfg.floor, task_ids)


def is_meta_step(state: CATSState, cfg: CATSConfig) -> bool:
    """Whether this step (state.steps reconciled before it) takes a meta step: every `interval`
    steps once `warmup` steps are done."""
    return state.steps >= cfg.warmup and (state.steps - cfg.warmup) % cfg.interval == 0


def project_simplex(v: Tensor, lower: float, total: float = 1.0) -> Tensor:
    """Euclidean projection of v onto {x : x_i >= lower, sum x = total} (sort-based, exact)."""
    n = v.numel()
    radius = total - n * lower
    if radius < -1e-12:
        raise ValueError(f"no point with {n} entries >= {lower} sums to {total}")
    if radius <= 0:
        return torch.full_like(v, lower)
    u, _ = torch.sort(v - lower, descending=True)
    css = torch.cumsum(u, 0) - radius
    j = torch.arange(1, n + 1, dtype=v.dtype)
    active = torch.nonzero(u - css / j > 0)
    if active.numel() == 0:          # radius below rounding
        return torch.full_like(v, lower)
    rho = int(active.max())
    x = (v - lower - css[rho] / (rho + 1)).clamp_min(0.0) + lower
    free = x > lower                 # far from the simplex, v - tau cancels digits: restore the sum exactly
    x[free] += (total - x.sum()) / free.sum()
    return x


def corrected_gram(grams: Tensor, coef: Tensor) -> Tensor:
    """[K, K] Gram of the whole-model corrected gradients g'_i: sum_k C_k G_k C_k^T."""
    return torch.einsum("kia,kab,kjb->ij", coef.to(F64), grams.to(F64), coef.to(F64))


def curvature(beta: Tensor, G: Tensor, proxy: str) -> Tensor:
    if proxy == "combined":
        return beta @ G @ beta
    return (beta * beta * G.diagonal()).sum()


class LookAhead(NamedTuple):
    """The step's update, for objective `lookahead` (docs/algorithms.md#the-look-ahead-objective).

    cross [n_groups, K, K]: cross[k, j, n] = g_jk . v_nk, task j's gradient as it enters the update
    (before the base method's correction) against the gradient of task n's mean valid loss;
    grams [n_groups, K, K]: the Grams of the task gradients (same units as cross); lr: the learning
    rate of the step; clip_norm: the update's clipping threshold (0: no clipping)."""

    cross: Tensor
    grams: Tensor
    lr: float
    clip_norm: float


def lookahead_gradient(beta: Tensor, coef: Tensor, la: LookAhead) -> Tensor:
    """[K] gradient w.r.t. beta of the first-order look-ahead term -lr * clip(beta) * u(beta) . sum_n v_n,
    u = K sum_i beta_i g'_i, clip = min(1, clip_norm / (||u|| + 1e-6)) (its dependence on beta included)."""
    coef = coef.to(F64)
    K = beta.numel()
    x = torch.einsum("kij,kjn->i", coef, la.cross.to(F64))             # g'_i . sum_n v_n
    grad = -la.lr * K * x
    if la.clip_norm > 0:
        Gc = corrected_gram(la.grams, coef)
        norm = K * math.sqrt(max(float(beta @ Gc @ beta), 0.0))        # ||u||
        clip = la.clip_norm / (norm + 1e-6)
        if clip < 1.0 and norm > 0:
            dclip = -clip / (norm + 1e-6) * (K * K / norm) * (Gc @ beta)
            grad = clip * grad - la.lr * K * float(beta @ x) * dclip
    return grad


def meta_step(state: CATSState, cfg: CATSConfig, task_ids: list[int], losses: Tensor, G: Tensor,
              first: Optional[Tensor] = None) -> dict:
    """One descent step on alpha and one ascent step on lam (in place). losses [K], G [K, K]: the
    step tasks' mean losses and the Gram of their gradients (all-reduced, identical on every rank).
    first [K]: the gradient w.r.t. beta of the objective's first term at the step's beta (default:
    the losses, objective `loss`; `lookahead_gradient` for objective `lookahead`)."""
    losses, G = losses.to(F64), G.to(F64)
    first = losses if first is None else first.to(F64)
    if not (torch.isfinite(losses).all() and torch.isfinite(G).all() and torch.isfinite(first).all()):
        state.meta_steps_left_out += 1
        return {"meta": False}
    T = state.values.numel()
    alpha = task_scales(state, cfg)
    if cfg.param == "simplex":
        mass = float(alpha[task_ids].sum())
        beta = alpha[task_ids] / mass
        grad = first + 2.0 * state.lam * (G @ beta if cfg.proxy == "combined" else G.diagonal() * beta)
        beta = project_simplex(beta - cfg.lr_alpha * grad, cfg.floor / (T * mass))
        state.values[task_ids] = mass * beta
    else:
        theta = state.values.clone().requires_grad_(True)
        with torch.enable_grad():
            b = softmax_step_scales(theta, cfg.floor, task_ids)
            J = b @ first + state.lam * curvature(b, G, cfg.proxy)     # first: dJ/dbeta of the first term
            (grad_theta,) = torch.autograd.grad(J, theta)
        state.values = state.values - cfg.lr_alpha * grad_theta
        beta = beta_of(state, cfg, task_ids)
    c = float(curvature(beta, G, cfg.proxy))
    state.lam = max(0.0, state.lam + cfg.lr_lam * (c - cfg.eps))
    state.meta_steps += 1
    return {"meta": True, "proxy": c}


def cats(coef: Tensor, task_ids: list[int], state: CATSState, cfg: CATSConfig,
         meta_losses: Tensor, meta_gram: Tensor, lookahead: Optional[LookAhead] = None) -> tuple[Tensor, dict]:
    """Weights w [n_groups, K] of the update sum_j w[k, j] g_jk, then (on a meta step) the meta step.

    coef: [n_groups, K, K] the base method's C. meta_losses [K] and meta_gram [K, K] (in units of
    the gradients of the mean losses) come from this step's micro-batches or from valid batches;
    lookahead: the step's update, needed on meta steps of objective `lookahead`.
    stats: beta (this step's scales), alpha and lam after the step, meta (whether one was taken),
    proxy (its value after the alpha step, on a meta step), meta_steps_left_out (so far)."""
    K = coef.shape[1]
    beta = beta_of(state, cfg, task_ids)
    weights = K * torch.einsum("i,kij->kj", beta, coef.to(F64))
    stats = {"meta": False}
    if is_meta_step(state, cfg):
        first = None
        if cfg.objective == "lookahead":
            if lookahead is None:
                raise ValueError("CATS objective lookahead: the meta step needs the step's update (LookAhead)")
            first = lookahead_gradient(beta, coef, lookahead)
        stats = meta_step(state, cfg, task_ids, meta_losses, meta_gram, first)
    state.steps += 1
    stats.update(beta=beta, alpha=task_scales(state, cfg), lam=state.lam,
                 meta_steps_left_out=state.meta_steps_left_out)
    return weights, stats


class CATSOptions(MethodOptions):
    """CATS's options: the `reconcile.cats` section (its base method's options are the base's own)."""

    cats: CATSConfig = CATSConfig()
