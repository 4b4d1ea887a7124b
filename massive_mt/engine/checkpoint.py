"""Checkpoints: DeepSpeed's `save_checkpoint` (model, optimizer, scheduler, per-rank shards)
plus the trainer's own state (step, sampler cursors) in `client_state`, and the final model
in Hugging Face format (written by massive_mt/engine/export.py).

A checkpoint counts only when complete (docs/failures.md)::

    checkpoints/
      step400/                          one tag per saved step
        mp_rank_00_model_states.pt      DeepSpeed's files (model, client_state, one optimizer shard per rank)
        zero_pp_rank_*_optim_states.pt
        massive_mt_complete.json        completion marker: sha256 and size of every file of the tag,
                                        the run's layout and config, whether every parameter is finite
      latest                            name of the newest complete tag (for DeepSpeed's tools)

Saving: every rank writes its files; all ranks check their share of the parameters for NaN/inf
and hash their share of the files; then rank 0 writes the marker (temporary file, fsync,
rename), then `latest` the same way, then prunes. A save interrupted anywhere before the
marker leaves a tag without one, which never counts.

Loading (`train.resume: auto`): the newest tag whose marker is present, whose files all match
their checksums and whose parameters are finite; every newer tag skipped, and a `latest` that
is empty or names another tag, is reported on stderr with the reason and the file. When tags
exist but none qualifies the run is refused (CheckpointError), never restarted from step 0.
Checksums are verified by all ranks (each its share of the files) and the verdicts gathered,
so every rank loads the same tag. The checkpoint directory must be shared by the ranks
(DeepSpeed's default).

Pruning (`train.keep_last`) keeps the newest keep_last complete tags and, always, the newest
complete finite one (the tag a resume falls back to) and the best one (`best.json`, written by
validation); it deletes older complete tags and
marker-less tags older than the newest complete one (debris of interrupted saves).

Another layout (`train.reshard: auto`, docs/failures.md): a checkpoint written with another world
size, ZeRO stage or precision is converted once, by rank 0 while the others wait, with DeepSpeed's
`ds_to_universal` into `<tag>_universal/` beside the tag (built in a temporary directory, renamed
into place with a marker; reused when present), and loaded with DeepSpeed's universal loader; a
change between ZeRO-2 and ZeRO-3, which that loader does not handle, is read parameter by parameter
(`load_stage_change`). ZeRO-0 on either side is refused.

Length: a checkpoint's whole life (save with its marker, verify, choose, resume, reshard) in one
place, so that the rules that keep a checkpoint complete are read together.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch

import deepspeed
import deepspeed.comm as dist

from massive_mt.engine.zero_adapter import layout_of
from massive_mt.errors import MassiveMTError
from massive_mt.io import atomic_write_text, staged_dir

TAG_RE = re.compile(r"^step(\d+)$")
MARKER = "massive_mt_complete.json"
LATEST = "latest"
FORMAT = 1
UNIVERSAL = "_universal"                        # <tag>_universal: DeepSpeed's universal checkpoint of <tag>
UNIVERSAL_MARKER = "massive_mt_universal.json"  # written last into <tag>_universal: the conversion is complete
FAULT_ENV = "MASSIVE_MT_FAULT_KILL_IN_SAVE"     # tests only: "RANK:STEP" dies half-way through its shard


class CheckpointError(MassiveMTError):
    """No checkpoint can be resumed although checkpoints exist, or the one named is damaged."""


def tag_for(step: int) -> str:
    return f"step{step}"


def step_tags(ckpt_dir: Path) -> list[tuple[int, str]]:
    """(step, tag) of every tag directory, oldest first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    return sorted((int(m.group(1)), p.name) for p in d.iterdir() if p.is_dir() and (m := TAG_RE.match(p.name)))


# ----------------------------------------------------------------------------- files and marker

def tag_files(tag_dir: Path) -> list[str]:
    """Every file of a tag (relative paths), the marker and temporary files excepted."""
    tag_dir = Path(tag_dir)
    return sorted(str(p.relative_to(tag_dir)) for p in tag_dir.rglob("*")
                  if p.is_file() and p.name != MARKER and not p.name.endswith(".tmp"))


def file_sums(tag_dir: Path, names: list[str]) -> dict[str, dict]:
    out = {}
    for name in names:
        h, n = hashlib.sha256(), 0
        with open(Path(tag_dir) / name, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
                n += len(chunk)
        out[name] = {"sha256": h.hexdigest(), "bytes": n}
    return out


def write_marker(tag_dir: Path, step: int, finite: bool, run: dict, files: dict) -> None:
    marker = {"format": FORMAT, "tag": Path(tag_dir).name, "step": step, "finite": bool(finite),
              "run": run, "files": files}
    atomic_write_text(Path(tag_dir) / MARKER, json.dumps(marker, indent=1, sort_keys=True))


def read_marker(tag_dir: Path) -> dict:
    """The marker of a tag; CheckpointError naming the file when it is absent or unreadable."""
    f = Path(tag_dir) / MARKER
    if not f.is_file():
        raise CheckpointError(f"{tag_dir}: incomplete (no {MARKER}: the save was interrupted, "
                              f"or it was written before checkpoints had completion markers)")
    try:
        m = json.loads(f.read_text(encoding="utf-8"))
        if m.get("format") != FORMAT or not isinstance(m.get("files"), dict):
            raise ValueError(f"format {m.get('format')!r}")
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise CheckpointError(f"{f}: unreadable completion marker ({e})") from None
    return m


def verify(tag_dir: Path, share: tuple[int, int] = (0, 1)) -> Optional[str]:
    """None when the tag is complete and this rank's `share` (rank, world) of its files matches
    the marker; else what is wrong, naming the file."""
    tag_dir = Path(tag_dir)
    try:
        files = read_marker(tag_dir)["files"]
    except CheckpointError as e:
        return str(e)
    rank, world = share
    for name in sorted(files)[rank::world]:
        want, f = files[name], tag_dir / name
        if not f.is_file():
            return f"{f}: missing"
        size = f.stat().st_size
        if size != want["bytes"]:
            return f"{f}: {size} bytes, {want['bytes']} when saved (truncated or overwritten)"
        if file_sums(tag_dir, [name])[name]["sha256"] != want["sha256"]:
            return f"{f}: sha256 differs from the one recorded at save time (damaged)"
    return None


# ----------------------------------------------------------------------------- collectives

def _gather(obj) -> list:
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def verify_all(tag_dir: Path) -> Optional[str]:
    """Collective `verify`: every rank checks its share of the files; the same verdict on every rank."""
    problems = [p for p in _gather(verify(tag_dir, (dist.get_rank(), dist.get_world_size()))) if p]
    return min(problems) if problems else None


def params_finite(engine) -> bool:
    """Collective: True when no parameter is NaN or inf; each rank checks its share (ZeRO-3: its partition)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    if layout_of(engine).weights_partitioned:
        local = [deepspeed.utils.safe_get_local_fp32_param(p) for p in engine.module.parameters()]
    else:
        local = [p for i, p in enumerate(engine.module.parameters()) if i % world == rank]
    bad = any(t is not None and not bool(torch.isfinite(t).all()) for t in local)
    flag = torch.tensor([int(bad)], dtype=torch.int32, device=engine.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return not bool(flag.item())


def _fault_in_save(tag_dir: Path, step: int) -> None:
    """Tests only (FAULT_ENV="RANK:STEP"): this rank dies with half of its optimizer shard written,
    as a `kill -9` during torch.save leaves it."""
    spec = os.environ.get(FAULT_ENV)
    if not spec or spec != f"{dist.get_rank()}:{step}":
        return
    for f in Path(tag_dir).glob(f"*zero_pp_rank_{dist.get_rank()}_*"):
        with open(f, "r+b") as fh:
            fh.truncate(f.stat().st_size // 2)
    print(f"[massive_mt] {FAULT_ENV}: rank {dist.get_rank()} dies during the save of step {step}",
          file=sys.stderr, flush=True)
    os._exit(137)


def save(engine, ckpt_dir: Path, step: int, client_state: dict, keep_last: int, run: dict) -> str:
    """Collective: every rank calls it. Returns the tag written. `run` (world size, ZeRO stage,
    precision, config) goes into the marker, where a resume reads it before loading anything."""
    ckpt_dir, tag = Path(ckpt_dir), tag_for(step)
    tag_dir = ckpt_dir / tag
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0 and tag_dir.exists():            # debris of an interrupted save of the same step
        shutil.rmtree(tag_dir)
    dist.barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    _fault_in_save(tag_dir, step)
    finite = params_finite(engine)
    dist.barrier()                                 # every rank's files are written
    names = [tag_files(tag_dir) if rank == 0 else None]
    dist.broadcast_object_list(names, src=0)
    sums = {}
    for part in _gather(file_sums(tag_dir, names[0][rank::world])):
        sums.update(part)
    if rank == 0:
        write_marker(tag_dir, step, finite, run, sums)
        atomic_write_text(ckpt_dir / LATEST, tag)
        prune(ckpt_dir, keep_last)
        if not finite:
            print(f"[massive_mt] checkpoint {tag_dir}: parameters are not finite; a resume skips it",
                  file=sys.stderr, flush=True)
    dist.barrier()
    return tag


def prune(ckpt_dir: Path, keep_last: int) -> None:
    """Keep the newest keep_last complete tags, the newest complete finite one and the best one
    (checkpoints/best.json, massive_mt/engine/validation.py); see the module doc."""
    from massive_mt.engine.validation import read_best

    complete, debris = [], []
    for step, tag in step_tags(ckpt_dir):
        try:
            complete.append((step, tag, read_marker(Path(ckpt_dir) / tag)))
        except CheckpointError:
            debris.append((step, tag))
    if not complete:
        return
    keep = {tag for _, tag, _ in complete[-keep_last:]}
    finite = [tag for _, tag, m in complete if m.get("finite")]
    if finite:
        keep.add(finite[-1])
    best = read_best(ckpt_dir)
    if best and best.get("tag"):
        keep.add(best["tag"])
    newest = complete[-1][0]
    drop = [tag for _, tag, _ in complete if tag not in keep] + [tag for step, tag in debris if step < newest]
    for tag in drop:
        shutil.rmtree(Path(ckpt_dir) / tag, ignore_errors=True)
        shutil.rmtree(universal_dir(ckpt_dir, tag), ignore_errors=True)


def _say(msg: str) -> None:
    if dist.get_rank() == 0:
        print(f"[massive_mt] checkpoint: {msg}", file=sys.stderr, flush=True)


def select(ckpt_dir: Path) -> tuple[Optional[str], Optional[dict]]:
    """Collective: (tag, marker) of the newest complete, verified, finite checkpoint of ckpt_dir;
    (None, None) when there is no checkpoint at all; CheckpointError when none of those present qualifies."""
    ckpt_dir = Path(ckpt_dir)
    latest_file = ckpt_dir / LATEST
    seen = [(step_tags(ckpt_dir), latest_file.read_text().strip() if latest_file.is_file() else None)]
    dist.broadcast_object_list(seen, src=0)        # rank 0's view: every rank checks the same tags
    found, named = seen[0]
    if named == "":
        _say(f"{latest_file} is empty; looking for the newest complete checkpoint")
    elif named is not None and not (ckpt_dir / named).is_dir():
        _say(f"{latest_file} names {named}, which does not exist; looking for the newest complete checkpoint")
    skipped = []
    for step, tag in reversed(found):
        problem = verify_all(ckpt_dir / tag)
        if problem is None:
            marker = read_marker(ckpt_dir / tag)
            if marker.get("finite"):
                if skipped:
                    _say(f"resuming from {ckpt_dir / tag}, the newest complete checkpoint")
                return tag, marker
            problem = f"{ckpt_dir / tag}: its parameters are not finite (NaN or inf)"
        _say(f"skipping {problem}")
        skipped.append(problem)
    if found or named is not None:
        raise CheckpointError(f"{ckpt_dir}: no complete checkpoint to resume from ({'; '.join(skipped) or 'no tags'}); "
                              f"move the directory away to start afresh, or set train.resume=never")
    return None, None


def require(tag_dir: Path) -> dict:
    """Collective: the marker of the one checkpoint a user named (train.resume=<path>); refused
    with the reason when it is incomplete, damaged or non-finite."""
    problem = verify_all(tag_dir)
    if problem is None and not read_marker(tag_dir).get("finite"):
        problem = f"{tag_dir}: its parameters are not finite (NaN or inf)"
    if problem is not None:
        raise CheckpointError(f"field 'train.resume': {problem}")
    return read_marker(tag_dir)


def load(engine, ckpt_dir: Path, tag: str, how: Optional[str] = None) -> dict:
    """Collective. Loads model/optimizer/scheduler state of a tag chosen by `select` or `require`;
    returns client_state. `how` (from `check_resume`): None (same layout), "universal" or "stage"."""
    if how == "universal":
        return load_universal(engine, ckpt_dir, tag)
    if how == "stage":
        return load_stage_change(engine, ckpt_dir, tag)
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
    if path is None:
        raise CheckpointError(f"{ckpt_dir}/{tag}: DeepSpeed could not load this checkpoint")
    return client_state


# ----------------------------------------------------------------------------- another layout

def universal_dir(ckpt_dir: Path, tag: str) -> Path:
    return Path(ckpt_dir) / f"{tag}{UNIVERSAL}"


def dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file())


def _convert(tag_dir: Path, dest: Path) -> str:
    """Rank 0: DeepSpeed's ds_to_universal of tag_dir into dest (staged, renamed into place); what was done."""
    if (dest / UNIVERSAL_MARKER).is_file():
        return f"reusing {dest} (converted before)"
    t0 = time.monotonic()
    with staged_dir(dest, replace=True) as tmp:
        cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(tag_dir),
               "--output_folder", str(tmp), "--inject_missing_state"]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise CheckpointError(f"{tag_dir}: DeepSpeed's universal conversion failed (exit {p.returncode}: "
                                  f"{' '.join(cmd)}):\n{(p.stdout + p.stderr)[-3000:]}")
        seconds, size = time.monotonic() - t0, dir_bytes(tmp)
        atomic_write_text(tmp / UNIVERSAL_MARKER, json.dumps(
            {"source": Path(tag_dir).name, "seconds": round(seconds, 2), "bytes": size,
             "deepspeed": deepspeed.__version__}, indent=1, sort_keys=True))
    return f"converted {tag_dir} to {dest} in {seconds:.1f} s, {size / 2**20:.1f} MiB on disk"


def convert(ckpt_dir: Path, tag: str) -> Path:
    """Collective: `<tag>_universal` of a tag, converted by rank 0 unless already complete (the
    other ranks wait at a broadcast; the wait counts against train.collective_timeout_s)."""
    dest = universal_dir(ckpt_dir, tag)
    result = [None]
    if dist.get_rank() == 0:
        try:
            result = [("ok", _convert(Path(ckpt_dir) / tag, dest))]
        except (CheckpointError, OSError) as e:
            result = [("error", str(e))]
    dist.broadcast_object_list(result, src=0)
    kind, msg = result[0]
    if kind == "error":
        raise CheckpointError(msg)
    _say(msg)
    return dest


def load_universal(engine, ckpt_dir: Path, tag: str) -> dict:
    """Collective: convert the tag (once) and load it with DeepSpeed's universal checkpoint loader
    (`checkpoint.load_universal`); another world size or precision, or ZeRO-1 <-> 2."""
    udir = convert(ckpt_dir, tag)
    engine._config.load_universal_checkpoint = True     # the ds_config's checkpoint.load_universal, for this load
    try:
        path, client_state = engine.load_checkpoint(str(udir.parent), tag=udir.name, load_optimizer_states=True,
                                                    load_lr_scheduler_states=True)
    finally:
        engine._config.load_universal_checkpoint = False
    if path is None:
        raise CheckpointError(f"{udir}: DeepSpeed could not load this universal checkpoint")
    return client_state


def _universal_tensor(f: Path) -> torch.Tensor:
    """One tensor of a universal checkpoint: a dict with 'param' (from ZeRO-1/2) or a bare tensor (from ZeRO-3)."""
    if not f.is_file():
        raise CheckpointError(f"{f}: missing from the universal checkpoint")
    t = torch.load(f, map_location="cpu", weights_only=False)
    return (t["param"] if isinstance(t, dict) else t).float()


def _universal_step(zdir: Path, first_param: str):
    """Adam's step counter: zero/<param>/step.pt (from ZeRO-1/2) or optimizer_state.pt (from ZeRO-3)."""
    f = zdir / first_param / "step.pt"
    if f.is_file():
        return torch.load(f, map_location="cpu", weights_only=False)
    sd = torch.load(zdir / "optimizer_state.pt", map_location="cpu", weights_only=False)
    try:
        return sd["optimizer_state_dict"]["state"][0]["step"]
    except (KeyError, IndexError, TypeError):
        raise CheckpointError(f"{zdir}: no Adam step counter (neither {f} nor one in optimizer_state.pt)") from None


def _set_full(engine, p, value: torch.Tensor, key: Optional[str]) -> None:
    """The full fp32 master copy (key None) or Adam moment `key` of parameter p, this rank's part of it."""
    zo = engine.optimizer
    if layout_of(engine).weights_partitioned:
        # DeepSpeed 0.19.8's stage-3 setter slices value at partition * rank without padding, which
        # fails for the last rank's padded partition: copy the real part of this rank's slice
        part, _ = zo._get_fp32_opt_state_partition(p, release_swap_buffers=False, optim_state_key=key)
        n, r = part.numel(), zo._get_param_partition_rank(p)
        if n * (r + 1) > value.numel():
            chunk = value.flatten()[n * r:n * (r + 1)].to(part.device)
            part.data[:chunk.numel()].copy_(chunk)
            return
    if key is None:
        deepspeed.utils.safe_set_full_fp32_param(p, value.to(engine.device))
    else:
        deepspeed.utils.safe_set_full_optimizer_state(p, value.to(engine.device), key)


def load_stage_change(engine, ckpt_dir: Path, tag: str) -> dict:
    """Collective: a ZeRO-2 checkpoint into a ZeRO-3 engine or the reverse, which DeepSpeed's universal
    loader does not do: the universal `zero/<param>/{fp32,exp_avg,exp_avg_sq}.pt` are written into the
    fresh engine with DeepSpeed's safe_set_full_fp32_param / safe_set_full_optimizer_state, then the
    working (bf16 or fp32) weights from the master copies, Adam's step, the LR scheduler and the
    engine's counters from the tag's model-states file."""
    from deepspeed.runtime.zero.partition_parameters import GatheredParameters

    udir = convert(ckpt_dir, tag)
    zdir, z3, zo = udir / "zero", layout_of(engine).weights_partitioned, engine.optimizer
    named = list(engine.module.named_parameters())
    step = torch.as_tensor(float(_universal_step(zdir, named[0][0])))
    flats = zo.fp32_partitioned_groups_flat if z3 else zo.single_partition_of_fp32_groups
    for flat in flats:                           # Adam's state exists only after a first step: create it
        state = zo.optimizer.state[flat]
        for key in ("exp_avg", "exp_avg_sq"):
            state.setdefault(key, torch.zeros_like(flat))
        state["step"] = step.clone()
    if not z3:
        zo._lazy_init_hp_params_optimizer_state()     # link each parameter to its fragment of that state
    for name, p in named:
        fp32 = _universal_tensor(zdir / name / "fp32.pt")
        _set_full(engine, p, fp32, None)
        for key in ("exp_avg", "exp_avg_sq"):
            _set_full(engine, p, _universal_tensor(zdir / name / f"{key}.pt"), key)
        with GatheredParameters([p], modifier_rank=0, enabled=z3):
            if not z3 or dist.get_rank() == 0:
                p.data.copy_(fp32.view(p.shape).to(p.dtype))
    sd = torch.load(Path(ckpt_dir) / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    if engine.lr_scheduler is not None and sd.get("lr_scheduler") is not None:
        engine.lr_scheduler.load_state_dict(sd["lr_scheduler"])
        for param_group, lr in zip(engine.optimizer.param_groups, engine.lr_scheduler.get_last_lr()):
            param_group["lr"] = lr
    for key in ("global_steps", "global_samples", "skipped_steps"):
        if key in sd:
            setattr(engine, key, sd[key])
    return {k: v for k, v in sd.items() if k == "massive_mt"}


# ----------------------------------------------------------------------------- resume rules

# What a resume may change (docs/failures.md); everything else is refused with the field named.
RESUMABLE = {"train.max_steps", "train.log_interval", "train.save_interval", "train.keep_last",
             "train.resume", "train.reshard", "train.tensorboard", "train.stop_signals", "train.output_dir",
             "train.collective_timeout_s", "train.max_nonfinite_steps", "data.data_bin", "reconcile.log_interval",
             "model.activation_checkpointing", "model.attn_implementation", "train.valid_interval",
             "train.valid_max_sentences", "train.valid_decode", "train.valid_decode_sentences", "train.patience",
             "train.best_min_delta", "train.wandb", "train.wandb.project", "train.wandb.name", "train.wandb.mode"}
WHY = {"optim.": "the restored optimizer and learning-rate schedule were built with it",
       "model.": "the saved weights have this architecture",
       "data.": "the task list and the sampler's position depend on it",
       "sampling.": "the sampler's position and the task mix depend on it",
       "reconcile.": "the reconciler's state (GradVac targets, CATS weights) depends on it",
       "train.seed": "the model was initialised with it"}
LAYOUT = {"world_size": "world size", "zero_stage": "zero_optimization.stage", "precision": "bf16.enabled"}


def layout_changes(saved: dict, current: dict) -> dict:
    """{layout key: (saved, current)} of what differs."""
    return {k: (saved[k], current[k]) for k in LAYOUT if k in saved and saved[k] != current[k]}


def reshard_plan(saved: dict, current: dict, where: Path, reshard: str) -> Optional[str]:
    """How a checkpoint of another layout loads: None (same layout), "universal" (DeepSpeed's universal
    checkpoint loader) or "stage" (ZeRO-2 <-> 3, `load_stage_change`); CheckpointError when refused."""
    changes = layout_changes(saved, current)
    if not changes:
        return None
    key, (old, new) = next(iter(changes.items()))
    if reshard == "never":
        raise CheckpointError(
            f"field '{LAYOUT[key]}': checkpoint {where} was written with {old!r}, this run has {new!r}; "
            f"field 'train.reshard' is 'never', so a ZeRO checkpoint resumes only with its own world size, "
            f"ZeRO stage and precision: resume with the same layout, or set train.reshard=auto to convert it")
    stages = (saved["zero_stage"], current["zero_stage"])
    if 0 in stages:
        side = "checkpoint" if stages[0] == 0 else "run"
        raise CheckpointError(
            f"field 'zero_optimization.stage': checkpoint {where} (ZeRO-{stages[0]}, world size "
            f"{saved['world_size']}, {saved['precision']}) cannot be resumed by this run (ZeRO-{stages[1]}, "
            f"world size {current['world_size']}, {current['precision']}): the {side} is ZeRO-0, which has no "
            f"ZeRO optimizer-state partitions, so DeepSpeed's universal checkpoint can neither be made from it "
            f"nor loaded into it; resume with the checkpoint's layout")
    return "stage" if stages[0] != stages[1] and 3 in stages else "universal"


def check_resume(saved: dict, current: dict, where: Path, reshard: str = "never") -> Optional[str]:
    """Refuse a resume that changes a field a resume may not change, or the parallel layout when
    `reshard` is "never" (or a side is ZeRO-0); returns `reshard_plan`'s answer.
    `saved` and `current`: {"world_size", "zero_stage", "precision", "config"}."""
    how = reshard_plan(saved, current, where, reshard)
    from massive_mt.engine.config import flatten

    old, new = flatten(saved.get("config", {})), flatten(current["config"])
    for key in sorted(set(old) | set(new)):
        if key in RESUMABLE or old.get(key) == new.get(key):
            continue
        why = next((w for p, w in WHY.items() if key.startswith(p)), "it defines the run")
        raise CheckpointError(f"field '{key}': checkpoint {where} was trained with {old.get(key)!r}, this run has "
                              f"{new.get(key)!r}; a resume may not change it ({why}); set it back, "
                              f"or start a new train.output_dir")
    return how


# ----------------------------------------------------------------------------- full weights

def full_fp32_state_dict(engine, keep_on: Optional[int] = None) -> dict:
    """Collective: the full fp32 weights (ZeRO master copies where they exist), on every rank, or
    with ``keep_on`` only on that rank (the others return {}: no full host copy per rank)."""
    module = engine.module
    master = layout_of(engine).master_weights
    keep = keep_on is None or dist.get_rank() == keep_on
    out = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:     # frozen (model.freeze): no master copy; the weight, gathered under ZeRO-3
            with deepspeed.zero.GatheredParameters([p]):
                value = p.detach()
                if keep:
                    out[name] = value.float().cpu().clone()
        elif not master:
            if keep:
                out[name] = p.detach().float().cpu().clone()
        else:
            value = deepspeed.utils.safe_get_full_fp32_param(p)      # collective under ZeRO-3
            if keep:
                out[name] = value.detach().float().cpu().clone()
    return out
