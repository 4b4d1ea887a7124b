"""Textbook reconcilers on explicit full gradient vectors, one process (the tests' reference).

CATS here works on the vectors themselves (autograd through ||sum_i beta_i v_i||^2 and, for the
look-ahead objective, through the first-order valid loss after the clipped update; a bisection
projection), independently of the Gram-form code in `cats.py`.

Written the obvious way: the corrected vectors g'_i are updated in place and every cosine is
a dot product of actual vectors. Random visiting order and state layout are those of
`massive_mt.reconcile.methods`: per group, per corrected task i (ascending), one randperm(K - 1)
over the other tasks; phi_hat[k, task_ids[i], task_ids[j]]. The CATS schedule (which steps take
a meta step) is the package's `is_meta_step`.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from massive_mt.reconcile.cats import is_meta_step
from massive_mt.reconcile.methods import EMA_RATE, GRADVAC_TOL


def reconcile(method: str, grads: list[Tensor], task_ids: list[int], state, generator: torch.Generator,
              **options) -> tuple[list[Tensor], object]:
    """grads: per group a [K, n_k] tensor of the task gradients. Returns the per-group updates
    [n_k] and the new state (the given state is not modified)."""
    corrected, state = correct(method, grads, task_ids, state, generator, **options)
    return [g.sum(0) for g in corrected], state


def correct(method: str, grads: list[Tensor], task_ids: list[int], state, generator: torch.Generator,
            ema_rate: float = EMA_RATE, vaccinate_ids=None) -> tuple[list[Tensor], object]:
    """Per group the [K, n_k] corrected task gradients g'_i, and the new state."""
    state = copy.deepcopy(state)
    K = len(task_ids)
    corrected = []
    for k, g in enumerate(grads):
        g = g.to(torch.float64)
        if method == "sum":
            corrected.append(g)
            continue
        rows = [i for i in range(K)
                if method == "pcgrad" or vaccinate_ids is None or task_ids[i] in vaccinate_ids]
        orders = {}
        if K >= 2:
            for i in rows:
                others = [j for j in range(K) if j != i]
                orders[i] = [others[p] for p in torch.randperm(K - 1, generator=generator).tolist()]
        finite = [bool(torch.isfinite(g[t]).all()) for t in range(K)]
        new = [g[i].clone() for i in range(K)]
        for i, order in orders.items():
            for j in order:
                gi, gj = new[i], g[j]
                ni, nj = math.sqrt(gi.dot(gi)), math.sqrt(gj.dot(gj))
                if not (finite[i] and finite[j]) or ni == 0 or nj == 0:
                    continue
                dot = float(gi.dot(gj))
                if method == "pcgrad":
                    if dot < 0:
                        new[i] = gi - dot / float(gj.dot(gj)) * gj
                    continue
                a_, b_ = task_ids[i], task_ids[j]
                phi = min(1.0, max(-1.0, dot / (ni * nj)))
                target = float(state.phi_hat[k, a_, b_])
                if phi < target and 1 - target ** 2 >= GRADVAC_TOL:
                    coef = (ni * (target * math.sqrt(1 - phi ** 2) - phi * math.sqrt(1 - target ** 2))
                            / (nj * math.sqrt(1 - target ** 2)))
                    new[i] = gi + coef * gj
                state.phi_hat[k, a_, b_] = (1 - ema_rate) * target + ema_rate * phi
        corrected.append(torch.stack(new))
    return corrected, state


def _project(v: Tensor, lower: float, total: float = 1.0) -> Tensor:
    """Projection onto {x >= lower, sum x = total}: bisection on the shift tau."""
    lo, hi = float(v.min()) - total - 1.0, float(v.max())
    for _ in range(200):
        tau = (lo + hi) / 2
        if float((v - tau).clamp_min(lower).sum()) > total:
            lo = tau
        else:
            hi = tau
    return (v - (lo + hi) / 2).clamp_min(lower)


def cats_step(state, cfg, task_ids: list[int], losses: Tensor, vectors: Tensor, update=None, lr: float = 0.0,
              clip_norm: float = 0.0):
    """One CATS step. vectors: [K, P] the (corrected) gradients of the step tasks' mean losses, the
    whole model as one vector; losses [K]. Objective `lookahead`: losses and vectors are the valid
    ones, update [K, P] the (corrected) task gradients as they enter the update u = K sum_i beta_i
    update_i, lr the step's learning rate, clip_norm the clipping threshold (0: none); the meta
    objective's first term is sum_n L_n + (-lr * clip * u) . sum_n vectors_n, the first-order valid
    loss after the step. Returns this step's beta [K] and the new state."""
    state = copy.deepcopy(state)
    T, K = state.values.numel(), len(task_ids)

    def alpha_of(values):
        if cfg.param == "simplex":
            return values
        return cfg.floor / T + (1 - cfg.floor) * torch.softmax(values, 0)

    def proxy(b):
        if cfg.proxy == "combined":
            u = b @ vectors
            return u @ u
        return (b * b * (vectors * vectors).sum(1)).sum()

    def first(b):
        if cfg.objective == "loss":
            return b @ losses
        u = K * (b @ update)
        clip = torch.clamp(clip_norm / (torch.linalg.vector_norm(u) + 1e-6), max=1.0) if clip_norm > 0 else 1.0
        return losses.sum() - lr * clip * u @ vectors.sum(0)

    a = alpha_of(state.values)
    beta = a[task_ids] / a[task_ids].sum()
    if is_meta_step(state, cfg):
        x = (beta if cfg.param == "simplex" else state.values).clone().requires_grad_(True)
        with torch.enable_grad():
            b = x if cfg.param == "simplex" else alpha_of(x)[task_ids] / alpha_of(x)[task_ids].sum()
            J = first(b) + state.lam * proxy(b)
            (grad,) = torch.autograd.grad(J, x)
        if cfg.param == "simplex":
            mass = a[task_ids].sum()
            new = _project(beta - cfg.lr_alpha * grad, cfg.floor / (T * float(mass)))
            state.values[task_ids] = mass * new
        else:
            state.values = state.values - cfg.lr_alpha * grad
            new = alpha_of(state.values)[task_ids] / alpha_of(state.values)[task_ids].sum()
        state.lam = max(0.0, state.lam + cfg.lr_lam * (float(proxy(new)) - cfg.eps))
        state.meta_steps += 1
    state.steps += 1
    return beta, state
