"""Checkpoints: DeepSpeed's `save_checkpoint` (model, optimizer, scheduler, per-rank shards)
plus the trainer's own state (step, sampler cursors) in `client_state`, and the final model
in Hugging Face format.

Completeness: DeepSpeed writes the tag directory first and the `latest` file last, and a resume
reads `latest`; so a run killed while saving resumes from the previous complete checkpoint.
The Hugging Face export is written to a temporary directory and renamed into place.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Optional

import torch

import deepspeed
import deepspeed.comm as dist

from .io import staged_dir

TAG_RE = re.compile(r"^step(\d+)$")


def tag_for(step: int) -> str:
    return f"step{step}"


def latest_tag(ckpt_dir: Path) -> Optional[str]:
    f = Path(ckpt_dir) / "latest"
    if not f.is_file():
        return None
    tag = f.read_text().strip()
    return tag if (Path(ckpt_dir) / tag).is_dir() else None


def save(engine, ckpt_dir: Path, step: int, client_state: dict, keep_last: int) -> str:
    """Collective: every rank calls it. Returns the tag written."""
    tag = tag_for(step)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=True)
    dist.barrier()
    if dist.get_rank() == 0:
        prune(ckpt_dir, keep_last)
    dist.barrier()
    return tag


def prune(ckpt_dir: Path, keep_last: int) -> None:
    tags = sorted((int(m.group(1)), p) for p in Path(ckpt_dir).iterdir()
                  if p.is_dir() and (m := TAG_RE.match(p.name)))
    current = latest_tag(ckpt_dir)
    for _, p in tags[:-keep_last]:
        if p.name != current:
            shutil.rmtree(p, ignore_errors=True)


def load(engine, ckpt_dir: Path, tag: Optional[str] = None) -> Optional[dict]:
    """Collective. Loads model/optimizer/scheduler state; returns client_state (None if nothing to load)."""
    tag = tag or latest_tag(ckpt_dir)
    if tag is None:
        return None
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"{ckpt_dir}/{tag}: DeepSpeed could not load this checkpoint")
    return client_state


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


def export_hf(engine, out_dir: Path, extra_files: dict[str, Path], metadata: dict) -> None:
    """Collective. Rank 0 writes `save_pretrained` + tokenizer + metadata into out_dir atomically."""
    state = full_fp32_state_dict(engine)
    if dist.get_rank() == 0:
        module = engine.module
        cpu_model = type(module)(module.config)
        expected = {n for n, _ in cpu_model.named_parameters()}    # tied weights appear once
        if set(state) != expected:
            raise RuntimeError(f"export: parameter names differ: {sorted(set(state) ^ expected)[:10]}")
        cpu_model.load_state_dict(state, strict=False)               # tied aliases follow their owner
        with staged_dir(out_dir, replace=True) as tmp:
            cpu_model.to(torch.float32).save_pretrained(str(tmp))
            for name, src in extra_files.items():
                shutil.copyfile(src, tmp / name)
            (tmp / "massive_mt.json").write_text(json.dumps(metadata, indent=2, sort_keys=True), encoding="utf-8")
    dist.barrier()
