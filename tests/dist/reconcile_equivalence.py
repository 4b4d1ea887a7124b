"""Run by tests with N ranks: sharded reconciliation inside DeepSpeed == the unsharded textbook.

For each method the real Trainer (ZeRO stage from the ds_config, N ranks) trains a few steps.
Rank 0 then replays the same steps in one process with plain PyTorch: full per-task gradients
g_k = (1 / (N * gas)) * sum over every rank's micro-batches of task k, the textbook
full-vector reconciler of massive_mt.reconcile.reference, DeepSpeed's clipping rule, AdamW and
the inverse-sqrt schedule. Prints `RESULT {json}` with the relative parameter differences.

usage: reconcile_equivalence.py DS_CONFIG STEPS METHOD[:GRANULARITY] [...] -- OVERRIDES...
"""
import json
import sys

import torch

import deepspeed.comm as dist

from massive_mt.config import load_config, load_ds_config, resolve_ds_config
from massive_mt.data.sampler import TaskStepSampler
from massive_mt.distributed import init_distributed
from massive_mt.model import build_model
from massive_mt.optim import build_optimizer, label_smoothed_loss
from massive_mt.reconcile import make_state, reference
from massive_mt.reconcile.groups import assign_groups
from massive_mt.reconcile.methods import ReconcileConfig
from massive_mt.train import Trainer

from common import exit_now, full_params     # tests/dist/common.py (the script's folder)


def reference_run(cfg, trainer: Trainer, world: int, steps: int) -> torch.Tensor:
    """The unsharded single-process computation of the same training."""
    torch.manual_seed(cfg.train.seed)
    m = cfg.model
    model = build_model(m.preset, trainer.tokenizer.vocab_size, cfg.data.max_len, None, dropout=m.dropout,
                        attention_dropout=m.attention_dropout, activation_dropout=m.activation_dropout).double()
    opt, sched = build_optimizer(model, cfg.optim)
    params = list(model.parameters())
    names = [n for n, _ in model.named_parameters()]
    s = cfg.sampling
    samplers = [TaskStepSampler(trainer.tasks, trainer.sampler.batches, trainer.probs, s.tasks_per_step,
                                s.micro_batches_per_task, world, r, s.seed) for r in range(world)]
    method, gran = cfg.reconcile.method, cfg.reconcile.granularity
    groups = assign_groups(names, gran)
    group_names = list(dict.fromkeys(groups.values()))
    state = make_state(method, len(group_names), len(trainer.tasks)) if method != "plain" else None
    rc = ReconcileConfig(beta=cfg.reconcile.beta, vaccinated=trainer.reconciler.config.vaccinated
                         if trainer.reconciler is not None else None)
    gas = s.tasks_per_step * s.micro_batches_per_task
    for step in range(steps):
        plans = [smp.plan(step) for smp in samplers]
        tasks = [t for t, _ in plans[0]]
        assert all([t for t, _ in p] == tasks for p in plans), "ranks disagree on the step's tasks"
        task_grads = []
        for k, task in enumerate(tasks):
            model.zero_grad(set_to_none=False)
            for p in plans:
                for idx in p[k][1]:
                    b = trainer.datasets[task].collate(idx)
                    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                decoder_input_ids=b["decoder_input_ids"])
                    loss, _, _ = label_smoothed_loss(out.logits, b["labels"], trainer.pad_id, cfg.optim.label_smoothing)
                    (loss / (world * gas)).backward()
            task_grads.append([q.grad.detach().clone() for q in params])
        if method == "plain":
            update = [sum(g[i] for g in task_grads) for i in range(len(params))]
        else:
            per_group = [torch.stack([torch.cat([g[i].reshape(-1) for i, n in enumerate(names) if groups[n] == gn])
                                      for g in task_grads]) for gn in group_names]
            gen = torch.Generator().manual_seed(s.seed * 1_000_003 + step)
            ids = [trainer.tasks.index(t) for t in tasks]
            upd, state = reference.reconcile(method, per_group, ids, state, gen, rc)
            update, offs = [None] * len(params), {gn: 0 for gn in group_names}
            for i, n in enumerate(names):
                gn = groups[n]
                update[i] = upd[group_names.index(gn)][offs[gn]:offs[gn] + params[i].numel()].view_as(params[i])
                offs[gn] += params[i].numel()
        norm = torch.sqrt(sum((u.double() ** 2).sum() for u in update))
        coef = (norm + 1e-6) / cfg.optim.clip_norm if cfg.optim.clip_norm > 0 else 0.0
        for q, u in zip(params, update):
            q.grad = (u / coef if coef > 1 else u).to(q.dtype)
        opt.step()
        sched.step()
    return torch.cat([q.detach().double().reshape(-1) for q in params])


def main():
    sep = sys.argv.index("--")
    ds_path, steps, specs, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:sep], sys.argv[sep + 1:]
    rank, world = init_distributed()
    results = {"world_size": dist.get_world_size(), "methods": {}}
    finals = {}
    for spec in specs:
        method, _, gran = spec.partition(":")
        cfg = load_config(None, overrides + [f"reconcile.method={method}"] +
                          ([f"reconcile.granularity={gran}"] if gran else []))
        ds = resolve_ds_config(load_ds_config(ds_path), cfg, world)
        trainer = Trainer(cfg, ds, rank, world)
        start = full_params(trainer.engine)
        for _ in range(steps):
            trainer.train_step()
        got = full_params(trainer.engine)
        finals[spec] = got
        res = {"moved": float((got - start).abs().max()), "stage": trainer.engine.zero_optimization_stage(),
               "wrapper": type(trainer.engine.optimizer).__name__}
        if trainer.reconciler is not None:
            res["groups"] = len(trainer.reconciler.groups)
            res["snapshot_numel"] = trainer.reconciler.buffer.shape[1]
            res["fired"] = trainer.reconciler.fired_total
        if rank == 0:
            ref = reference_run(cfg, trainer, world, steps)
            res["rel_diff"] = float((got - ref).abs().max() / ref.abs().max())
        results["methods"][spec] = res
        dist.barrier()
    if "plain" in finals and "sum" in finals:
        results["sum_vs_plain"] = float((finals["sum"] - finals["plain"]).abs().max() / finals["plain"].abs().max())
    if rank == 0:
        print("RESULT " + json.dumps(results), flush=True)
    dist.barrier()
    exit_now(0)


if __name__ == "__main__":
    main()
