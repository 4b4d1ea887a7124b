"""Textbook reconcilers on explicit full gradient vectors, one process (the tests' reference).

Written the obvious way: the corrected vectors g'_i are updated in place and every cosine is
a dot product of actual vectors. Random visiting order and state layout are those of
`methods`: per group, per corrected task i (ascending), one randperm(K - 1) over the other
tasks; phi_hat[k, task_ids[i], task_ids[j]].
"""
from __future__ import annotations

import copy
import math

import torch
from torch import Tensor


def reconcile(method: str, grads: list[Tensor], task_ids: list[int], state, generator: torch.Generator,
              config=None) -> tuple[list[Tensor], object]:
    """grads: per group a [K, n_k] tensor of the task gradients. Returns the per-group updates
    [n_k] and the new state (the given state is not modified)."""
    beta = getattr(config, "beta", 0.01) if config is not None else 0.01
    vaccinated = getattr(config, "vaccinated", None) if config is not None else None
    state = copy.deepcopy(state)
    K = len(task_ids)
    updates = []
    for k, g in enumerate(grads):
        g = g.to(torch.float64)
        if method == "sum":
            updates.append(g.sum(0))
            continue
        rows = [i for i in range(K)
                if method == "pcgrad" or vaccinated is None or task_ids[i] in vaccinated]
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
                if phi < target and abs(target) < 1:
                    coef = (ni * (target * math.sqrt(1 - phi ** 2) - phi * math.sqrt(1 - target ** 2))
                            / (nj * math.sqrt(1 - target ** 2)))
                    new[i] = gi + coef * gj
                state.phi_hat[k, a_, b_] = (1 - beta) * target + beta * phi
        updates.append(torch.stack(new).sum(0))
    return updates, state
