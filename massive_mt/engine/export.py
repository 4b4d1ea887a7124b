"""Export a trained model from any complete checkpoint, offline: one CPU process, no process group.

    massive-mt export RUN [--step N|last|best|avg:N] --out DIR [--format hf|ct2] [--quantization int8]

The ZeRO shards of a tag (any stage, any world size, fp32 or bf16 training) are consolidated to
fp32 with DeepSpeed's `zero_to_fp32`; `avg:N` averages the fp32 weights of the last N complete tags
(fairseq's `average_checkpoints.py`: the element-wise mean). Only tags with a completion marker
whose files match their recorded checksums and whose parameters were finite are exported
(docs/failures.md); anything else is refused, naming the tag.

The export directory (`write_hf`, also what training writes to RUN/model at its end):

    config.json, model.safetensors, generation_config.json    `save_pretrained` (fp32)
    tokenizer.json, tokenizer_config.json                     a fast tokenizer (PreTrainedTokenizerFast)
                                                              with the SentencePiece model's ids and every
                                                              language tag (`__fr__`) an added special token
    spm.model                                                 the SentencePiece model (evaluate, translate)
    massive_mt.json                                           run, checkpoint step(s), config, data-bin and
                                                              tokenizer identity, tasks, training sizes

`--format ct2` converts that directory with CTranslate2's own converter for transformers models
(optional extra `massive_mt[ct2]`); its output directory keeps spm.model, the tokenizer files and
massive_mt.json beside CTranslate2's model.bin.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional

import torch

from massive_mt.engine.checkpoint import CheckpointError, read_marker, step_tags, verify
from massive_mt.io import sha256_file
from massive_mt.errors import ConfigError, DataError

STEP_RE = re.compile(r"^(?:(\d+)|last|best|avg:(\d+))$")
GENERATION = {"num_beams": 4, "length_penalty": 1.0, "early_stopping": True, "max_new_tokens": 128}


# ----------------------------------------------------------------------------- which tags

def select_tags(ckpt_dir: Path, step: str) -> list[Path]:
    """The tag directories `step` names (N, last, best, avg:N), each complete, verified and finite;
    CheckpointError naming the tag or listing the complete ones otherwise."""
    ckpt_dir = Path(ckpt_dir)
    m = STEP_RE.match(step)
    if not m:
        raise ConfigError(f"--step must be a step number, last, best or avg:N, got {step!r}")
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"{ckpt_dir}: no checkpoint directory (is the run directory right?)")
    complete = [(s, ckpt_dir / t) for s, t in step_tags(ckpt_dir) if (ckpt_dir / t / "massive_mt_complete.json").is_file()]
    have = ", ".join(t.name for _, t in complete) or "none"
    if step == "best":
        from massive_mt.engine.validation import BEST_FILE, read_best

        best = read_best(ckpt_dir)
        if not best or not best.get("tag"):
            raise CheckpointError(f"{ckpt_dir}: no {BEST_FILE} (a run keeps its best checkpoint when it validates: "
                                  f"train.valid_interval, train.best_metric); complete tags: {have}")
        tags = [ckpt_dir / best["tag"]]
    elif step == "last":
        if not complete:
            found = ", ".join(t for _, t in step_tags(ckpt_dir)) or "no tags"
            raise CheckpointError(f"{ckpt_dir}: no complete checkpoint ({found}; a tag counts once its "
                                  f"massive_mt_complete.json is written)")
        tags = [complete[-1][1]]
    elif m.group(2) is not None:
        n = int(m.group(2))
        if n < 1:
            raise ConfigError(f"--step avg:N needs N >= 1, got {step!r}")
        if len(complete) < n:
            raise CheckpointError(f"{ckpt_dir}: --step {step} needs {n} complete tags, there are "
                                  f"{len(complete)} ({have})")
        keep_last = read_marker(complete[-1][1])["run"].get("config", {}).get("train", {}).get("keep_last")
        if keep_last is not None and n > keep_last:      # older tags are only those pruning spared (best, finite)
            raise CheckpointError(f"{ckpt_dir}: --step {step} averages the last {n} checkpoints, but the run kept "
                                  f"only its last {keep_last} (train.keep_last); complete tags: {have}")
        tags = [t for _, t in complete[-n:]]
    else:
        tags = [ckpt_dir / f"step{int(m.group(1))}"]
        if not tags[0].is_dir():
            raise CheckpointError(f"{tags[0]}: no such checkpoint; complete tags: {have}")
    for tag in tags:
        problem = verify(tag)                  # the marker, then every file's size and sha256
        if problem is None and not read_marker(tag).get("finite"):
            problem = f"{tag}: its parameters are not finite (NaN or inf)"
        if problem is not None:
            raise CheckpointError(f"{problem}; export another tag (complete tags: {have})")
    return tags


# ----------------------------------------------------------------------------- weights

def consolidate(tag_dir: Path) -> dict[str, torch.Tensor]:
    """The full fp32 weights of one tag, on the CPU. ZeRO 1-3 (and bf16 training): the fp32 master
    partitions of every rank's optimizer shard, merged by DeepSpeed's zero_to_fp32; ZeRO 0 in
    fp32: the module's own weights."""
    tag_dir = Path(tag_dir)
    if any(tag_dir.glob("*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with contextlib.redirect_stdout(sys.stderr):          # its progress lines: keep stdout clean
            state = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    else:
        model_file = tag_dir / "mp_rank_00_model_states.pt"
        if not model_file.is_file():
            raise CheckpointError(f"{model_file}: missing (not a DeepSpeed checkpoint)")
        state = torch.load(model_file, map_location="cpu", weights_only=False)["module"]
    return {k: v.detach().float().cpu() for k, v in state.items()}


def average(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the weights (fairseq's average_checkpoints), accumulated in fp64."""
    keys = list(states[0])
    for s in states[1:]:
        if list(s) != keys:
            raise CheckpointError(f"the tags to average have different parameters: {sorted(set(s) ^ set(keys))[:5]}")
    return {k: (sum(s[k].double() for s in states) / len(states)).float() for k in keys}


def model_for(config, state: dict[str, torch.Tensor], where: str):
    """An M2M100 model with `config` holding `state` (fp32, CPU); tied weights may appear once or
    under each of their names. CheckpointError naming `where` when names or shapes differ."""
    from transformers import M2M100ForConditionalGeneration

    model = M2M100ForConditionalGeneration(config)
    expected = {n for n, _ in model.named_parameters()}            # tied weights appear once
    known = set(model.state_dict())
    if not expected <= set(state) or not set(state) <= known:
        diff = sorted((expected - set(state)) | (set(state) - known))
        raise CheckpointError(f"{where}: its parameters are not those of the model in its config "
                              f"(first differences: {diff[:5]})")
    try:
        model.load_state_dict(state, strict=False)                  # tied aliases follow their owner
    except RuntimeError as e:
        raise CheckpointError(f"{where}: {str(e).splitlines()[-1].strip()}") from None
    return model.to(torch.float32).eval()


def model_from_config(cfg: dict, vocab_size: int, state: dict[str, torch.Tensor], where: str):
    """The model a run's config describes (model.preset or model.from_pretrained), with `state`."""
    from massive_mt.engine.model import build_model

    m = cfg["model"]
    base = build_model(m["preset"], vocab_size, cfg["data"]["max_len"], m.get("from_pretrained"),
                       attn_implementation=m.get("attn_implementation", "sdpa"),
                       **{k: m[k] for k in ("dropout", "attention_dropout", "activation_dropout") if k in m})
    return model_for(base.config, state, where)


# ----------------------------------------------------------------------------- the directory

def hf_tokenizer(spm_path: Path):
    """A fast tokenizer equal to the SentencePiece model: its pieces and ids (transformers' own
    SentencePiece converter), `</s>` appended to every text, every `__lang__` piece an added special
    token (the source tag is written before the text: ``"__fr__ " + text``)."""
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SentencePieceExtractor, SpmConverter

    from massive_mt.data.spm import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer

    tok = Tokenizer(spm_path)
    proto = SentencePieceExtractor(str(spm_path)).proto
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, [(p.piece, p.score) for p in proto.pieces])
    piece = tok.sp.id_to_piece
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {piece(EOS_ID)}", pair=f"$A $B {piece(EOS_ID)}", special_tokens=[(piece(EOS_ID), EOS_ID)])
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=piece(BOS_ID), eos_token=piece(EOS_ID),
                                   pad_token=piece(PAD_ID), unk_token=piece(UNK_ID), model_max_length=1_000_000)
    tags = [AddedToken(piece(tok.lang_id(lang)), special=True, normalized=False) for lang in tok.langs]
    fast.add_special_tokens({"additional_special_tokens": tags})
    if len(fast) != tok.vocab_size:
        raise DataError(f"{spm_path}: the fast tokenizer has {len(fast)} ids, the SentencePiece model {tok.vocab_size}")
    return fast


def tokenizer_identity(spm_path: Path) -> dict:
    from massive_mt.data.spm import Tokenizer

    tok = Tokenizer(spm_path)
    return {"spm_model": "spm.model", "spm_sha256": sha256_file(spm_path), "vocab_size": tok.vocab_size,
            "langs": tok.langs, "hf": "tokenizer.json (PreTrainedTokenizerFast); language tags such as __fr__ "
                                      "are added special tokens; source = '__src__ ' + text, </s> appended"}


def metadata(run_dir: Path, cfg: dict, tasks: list[str], train_sentences: dict, tags: list[Path],
             steps: list[int], select: str) -> dict:
    """massive_mt.json: what the export is (run, checkpoint, config, data-bin, tokenizer identity)."""
    data_bin = Path(cfg["data"]["data_bin"])
    manifest = data_bin / "manifest.json"
    return {"run": str(Path(run_dir).resolve()), "steps": steps[-1],
            "checkpoint": {"select": select, "tags": [str(t) for t in tags], "steps": steps},
            "tasks": tasks, "train_sentences": train_sentences, "config": cfg, "max_len": cfg["data"]["max_len"],
            "pivot": json.loads(manifest.read_text(encoding="utf-8")).get("pivot", "en"),
            "data_bin": {"path": str(data_bin.resolve()), "manifest_sha256": sha256_file(manifest)},
            "tokenizer": (tokenizer_identity(data_bin / "spm.model") if (data_bin / "spm.model").is_file()
                          else json.loads(manifest.read_text(encoding="utf-8")).get("tokenizer"))}


def write_hf(out_dir: Path, model, data_bin: Path, meta: dict, replace: bool = False) -> Path:
    """The export directory (see the module doc), built beside `out_dir` and renamed into place. The
    tokenizer is the data-bin's: the project's SentencePiece model with its fast tokenizer
    (`hf_tokenizer`), or a pretrained checkpoint's Hugging Face files, copied byte for byte."""
    from transformers import GenerationConfig

    from massive_mt.data.tokenizers import load_tokenizer
    from massive_mt.io import staged_dir

    tok = load_tokenizer(data_bin)
    ids = tok.special_ids()
    model.generation_config = GenerationConfig(bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                                               pad_token_id=ids["pad"], decoder_start_token_id=ids["eos"], **GENERATION)
    meta = {**meta, "max_position_embeddings": model.config.max_position_embeddings}
    spm_path = Path(data_bin) / "spm.model"
    with staged_dir(out_dir, replace=replace) as tmp:
        model.save_pretrained(str(tmp))                          # config, safetensors, generation_config
        if spm_path.is_file():
            hf_tokenizer(spm_path).save_pretrained(str(tmp))
            shutil.copyfile(spm_path, tmp / "spm.model")
        else:
            for f in tok.files():
                shutil.copyfile(f, tmp / f.name)
        (tmp / "massive_mt.json").write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
    return Path(out_dir)


def write_ct2(out_dir: Path, hf_dir: Path, quantization: Optional[str]) -> Path:
    """CTranslate2's converter for transformers models, run on an export directory; the tokenizer
    files and massive_mt.json (with the format and quantization) travel with it."""
    try:
        import ctranslate2
    except ImportError:
        raise ConfigError("--format ct2 needs CTranslate2: pip install 'massive_mt[ct2]'") from None
    from massive_mt.io import staged_dir

    meta = json.loads((hf_dir / "massive_mt.json").read_text(encoding="utf-8"))
    meta["format"] = {"engine": "ct2", "ctranslate2": ctranslate2.__version__, "quantization": quantization}
    (hf_dir / "massive_mt.json").write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
    keep = [f for f in ("spm.model", "massive_mt.json", "tokenizer.json", "tokenizer_config.json",
                                      "generation_config.json") if (hf_dir / f).is_file()]
    converter = ctranslate2.converters.TransformersConverter(str(hf_dir), copy_files=keep)
    with staged_dir(out_dir) as tmp:
        with contextlib.redirect_stdout(sys.stderr):
            converter.convert(str(tmp / "ct2"), quantization=quantization)
        for f in (tmp / "ct2").iterdir():
            f.rename(tmp / f.name)
        (tmp / "ct2").rmdir()
    return Path(out_dir)


# ----------------------------------------------------------------------------- the command

def export_run(run_dir: str | Path, step: str, out_dir: str | Path, fmt: str = "hf",
               quantization: Optional[str] = None, data_bin: Optional[str | Path] = None) -> dict:
    """Export `step` of a run (see the module doc); returns massive_mt.json's contents."""
    from massive_mt.data.dataset import TaskDataset
    from massive_mt.data.tasks import parse_task

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if quantization is not None and fmt != "ct2":
        raise ConfigError("--quantization applies to --format ct2")
    from massive_mt.io import require_empty_dir

    require_empty_dir(out_dir)                                   # before the slow part
    tags = select_tags(run_dir / "checkpoints", step)
    markers = [read_marker(t) for t in tags]
    run = markers[-1]["run"]
    cfg = json.loads(json.dumps(run["config"]))
    if data_bin is not None:
        cfg["data"]["data_bin"] = str(data_bin)
    data_dir = Path(cfg["data"]["data_bin"])
    if not (data_dir / "manifest.json").is_file():
        raise DataError(f"{data_dir}: the run's data-bin is not there (field 'data.data_bin' of {tags[-1]}); "
                        f"pass --data-bin DIR")
    print(f"[massive_mt] export: consolidating {', '.join(t.name for t in tags)} of {run_dir} to fp32",
          file=sys.stderr, flush=True)
    state = average([consolidate(t) for t in tags]) if len(tags) > 1 else consolidate(tags[0])
    vocab_size = next(v.shape[0] for k, v in state.items() if k.endswith("shared.weight"))   # as trained
    model = model_from_config(cfg, vocab_size, state, str(tags[-1]))
    tasks = run.get("tasks") or []
    sizes = {t: len(TaskDataset(Path(cfg["data"]["data_bin"]), *parse_task(t), split="train",
                                max_len=cfg["data"]["max_len"])) for t in tasks}
    meta = metadata(run_dir, cfg, tasks, sizes, tags, [m["step"] for m in markers], step)
    if fmt == "hf":
        write_hf(out_dir, model, data_dir, meta)
    else:
        with tempfile.TemporaryDirectory(dir=out_dir.parent if out_dir.parent.is_dir() else None) as tmp:
            write_ct2(out_dir, write_hf(Path(tmp) / "hf", model, data_dir, meta), quantization)
    return meta


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="training output_dir (holds checkpoints/)")
    p.add_argument("--step", default="last", help="a step number, last (default), best, or avg:N: the mean "
                                                   "of the last N complete checkpoints' weights")
    p.add_argument("--out", required=True, help="the export directory (absent or empty)")
    p.add_argument("--format", default="hf", choices=["hf", "ct2"],
                   help="hf: transformers' save_pretrained layout (default); ct2: CTranslate2")
    p.add_argument("--quantization", choices=["int8", "int8_float32", "int16", "float16", "bfloat16", "int8_float16"],
                   help="with --format ct2: CTranslate2's weight type (default: float32)")
    p.add_argument("--data-bin", help="the run's data-bin, when it has moved since training")


def cmd_export(a) -> int:
    meta = export_run(a.run, a.step, a.out, a.format, a.quantization, a.data_bin)
    print(f"{a.out}: {a.format} export of {meta['checkpoint']['select']} "
          f"(step{'s' * (len(meta['checkpoint']['steps']) > 1)} "
          f"{', '.join(map(str, meta['checkpoint']['steps']))}) of {a.run}")
    return 0
