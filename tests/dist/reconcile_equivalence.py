"""Run by tests with N ranks: sharded reconciliation inside DeepSpeed == the unsharded textbook.

For each method the real Trainer (ZeRO stage from the ds_config, N ranks) trains a few steps.
Rank 0 then replays the same steps in one process with plain PyTorch: full per-task gradients
g_k = (1 / (N * gas)) * sum over every rank's micro-batches of task k, the textbook
full-vector reconciler of tests/reference.py, DeepSpeed's clipping rule, AdamW and the
inverse-sqrt schedule. Parameters frozen by `model.freeze` (an override) are frozen in the replay
too: they get no gradient, no group and no optimizer state. CATS: the reference takes each task's mean loss and the explicit
gradient vectors of the mean losses (of the training micro-batches, or of the valid micro-batches
at meta steps, with `cats.meta_data: valid`) into reference.cats_step; with `cats.objective:
lookahead` also the corrected training gradients, the step's learning rate and the clipping
threshold (the look-ahead from the update that the step applies). Prints `RESULT {json}`
with the relative parameter differences (and, for CATS, those of alpha and lam).

usage: reconcile_equivalence.py DS_CONFIG[,DS_CONFIG...] STEPS METHOD[:GRANULARITY][+CATS_FIELD=VALUE...] [...] -- OVERRIDES...
e.g. `cats:all_layer+base=gradvac+meta_data=valid` (CATS fields go to reconcile.cats.*)
With several ds_configs (e.g. every ZeRO stage) one launch runs every method under each in turn
and the payload is `{"world_size", "configs": {DS_CONFIG: {"methods": ...}}}`; a failure names the
ds_config and the method it happened in.
"""
import sys
from pathlib import Path

import torch

import deepspeed.comm as dist

from massive_mt.engine.config import load_config, load_ds_config, resolve_ds_config, unread_option_overrides
from massive_mt.data.sampler import TaskStepSampler
from massive_mt.engine.distributed import init_distributed
from massive_mt.engine.model import build_model, freeze_parameters
from massive_mt.engine.optim import build_optimizer, label_smoothed_loss
from massive_mt.reconcile import make_state, step_generator
from massive_mt.reconcile.cats import CATSState, is_meta_step, task_scales
from massive_mt.reconcile.groups import assign_groups
from massive_mt.train import Trainer

from common import finish, full_params, run_rank     # tests/dist/common.py (the script's folder)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import reference     # noqa: E402  tests/reference.py


def base_keywords(reconciler) -> dict:
    """The keyword arguments the trainer's Gram method runs with (CATS's base's), none without a reconciler."""
    if reconciler is None:
        return {}
    w = reconciler.weigher
    return getattr(w, "base", w).keywords


def reference_run(cfg, trainer: Trainer, world: int, steps: int):
    """The unsharded single-process computation of the same training."""
    torch.manual_seed(cfg.train.seed)
    m = cfg.model
    model = build_model(m.preset, trainer.tokenizer.vocab_size, cfg.data.max_len, None, dropout=m.dropout,
                        attention_dropout=m.attention_dropout, activation_dropout=m.activation_dropout).double()
    freeze_parameters(model, m.freeze or [])
    opt, sched = build_optimizer(model, cfg.optim)
    named = list(model.named_parameters())
    params = [p for _, p in named if p.requires_grad]          # what the update moves
    names = [n for n, p in named if p.requires_grad]
    s = cfg.sampling
    samplers = [TaskStepSampler(trainer.tasks, trainer.sampler.batches, trainer.probs, s.tasks_per_step,
                                s.micro_batches_per_task, world, r, s.seed) for r in range(world)]
    method, gran = cfg.reconcile.method, cfg.reconcile.granularity
    base = cfg.reconcile.cats.base if method == "cats" else method
    groups = assign_groups([n for n, _ in named], gran, frozen={n for n, p in named if not p.requires_grad})
    group_names = list(dict.fromkeys(groups.values()))
    state = make_state(base, len(group_names), len(trainer.tasks)) if method != "plain" else None
    if method == "cats":
        ccfg = trainer.reconciler.weigher.cfg
        cats_state = CATSState.uniform(len(trainer.tasks), ccfg.param)
    rc = {"ema_rate": cfg.reconcile.ema_rate,
          "vaccinate_ids": base_keywords(trainer.reconciler).get("vaccinate_ids")}
    gas = s.tasks_per_step * s.micro_batches_per_task
    for step in range(steps):
        plans = [smp.plan(step) for smp in samplers]
        tasks = [t for t, _ in plans[0]]
        assert all([t for t, _ in p] == tasks for p in plans), "ranks disagree on the step's tasks"

        def grad_and_loss(batches, dataset, scale):
            model.zero_grad(set_to_none=False)
            total = 0.0
            for b in map(dataset.collate, batches):
                out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                            decoder_input_ids=b["decoder_input_ids"])
                loss, _, _ = label_smoothed_loss(out.logits, b["labels"], trainer.pad_id, cfg.optim.label_smoothing)
                (loss * scale).backward()
                total += float(loss)
            return [q.grad.detach().clone() for q in params], total / len(batches)

        valid = None
        if method == "cats" and trainer.reconciler.meta_data == "valid" and is_meta_step(cats_state, ccfg):
            model.eval()                           # one valid micro-batch per task and rank, no dropout
            valid = []
            for task in tasks:
                bs = trainer.valid_batches[task]
                mbs = [bs[(cats_state.meta_steps * world + r) % len(bs)] for r in range(world)]
                g, l = grad_and_loss(mbs, trainer.valid_sets[task], 1.0 / world)
                valid.append((torch.cat([x.reshape(-1) for x in g]), l))
            model.train()
        task_grads, losses = [], []
        for k, task in enumerate(tasks):
            g, l = grad_and_loss([idx for p in plans for idx in p[k][1]], trainer.datasets[task], 1.0 / (world * gas))
            task_grads.append(g)
            losses.append(l)
        if method == "plain":
            update = [sum(g[i] for g in task_grads) for i in range(len(params))]
        else:
            per_group = [torch.stack([torch.cat([g[i].reshape(-1) for i, n in enumerate(names) if groups[n] == gn])
                                      for g in task_grads]) for gn in group_names]
            gen = step_generator(s.seed, step)
            ids = [trainer.tasks.index(t) for t in tasks]
            if method == "cats":       # vectors in units of the mean losses' gradients: K * captured
                corrected, state = reference.correct(base, per_group, ids, state, gen, **rc)
                vectors, meta_losses = (torch.stack([v for v, _ in valid]), [l for _, l in valid]) if valid else \
                    (s.tasks_per_step * torch.cat(corrected, 1), losses)
                look = dict(update=torch.cat(corrected, 1).double(), lr=sched.get_last_lr()[0],
                            clip_norm=cfg.optim.clip_norm) if valid and ccfg.objective == "lookahead" else {}
                beta, cats_state = reference.cats_step(cats_state, ccfg, ids, torch.tensor(meta_losses, dtype=torch.float64),
                                                       vectors.double(), **look)
                upd = [s.tasks_per_step * beta @ c for c in corrected]
            else:
                upd, state = reference.reconcile(method, per_group, ids, state, gen, **rc)
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
    return torch.cat([q.detach().double().reshape(-1) for _, q in named]), (cats_state if method == "cats" else None)


def frozen_report(trainer: Trainer, start, got) -> dict:
    """Collective. Frozen parameters: unchanged, in no optimizer group, no shard segment and no
    optimizer state; `adam_state_numel`: the exp_avg values of every rank together (each rank's
    own where the optimizer is not partitioned: stage 0)."""
    engine = trainer.engine
    named = list(engine.module.named_parameters())
    frozen = {id(p) for _, p in named if not p.requires_grad}
    mask = torch.cat([torch.full((getattr(p, "ds_numel", p.numel()),), not p.requires_grad) for _, p in named])
    opt = engine.optimizer
    param_groups = next((getattr(opt, a) for a in ("bit16_groups", "fp16_groups", "bf16_groups") if hasattr(opt, a)),
                          [g["params"] for g in opt.param_groups])
    inner = getattr(opt, "optimizer", opt)
    state = torch.tensor(float(sum(st["exp_avg"].numel() for st in inner.state.values())), device=trainer.device)
    if engine.zero_optimization_stage() > 0:
        dist.all_reduce(state)
    shards = trainer.reconciler.shards if trainer.reconciler is not None else None
    return {"frozen_numel": int(mask.sum()), "trainable_numel": int((~mask).sum()),
            "frozen_moved": float((got - start)[mask].abs().max()) if mask.any() else 0.0,
            "wrapper_holds_frozen": any(id(p) in frozen for g in param_groups for p in g),
            "adam_state_numel": int(state),
            "segments_of_frozen": sorted({s.name for s in shards.segments() + shards.gram_segments()}
                                         & {n for n, p in named if not p.requires_grad}) if shards else None}


def run_methods(ds_path: str, steps: int, specs: list[str], overrides: list[str], rank: int, world: int) -> dict:
    """Every method of `specs` trained under one ds_config and compared with the replay."""
    methods, finals = {}, {}
    for spec in specs:
        try:
            methods[spec], finals[spec] = run_method(ds_path, steps, spec, overrides, rank, world)
        except Exception as e:
            e.add_note(f"(in the run of {spec} under {ds_path}, {world} rank(s))")
            raise
        dist.barrier()
    if "plain" in finals:
        for spec, got in finals.items():
            methods[spec]["vs_plain"] = float((got - finals["plain"]).abs().max() / finals["plain"].abs().max())
    return methods


def run_method(ds_path: str, steps: int, spec: str, overrides: list[str], rank: int, world: int):
    """The trainer's result for one method (on rank 0 against the replay) and its final parameters."""
    head, *cats_fields = spec.split("+")
    method, _, gran = head.partition(":")
    base = dict(kv.split("=", 1) for kv in cats_fields).get("base", "sum")
    cfg = load_config(None, overrides + [f"reconcile.method={method}"] +    # shared options: for the methods reading them
                      unread_option_overrides(method, base) + ([f"reconcile.granularity={gran}"] if gran else []) +
                      [f"reconcile.cats.{kv}" for kv in cats_fields])
    ds = resolve_ds_config(load_ds_config(ds_path), cfg, world)
    trainer = Trainer(cfg, ds, rank, world)
    start = full_params(trainer.engine)
    for _ in range(steps):
        trainer.train_step()
    got = full_params(trainer.engine)
    res = {"moved": float((got - start).abs().max()), "stage": trainer.engine.zero_optimization_stage(),
           "wrapper": type(trainer.engine.optimizer).__name__,
           "checkpointed_layers": sum(bool(getattr(x, "gradient_checkpointing", False))   # model.activation_checkpointing
                                      for x in trainer.engine.module.modules()),
           **frozen_report(trainer, start, got)}
    if trainer.reconciler is not None:
        res["groups"] = len(trainer.reconciler.groups)
        res["snapshot_numel"] = trainer.reconciler.buffer.shape[1]
        res["fired"] = trainer.reconciler.fired_total
    if method == "cats":
        cs, ccfg = trainer.reconciler.weigher.state, trainer.reconciler.weigher.cfg
        res.update(meta_steps=cs.meta_steps, lam=cs.lam, alpha=task_scales(cs, ccfg).tolist())
        mine = torch.cat([cs.values.to(trainer.device),                      # NCCL gathers device tensors
                          torch.tensor([cs.lam, cs.steps, cs.meta_steps], dtype=torch.float64,
                                       device=trainer.device)])
        every = [torch.zeros_like(mine) for _ in range(world)]
        dist.all_gather(every, mine)
        res["ranks_agree"] = all(torch.equal(x, mine) for x in every)     # bitwise, on every rank
    if rank == 0:
        ref, ref_cats = reference_run(cfg, trainer, world, steps)
        res["rel_diff"] = float((got - ref).abs().max() / ref.abs().max())
        if ref_cats is not None:
            a_ref = task_scales(ref_cats, ccfg)
            res["alpha_rel_diff"] = float((torch.tensor(res["alpha"], dtype=torch.float64) - a_ref).abs().max()
                                          / a_ref.abs().max())
            res["lam_rel_diff"] = abs(res["lam"] - ref_cats.lam) / max(abs(ref_cats.lam), 1e-300)
            res["ref_meta_steps"] = ref_cats.meta_steps
    return res, got


def main():
    sep = sys.argv.index("--")
    ds_paths, steps, specs, overrides = sys.argv[1].split(","), int(sys.argv[2]), sys.argv[3:sep], sys.argv[sep + 1:]
    rank, world = init_distributed()
    runs = {ds_path: {"methods": run_methods(ds_path, steps, specs, overrides, rank, world)} for ds_path in ds_paths}
    finish({"world_size": dist.get_world_size(), **(runs[ds_paths[0]] if len(ds_paths) == 1 else {"configs": runs})},
           rank)


if __name__ == "__main__":
    run_rank(main)
