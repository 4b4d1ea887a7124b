"""Parameter groups for gradient similarity, mapped onto a rank's flat gradient shard.

A granularity assigns every parameter (by name) to a group:
- `whole_model`: one group;
- `enc_dec`: `encoder`, `decoder`, and `embeddings` (M2M100 shares one embedding matrix
  between encoder, decoder and output layer, so it belongs to neither side);
- `all_layer`: one group per Transformer layer (`encoder.layers.3`, `decoder.layers.0`, ...),
  plus `embeddings`; each stack's final layer norm joins that stack's last layer;
- `all_matrix`: one group per parameter tensor.
Frozen parameters (`model.freeze`) have no gradient and belong to no group; a group left with
no trainable parameter is dropped.

`ShardGroups` turns the adapter's segments (runs of one parameter inside this rank's
shard) into contiguous runs per group, computes this rank's partial Gram matrices
`[n_groups, K, K]` (fp32 GEMMs over blocks of 128 columns, summed in fp64) and combines the
per-group task weights into the update slice. Partitions are disjoint across ranks, so the
all-reduced partial Grams are the global ones (summed in another order).
"""
from __future__ import annotations

import re
from collections import OrderedDict
from contextlib import contextmanager
from typing import Collection, Iterable, Optional, Sequence

import torch

GRANULARITIES = ("whole_model", "enc_dec", "all_layer", "all_matrix")
_LAYER = re.compile(r"(encoder|decoder)\.layers\.(\d+)\.")
_STACK = re.compile(r"(?:^|\.)(encoder|decoder)\.")


def group_of(name: str, granularity: str, n_layers: dict[str, int]) -> str:
    """The group of parameter `name` (a `named_parameters()` name) under `granularity`."""
    if granularity == "whole_model":
        return "model"
    if granularity == "all_matrix":
        return name
    stack = _STACK.search(name)
    if stack is None or "embed_tokens" in name:
        return "embeddings"
    side = stack.group(1)
    if granularity == "enc_dec":
        return side
    if granularity == "all_layer":
        layer = _LAYER.search(name)
        if layer is not None:
            return f"{side}.layers.{int(layer.group(2))}"
        return f"{side}.layers.{n_layers[side] - 1}"      # final layer norm of the stack
    raise ValueError(f"unknown granularity {granularity!r}; known: {GRANULARITIES}")


def assign_groups(names: Sequence[str], granularity: str, frozen: Collection[str] = ()) -> OrderedDict:
    """name -> group for every parameter not in `frozen`; groups ordered by first appearance. A
    group is defined on the whole model (a final layer norm joins its stack's last layer even
    where that layer is frozen); a group whose parameters are all frozen does not exist."""
    n_layers = {"encoder": 0, "decoder": 0}
    for n in names:
        m = _LAYER.search(n)
        if m:
            n_layers[m.group(1)] = max(n_layers[m.group(1)], int(m.group(2)) + 1)
    return OrderedDict((n, group_of(n, granularity, n_layers)) for n in names if n not in frozen)


def _runs(segments: Iterable, group_index: dict[str, int]) -> list[list[tuple[int, int]]]:
    """Per group, the (start, end) runs of the shard it owns, adjacent runs merged."""
    per_group: list[list[tuple[int, int]]] = [[] for _ in range(len(set(group_index.values())))]
    for seg in sorted(segments, key=lambda s: s.start):
        runs = per_group[group_index[seg.name]]
        if runs and runs[-1][1] == seg.start:
            runs[-1] = (runs[-1][0], seg.start + seg.numel)
        else:
            runs.append((seg.start, seg.start + seg.numel))
    return per_group


@contextmanager
def _ieee_fp32_matmul(device: torch.device):
    """CUDA fp32 GEMMs in full fp32 for the Grams even where TF32 (10 mantissa bits) is enabled.

    Saved and restored through the API the user may have set it with: `fp32_precision` on torch >= 2.9
    (reading the legacy `allow_tf32` raises once the new one was set), `allow_tf32` before."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    name, full = ("fp32_precision", "ieee") if hasattr(matmul, "fp32_precision") else ("allow_tf32", False)
    saved = getattr(matmul, name)
    setattr(matmul, name, full)
    try:
        yield
    finally:
        setattr(matmul, name, saved)


class ShardGroups:
    """Groups of one granularity, laid over this rank's shard layout.

    `segments`: the layout of the snapshot (used to combine the update);
    `gram_segments`: the part this rank contributes to the Gram (disjoint across ranks).
    """

    def __init__(self, param_names: Sequence[str], granularity: str, segments, gram_segments,
                 frozen: Collection[str] = ()):
        assignment = assign_groups(param_names, granularity, frozen)
        self.names = list(OrderedDict.fromkeys(assignment.values()))
        index = {g: i for i, g in enumerate(self.names)}
        self.group_index = {p: index[g] for p, g in assignment.items()}
        self.update_runs = _runs(segments, self.group_index)
        self.gram_runs = _runs(gram_segments, self.group_index)

    @classmethod
    def of_module(cls, module: torch.nn.Module, granularity: str, segments, gram_segments) -> "ShardGroups":
        """The groups of `module`'s parameters; frozen ones (requires_grad False: no gradient, not
        in the shard layout) belong to no group."""
        named = list(module.named_parameters())
        return cls([n for n, _ in named], granularity, segments, gram_segments,
                   frozen={n for n, p in named if not p.requires_grad})

    def __len__(self) -> int:
        return len(self.names)

    BLOCK = 128         # columns per fp32 partial Gram: bounds its rounding error (see local_grams)
    CHUNK = 1 << 16     # columns per batched GEMM call on CPU: cache-sized, partials K*K*CHUNK/BLOCK*4 bytes
    CHUNK_ACCELERATOR = 1 << 22     # on a GPU: few kernel launches (partials 8 MiB at K = 8)

    def local_grams(self, S: torch.Tensor, R: Optional[torch.Tensor] = None) -> torch.Tensor:
        """S: [K, n] this rank's task-gradient slices (fp32) -> partial Grams [n_groups, K, K] (fp64, on S's device);
        with R [K', n] (other gradients on the same layout), the partial cross Grams S R^T [n_groups, K, K'].

        Each run of a group is cut into blocks of at most BLOCK columns; one batched GEMM per CHUNK
        columns gives the blocks' Grams in S's precision, read in place from S (no copy, no fp64
        conversion of S), and the block Grams are summed in fp64. Rounding: a block's fp32 Gram
        entry (products and at most BLOCK sums rounded) is within gamma_BLOCK * sum_k |x_ik x_jk|
        of the exact value, gamma_m = m u / (1 - m u), u = 2^-24 (gamma_128 = 7.6e-6); summed in
        fp64, |G_ij error| <= gamma_BLOCK * ||x_i|| ||x_j|| (Cauchy-Schwarz) plus fp64 rounding.
        That is the worst case; measured on 7.6 M columns, correlated tasks (cosines 0.8), it is
        0.7 u = 4e-8 of ||x_i|| ||x_j||, the size of the rounding of the fp32 gradients themselves
        (docs/benchmarks/cpu-2core/gram_bench.py)."""
        R = S if R is None else R
        m = self.BLOCK
        chunk = self.CHUNK if S.device.type == "cpu" else self.CHUNK_ACCELERATOR
        out = torch.zeros(len(self.names), S.shape[0], R.shape[0], dtype=torch.float64, device=S.device)
        with _ieee_fp32_matmul(S.device):
            for g, runs in enumerate(self.gram_runs):
                for a, b in runs:
                    for c in range(a, b, chunk):
                        e = min(b, c + chunk)
                        full = (e - c) // m * m
                        if full:
                            x = S[:, c:c + full].unflatten(1, (full // m, m)).transpose(0, 1)  # [blocks, K, m] view
                            y = R[:, c:c + full].unflatten(1, (full // m, m)).transpose(0, 1)
                            out[g] += torch.bmm(x, y.transpose(1, 2)).sum(0, dtype=torch.float64)
                        if c + full < e:
                            out[g] += (S[:, c + full:e] @ R[:, c + full:e].T).double()          # < BLOCK columns
        return out                                   # on S's device: the all-reduce takes it from there

    def combine(self, S: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """update[run of group g] = weights[g] @ S[:, run] (in S's dtype, fp32: K terms per value);
        positions outside every segment stay 0."""
        out = torch.zeros(S.shape[1], dtype=S.dtype, device=S.device)
        w = weights.to(dtype=S.dtype)
        if S.device.type == "cuda":
            w = w.pin_memory()                       # the host does not wait for the copy
        w = w.to(S.device, non_blocking=True)
        for g, runs in enumerate(self.update_runs):
            for a, b in runs:
                out[a:b] = w[g] @ S[:, a:b]
        return out
