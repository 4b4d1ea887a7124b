"""Checkpoints: DeepSpeed's `save_checkpoint` (model, optimizer, scheduler, per-rank shards)
plus the trainer's own state (step, sampler cursors) in `client_state`, and the final model
in Hugging Face format (written by massive_mt/export.py).

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
complete finite one (the tag a resume falls back to); it deletes older complete tags and
marker-less tags older than the newest complete one (debris of interrupted saves).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Optional

import torch

import deepspeed
import deepspeed.comm as dist

from .errors import MassiveMTError
from .io import atomic_write_text

TAG_RE = re.compile(r"^step(\d+)$")
MARKER = "massive_mt_complete.json"
LATEST = "latest"
FORMAT = 1
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
    if engine.zero_optimization_stage() == 3:
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
    """Keep the newest keep_last complete tags and the newest complete finite one (see the module doc)."""
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
    newest = complete[-1][0]
    drop = [tag for _, tag, _ in complete if tag not in keep] + [tag for step, tag in debris if step < newest]
    for tag in drop:
        shutil.rmtree(Path(ckpt_dir) / tag, ignore_errors=True)


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


def load(engine, ckpt_dir: Path, tag: str) -> dict:
    """Collective. Loads model/optimizer/scheduler state of a tag chosen by `select` or `require`;
    returns client_state."""
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
    if path is None:
        raise CheckpointError(f"{ckpt_dir}/{tag}: DeepSpeed could not load this checkpoint")
    return client_state


# ----------------------------------------------------------------------------- resume rules

# What a resume may change (docs/failures.md); everything else is refused with the field named.
RESUMABLE = {"train.max_steps", "train.log_interval", "train.save_interval", "train.keep_last",
             "train.resume", "train.tensorboard", "train.stop_signals", "train.output_dir",
             "train.collective_timeout_s", "train.max_nonfinite_steps", "data.data_bin", "reconcile.log_interval",
             "model.activation_checkpointing", "model.attn_implementation"}
WHY = {"optim.": "the restored optimizer and learning-rate schedule were built with it",
       "model.": "the saved weights have this architecture",
       "data.": "the task list and the sampler's position depend on it",
       "sampling.": "the sampler's position and the task mix depend on it",
       "reconcile.": "the reconciler's state (GradVac targets, CATS weights) depends on it",
       "train.seed": "the model was initialised with it"}
LAYOUT = {"world_size": "world size", "zero_stage": "zero_optimization.stage", "precision": "bf16.enabled"}


def check_resume(saved: dict, current: dict, where: Path) -> None:
    """Refuse a resume that changes the parallel layout or a field a resume may not change.
    `saved` and `current`: {"world_size", "zero_stage", "precision", "config"}."""
    for key, field in LAYOUT.items():
        if key in saved and saved[key] != current[key]:
            raise CheckpointError(
                f"field '{field}': checkpoint {where} was written with {saved[key]!r}, this run has {current[key]!r}; "
                f"a ZeRO checkpoint is tied to its world size, ZeRO stage and precision: resume with the same "
                f"layout, or convert it with DeepSpeed's universal checkpoint (python -m "
                f"deepspeed.checkpoint.ds_to_universal), which massive_mt does not load yet")
    from .config import flatten

    old, new = flatten(saved.get("config", {})), flatten(current["config"])
    for key in sorted(set(old) | set(new)):
        if key in RESUMABLE or old.get(key) == new.get(key):
            continue
        why = next((w for p, w in WHY.items() if key.startswith(p)), "it defines the run")
        raise CheckpointError(f"field '{key}': checkpoint {where} was trained with {old.get(key)!r}, this run has "
                              f"{new.get(key)!r}; a resume may not change it ({why}); set it back, "
                              f"or start a new train.output_dir")


# ----------------------------------------------------------------------------- full weights

def full_fp32_state_dict(engine) -> dict:
    """Collective: the full fp32 weights (ZeRO master copies where they exist), on every rank."""
    module = engine.module
    stage = engine.zero_optimization_stage()
    out = {}
    for name, p in module.named_parameters():
        if stage == 0 and not engine.bfloat16_enabled():
            out[name] = p.detach().float().cpu().clone()
        else:
            out[name] = deepspeed.utils.safe_get_full_fp32_param(p).detach().float().cpu().clone()
    return out
