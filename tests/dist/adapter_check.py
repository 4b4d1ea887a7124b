"""GradShards (massive_mt.engine.zero_adapter) against an unsharded single-process float64 reference.

  DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 python -m torch.distributed.run --nproc_per_node N \\
      tests/dist/adapter_check.py --stage S --dtype fp32|bf16 [--clip C]
  DS_ACCELERATOR=cpu python tests/dist/adapter_check.py --refusals     (one process)

A tiny translation-like model (tied embedding / output projection, shared trunk, one head per
task: a task never touches the other tasks' heads) under DeepSpeed with a torch SGD optimizer
of two parameter groups (trunk and heads, different learning rates) and 50-element reduce
buckets, so parameters straddle buckets and partitions. Per step: K=3 tasks of M=2
micro-batches, different data on every rank; each task is its own accumulation boundary,
snapshot, reset (except the last). Checks, per step and task:

1. the all_gather of every rank's snapshot, mapped back with gram_segments(), is the reference
   task gradient; segments() describes the same values (whole parameters for z0);
2. per-parameter-group Grams summed over gram_segments() with ONE all_reduce are the reference
   Grams;
3. a reconciled vector (per-group coefficients scaled by 1/||g_k|| from the Gram) written back
   and engine.step() move the fp32 master parameters by exactly -lr * reference update, with
   clipping when --clip is given (DeepSpeed's for z0/z12/z3, from the Gram when clip_from_gram);
4. several steps: the heads of tasks 1 and 2 are unused in a step's first micro-batches, which
   exposes stale ZeRO-3 gradient partitions (--skip-begin-step shows the failure).

Tolerances (max |diff| / max |reference|): fp32 1e-6 for gradients, Grams and parameters,
1e-5 for the parameter updates (a difference of two fp32 parameter values); bf16 5e-2
(bf16 forward/backward against a float64 reference at the same bf16 weights).
Rank 0 prints one line `RESULT {json}`; the exit status is 1 when a check fails.
"""
import argparse
import copy
import os

import torch
import torch.distributed as tdist
import torch.nn as nn
import torch.nn.functional as F

import deepspeed
import deepspeed.comm as dist

from massive_mt.errors import ConfigError
from massive_mt.engine.zero_adapter import GradShards

from common import emit_result, exit_now, full_params, run_rank     # tests/dist/common.py (the script's folder)

K, M, B, L, V, D, H = 3, 2, 4, 3, 11, 8, 13
LR = {"trunk": 0.1, "heads": 0.05}
COEF = {"trunk": torch.tensor([5.0, -3.0, 8.0], dtype=torch.float64),     # per task, times 1/||g_k||
        "heads": torch.tensor([2.0, 7.0, 4.0], dtype=torch.float64)}
GROUPS = ("trunk", "heads")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.trunk = nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, D), nn.Tanh())
        self.heads = nn.ModuleList([nn.Linear(D, D) for _ in range(K)])
        self.out = nn.Linear(D, V, bias=False)
        self.out.weight = self.emb.weight          # tied, listed once by named_parameters()

    def forward(self, x, task):
        return self.out(torch.tanh(self.heads[task](self.trunk(self.emb(x)))))


def group_of(name):
    return "heads" if name.startswith("heads.") else "trunk"


def batch(step, task, rank, micro):
    g = torch.Generator().manual_seed(100000 * step + 1000 * task + 10 * rank + micro)
    return torch.randint(V, (B, L), generator=g), torch.randint(V, (B, L), generator=g)


def loss_fn(logits, y):
    return F.cross_entropy(logits.float().reshape(-1, V), y.reshape(-1))


def ds_config(stage, dtype, clip, **extra):
    cfg = {"train_micro_batch_size_per_gpu": B, "gradient_accumulation_steps": K * M,
           "zero_allow_untested_optimizer": True, "gradient_clipping": clip, "steps_per_print": 10**9,
           "zero_optimization": {"stage": stage, "reduce_bucket_size": 50, "allgather_bucket_size": 50,
                                 "stage3_param_persistence_threshold": 0}}
    if dtype == "bf16":
        cfg.update(bf16={"enabled": True}, data_types={"grad_accum_dtype": "fp32"})
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


def make_engine(model, cfg):
    named = list(model.named_parameters())
    opt = torch.optim.SGD([{"params": [p for n, p in named if group_of(n) == g], "lr": LR[g]} for g in GROUPS])
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
    return engine


def model_params(engine):
    """The parameters the forward pass uses (bf16 where the model is bf16), float64."""
    params = [p for _, p in engine.module.named_parameters()]
    if engine.zero_optimization_stage() == 3:
        with deepspeed.zero.GatheredParameters(params):
            return torch.cat([p.detach().reshape(-1).double() for p in params])
    return torch.cat([p.detach().reshape(-1).double() for p in params])


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def run(args):
    """One case (args.stage, args.dtype, args.clip) on the process group already joined:
    (ok, the case's result), the same on every rank."""
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = Net()
    ref = copy.deepcopy(model).double()
    bf16 = args.dtype == "bf16"
    ds_clip = args.clip if not (bf16 and args.stage == 1) else 0.0     # BF16_Optimizer: clip from the Gram
    engine = make_engine(model, ds_config(args.stage, args.dtype, ds_clip))
    shards = GradShards(engine)
    assert shards.clip_from_gram == (shards.layout == "bf16") and shards.partitioned == (shards.layout != "z0")

    ref_named = list(ref.named_parameters())
    names = [n for n, _ in ref_named]
    assert names == [n for n, _ in engine.module.named_parameters()]
    numels = {n: p.numel() for n, p in ref_named}
    offs, o = {}, 0
    for n in names:
        offs[n] = o
        o += numels[n]
    cols = {g: torch.cat([torch.arange(offs[n], offs[n] + numels[n]) for n in names if group_of(n) == g])
            for g in GROUPS}
    lr_vec = torch.cat([torch.full((numels[n],), LR[group_of(n)], dtype=torch.float64) for n in names])
    tol = {"grad": 5e-2, "gram": 5e-2, "update": 5e-2} if bf16 else {"grad": 1e-6, "gram": 1e-6, "update": 1e-5,
                                                                      "params": 1e-6}
    errors = {k: 0.0 for k in tol}
    clipped = False

    segs, gsegs = shards.segments(), shards.gram_segments()
    if not shards.partitioned:
        assert [(s.name, s.numel) for s in segs] == [(n, numels[n]) for n in names], segs
    else:
        assert segs == gsegs
    all_gsegs = [None] * world
    tdist.all_gather_object(all_gsegs, gsegs)
    covered = {n: sum(s.numel for r in all_gsegs for s in r if s.name == n) for n in names}
    assert covered == numels, (covered, numels)

    for step in range(args.steps):
        if bf16:        # the reference starts every step from the engine's (bf16) weights
            with torch.no_grad():
                cur = model_params(engine)
                for n, p in ref_named:
                    p.copy_(cur[offs[n]:offs[n] + numels[n]].view_as(p))
        # ---- reference: unsharded, float64, the data of every rank ----
        rows = []
        for t in range(K):
            ref.zero_grad(set_to_none=True)
            for r in range(world):
                for m in range(M):
                    x, y = batch(step, t, r, m)
                    (loss_fn(ref(x, t), y) / (K * M * world)).backward()
            rows.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                                   for _, p in ref_named]))
        R = torch.stack(rows)
        Gb_ref = torch.stack([R[:, cols[g]] @ R[:, cols[g]].T for g in GROUPS])

        # ---- DeepSpeed: every task its own accumulation boundary ----
        if not args.skip_begin_step:
            shards.begin_step()
        snaps = []
        for t in range(K):
            for m in range(M):
                engine.set_gradient_accumulation_boundary(m == M - 1)
                x, y = batch(step, t, rank, m)
                engine.backward(loss_fn(engine(x, t), y))
            snaps.append(shards.snapshot())
            if t < K - 1:
                shards.reset()
        S = torch.stack(snaps).double()
        assert S.shape == (K, shards.numel)

        # (1) the snapshots of all ranks rebuild every task gradient
        gathered = [None] * world
        tdist.all_gather_object(gathered, S)
        pieces = {n: [] for n in names}
        for r in range(world):
            for s in all_gsegs[r]:
                pieces[s.name].append(gathered[r][:, s.start:s.start + s.numel])
        full = torch.cat([torch.cat(pieces[n], dim=1) for n in names], dim=1)
        errors["grad"] = max(errors["grad"], rel_err(full, R))
        if not shards.partitioned:  # segments(): the whole gradient on every rank
            for s in segs:
                errors["grad"] = max(errors["grad"], rel_err(S[:, s.start:s.start + s.numel],
                                                             R[:, offs[s.name]:offs[s.name] + s.numel]))

        # (2) per-group Grams: local sums over gram_segments, ONE all_reduce
        Gb = torch.zeros(len(GROUPS), K, K, dtype=torch.float64)
        for s in gsegs:
            blk = S[:, s.start:s.start + s.numel]
            Gb[GROUPS.index(group_of(s.name))] += blk @ blk.T
        dist.all_reduce(Gb, group=shards.dp_group)
        errors["gram"] = max(errors["gram"], rel_err(Gb, Gb_ref), rel_err(Gb.sum(0), R @ R.T))

        # (3) reconcile from the Gram (identical on every rank), write back, engine.step()
        def coefficients(G):
            norms = torch.sqrt(torch.diagonal(G.sum(0)))
            return {g: COEF[g] / norms for g in GROUPS}

        A, A_ref = coefficients(Gb), coefficients(Gb_ref)
        u = torch.zeros(shards.numel, dtype=torch.float64)
        for s in segs:
            u[s.start:s.start + s.numel] = A[group_of(s.name)] @ S[:, s.start:s.start + s.numel]
        u_ref = torch.zeros(R.shape[1], dtype=torch.float64)
        for g in GROUPS:
            u_ref[cols[g]] = A_ref[g] @ R[:, cols[g]]
        if args.clip > 0:
            scale_ref = min(1.0, args.clip / (float(u_ref.norm()) + 1e-6))
            clipped |= scale_ref < 1.0
            u_ref *= scale_ref
            if shards.clip_from_gram:
                norm = float(torch.sqrt(sum(A[g] @ Gb[i] @ A[g] for i, g in enumerate(GROUPS))))
                u *= min(1.0, args.clip / (norm + 1e-6))
        before = full_params(engine)
        shards.write_back(u.float())
        engine.set_gradient_accumulation_boundary(True)
        engine.step()
        after = full_params(engine)
        errors["update"] = max(errors["update"], rel_err(after - before, -lr_vec * u_ref))
        if not bf16:    # the fp32 reference runs on by itself over all steps
            with torch.no_grad():
                for n, p in ref_named:
                    p -= (lr_vec * u_ref)[offs[n]:offs[n] + numels[n]].view_as(p)
            refv = torch.cat([p.detach().reshape(-1) for _, p in ref_named])
            errors["params"] = max(errors["params"], rel_err(after, refv))

    ok = all(errors[k] <= tol[k] for k in tol) and (clipped or args.clip == 0)
    # every rank checks; the verdict and the errors are the worst over ranks
    worst = torch.tensor([0.0 if ok else 1.0] + [errors[k] for k in sorted(errors)], dtype=torch.float64)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    ok = worst[0].item() == 0.0
    errors = {k: worst[i + 1].item() for i, k in enumerate(sorted(errors))}
    return ok, {"world_size": world, "layout": shards.layout, "stage": args.stage, "dtype": args.dtype, "ok": ok,
                "max_rel_err": max(errors.values()), "errors": errors, "tolerances": tol, "clipped": clipped}


def run_cases(args):
    """Every --case in one launch (process start and rendezvous once), or the single case of
    --stage/--dtype/--clip. Several cases report {"world_size", "cases": {case: result}}."""
    deepspeed.init_distributed(dist_backend="gloo")
    if not args.case:
        ok, result = run(args)
    else:
        results = {}
        for case in args.case:
            stage, dtype, clip = case.split(":")
            results[case] = run(argparse.Namespace(**{**vars(args), "stage": int(stage), "dtype": dtype,
                                                      "clip": float(clip)}))
        ok = all(r[0] for r in results.values())
        result = {"world_size": dist.get_world_size(), "cases": {c: r[1] for c, r in results.items()}}
    if dist.get_rank() == 0:
        emit_result(result)
    dist.barrier()
    return ok


def refusals():
    """One process: every unsupported configuration raises ConfigError naming its field."""
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    deepspeed.init_distributed(dist_backend="gloo")
    cases = {
        "offload_optimizer": ds_config(2, "fp32", 0.0, zero_optimization={"offload_optimizer": {"device": "cpu"}},
                                       zero_force_ds_cpu_optimizer=False),
        "offload_param": ds_config(3, "fp32", 0.0, zero_optimization={"offload_param": {"device": "cpu"}},
                                   zero_force_ds_cpu_optimizer=False),
        "fp16": ds_config(2, "fp32", 0.0, fp16={"enabled": True}),
        "managed_gradient_accumulation": ds_config(2, "fp32", 0.0, managed_gradient_accumulation=False),
        "gradient_clipping": ds_config(1, "bf16", 1.0),
        "wrapper": ds_config(0, "fp32", 0.0, bf16={"enabled": True}),
    }
    accelerator = deepspeed.get_accelerator()
    supports_fp16 = accelerator.is_fp16_supported
    out = {}
    for case, cfg in cases.items():
        torch.manual_seed(0)
        # the CPU accelerator refuses fp16 engines: pretend it has fp16 to reach the adapter's check
        accelerator.is_fp16_supported = (lambda: True) if case == "fp16" else supports_fp16
        try:
            engine = make_engine(Net(), cfg)
        except Exception as e:          # DeepSpeed itself refuses: nothing for the adapter to check
            out[case] = {"outcome": "deepspeed", "message": f"{type(e).__name__}: {e}"[:300]}
            continue
        try:
            GradShards(engine)
            out[case] = {"outcome": "accepted", "message": ""}
        except ConfigError as e:
            out[case] = {"outcome": "ConfigError", "message": str(e)}
    emit_result({"world_size": 1, "refusals": out})
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", type=int, choices=[0, 1, 2, 3], default=2)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--clip", type=float, default=0.0)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--skip-begin-step", action="store_true", help="leave out GradShards.begin_step()")
    ap.add_argument("--case", action="append", default=[], metavar="STAGE:DTYPE:CLIP",
                    help="a case to run (repeatable, e.g. 3:fp32:2.0; clip 0 = none) instead of --stage/--dtype/--clip")
    ap.add_argument("--refusals", action="store_true")
    ap.add_argument("--local_rank", type=int, default=-1)
    args = ap.parse_args()
    ok = refusals() if args.refusals else run_cases(args)
    exit_now(0 if ok else 1)


if __name__ == "__main__":
    run_rank(main)
