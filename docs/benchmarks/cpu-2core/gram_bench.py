"""Micro-benchmark of ShardGroups.local_grams: fp32 block GEMMs summed in fp64 against the fp64 Gram.

The reference is the previous implementation (each run converted to fp64 in chunks of 2^18
columns, one fp64 GEMM per chunk): its products are exact and its sums fp64, so it serves as the
exact Gram. The buffer is one rank's [K, P/N] snapshot of a preset's parameter layout (ZeRO's flat
order, split into N equal partitions; rank 0's), filled with synthetic correlated task gradients
(cosines about 0.8, magnitudes spread over e^±4) so that fp32 sums do not cancel. Timings are
interleaved rounds of old and new, one thread.

    DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 python docs/benchmarks/cpu-2core/gram_bench.py \
        --presets tiny small --world-sizes 1 2 --tasks 8 --granularities all_layer whole_model \
        --repeats 5 --out docs/benchmarks/cpu-2core/gram_bench.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from massive_mt.engine.model import build_model
from massive_mt.reconcile.groups import ShardGroups
from massive_mt.engine.zero_adapter import Segment


def reference_grams(groups: ShardGroups, S: torch.Tensor, chunk: int = 1 << 18) -> torch.Tensor:
    """The previous local_grams: fp64 chunks, one fp64 GEMM each (exact products, fp64 sums)."""
    K = S.shape[0]
    out = torch.zeros(len(groups.names), K, K, dtype=torch.float64)
    for g, runs in enumerate(groups.gram_runs):
        for a, b in runs:
            for c in range(a, b, chunk):
                blk = S[:, c:min(b, c + chunk)].double()
                out[g] += blk @ blk.T
    return out


def rank0_layout(preset: str, vocab: int, world: int):
    """Names and rank 0's segments of a flat fp32 partition of the model's parameters."""
    model = build_model(preset, vocab, 64)
    named, seen = [], set()
    for n, p in model.named_parameters():
        if id(p) not in seen:
            seen.add(id(p))
            named.append((n, p.numel()))
    total = sum(k for _, k in named)
    part = -(-total // world)
    segs, off = [], 0
    for n, k in named:
        lo, hi = max(off, 0), min(off + k, part)
        if lo < hi:
            segs.append(Segment(n, lo, hi - lo))
        off += k
    return [n for n, _ in named], segs, part, total


def synthetic(K: int, n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    common = torch.randn(n, generator=gen)
    scale = torch.exp(2 * torch.randn(n, generator=gen)) * 1e-4
    S = torch.empty(K, n)
    for k in range(K):
        S[k] = (0.7 * common + 0.3 * torch.randn(n, generator=gen)) * scale
    return S


def timed(f, S):
    t0 = time.perf_counter()
    out = f(S)
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny"])
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--world-sizes", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--tasks", nargs="+", type=int, default=[8])
    ap.add_argument("--granularities", nargs="+", default=["all_layer"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    u = 2.0 ** -24
    with open(args.out + ".tmp", "w") as fh:
        for preset in args.presets:
            for world in args.world_sizes:
                names, segs, n, total = rank0_layout(preset, args.vocab, world)
                for K in args.tasks:
                    S = synthetic(K, n)
                    for gran in args.granularities:
                        groups = ShardGroups(names, gran, segs, segs)
                        t_old, t_new = [], []
                        for _ in range(args.repeats + 1):          # the first round warms up, untimed
                            t, ref = timed(lambda x: reference_grams(groups, x), S)
                            t_old.append(t)
                            t, new = timed(groups.local_grams, S)
                            t_new.append(t)
                        t_old, t_new = t_old[1:], t_new[1:]
                        d = torch.sqrt(torch.diagonal(ref, dim1=1, dim2=2))       # [groups, K] norms
                        scale = d[:, :, None] * d[:, None, :]
                        err = float(((new - ref).abs() / scale.clamp_min(1e-300)).max())
                        rel = float((new - ref).abs().max() / ref.abs().max())
                        rec = dict(preset=preset, P=total, world_size=world, columns=n, K=K, granularity=gran,
                                   n_groups=len(groups), n_runs=sum(len(r) for r in groups.gram_runs),
                                   block=groups.BLOCK, chunk=groups.CHUNK, repeats=args.repeats,
                                   old_s_median=statistics.median(t_old), new_s_median=statistics.median(t_new),
                                   old_s_min=min(t_old), new_s_min=min(t_new),
                                   speedup_median=statistics.median(t_old) / statistics.median(t_new),
                                   new_gflops=2 * K * K * n / statistics.median(t_new) / 1e9,
                                   max_err_over_norms=err, max_err_over_norms_in_u=err / u,
                                   max_abs_err_over_max_abs=rel, loadavg=os.getloadavg()[0],
                                   torch=torch.__version__, threads=torch.get_num_threads())
                        print(json.dumps(rec), flush=True)
                        fh.write(json.dumps(rec) + "\n")
    os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
