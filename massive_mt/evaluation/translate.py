"""`massive-mt translate`: translate text with an exported model, one line out per line in.

    massive-mt translate --model DIR --src fr --tgt en [--input FILE] [--output FILE] [--beam 4]
        [--batch-size 64] [--max-tokens 4096] [--max-new-tokens 128] [--engine torch|ct2] [--nproc N]

Text comes from stdin or --input and goes to stdout or --output; empty lines stay empty. The decoding
is evaluate's (massive_mt/evaluation/evaluate.py: `Translator.generate` on length-sorted, token-bounded
batches, the target tag forced); `--nproc N` deals the batches to N local ranks as evaluate does.
`--engine ct2` decodes with CTranslate2 a directory written by `massive-mt export --format ct2`.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

import torch

from massive_mt.errors import DataError
from massive_mt.evaluation.decoding import (Translator, check_options, count_arg, deal, gather_on_rank0, length_batches,
                                            load_translator, rank_argv)


def check_langs(model_dir: str | Path, src: str, tgt: str) -> None:
    """DataError unless the model was trained on both languages (its tasks in massive_mt.json; without
    them, the tags of its tokenizer), listing the languages it has. Before any model is loaded."""
    from massive_mt.data.spm import Tokenizer
    from massive_mt.data.tasks import parse_task
    from massive_mt.io import read_json_object

    model_dir = Path(model_dir)
    if not (model_dir / "spm.model").is_file():
        raise DataError(f"{model_dir / 'spm.model'}: missing (not a massive_mt model directory)")
    meta = read_json_object(model_dir / "massive_mt.json") if (model_dir / "massive_mt.json").is_file() else {}
    tags = Tokenizer(model_dir / "spm.model").langs
    langs = sorted({lang for task in meta.get("tasks") or [] for lang in parse_task(task)}) or tags
    for flag, lang in (("--src", src), ("--tgt", tgt)):
        if lang not in langs or lang not in tags:
            raise DataError(f"{flag} {lang}: the model {model_dir} has no language {lang!r}; "
                            f"it has: {' '.join(langs)}")


def translate_lines(tr: Translator, lines: list[str], src: str, tgt: str, beam: int = 4, batch_size: int = 64,
                    max_tokens: int = 4096, max_new_tokens: int = 128, rank: int = 0,
                    world_size: int = 1) -> Optional[list[str]]:
    """One translation per line, in order (blank lines stay empty); with world_size > 1 the batches
    are dealt to the ranks and gathered on rank 0 (None on the other ranks)."""
    keep = [i for i, line in enumerate(lines) if line.strip()]
    encoded = tr.encode([lines[i] for i in keep], src)
    batches = length_batches(encoded, max_tokens, batch_size)
    owner = deal([len(idx) * max(len(encoded[i]) for i in idx) for idx in batches], world_size)
    done = [(idx.tolist(), tr.generate([encoded[i] for i in idx], tgt, beam, max_new_tokens))
            for idx, r in zip(batches, owner) if r == rank]
    parts = gather_on_rank0(done, rank, world_size)
    if parts is None:
        return None
    out = [""] * len(lines)
    for part in parts:
        for idx, hyps in part:
            for i, h in zip(idx, hyps):
                out[keep[i]] = h
    return out


def read_lines(path: Optional[str]) -> list[str]:
    if path is None:
        text = sys.stdin.buffer.read()
        where = "stdin"
    else:
        text, where = Path(path).read_bytes(), path
    try:
        text = text.decode("utf-8")
    except UnicodeDecodeError as e:
        line = text[: e.start].count(b"\n") + 1
        raise DataError(f"{where}:{line}: not UTF-8 ({e.reason})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="massive-mt translate", allow_abbrev=False,
                                description="Translate text with an exported model, one line out per line in.")
    p.add_argument("--model", required=True, help="an export directory (massive-mt export, or RUN/model)")
    p.add_argument("--src", required=True, help="source language, e.g. fr")
    p.add_argument("--tgt", required=True, help="target language, e.g. en")
    p.add_argument("--input", help="text file, one sentence per line (default: stdin)")
    p.add_argument("--output", help="where the translations go (default: stdout)")
    p.add_argument("--beam", type=count_arg(1), default=4)
    p.add_argument("--batch-size", type=count_arg(1), default=64, help="most sentences per batch")
    p.add_argument("--max-tokens", type=count_arg(1), default=4096, help="most source tokens per batch, padding included")
    p.add_argument("--max-new-tokens", type=count_arg(1), default=128)
    p.add_argument("--engine", choices=["torch", "ct2"], default="torch",
                   help="torch (transformers' generate) or ct2 (CTranslate2, an export --format ct2)")
    p.add_argument("--device", help="default: this rank's GPU if there is one, else the CPU")
    p.add_argument("--nproc", type=count_arg(1), default=1, help="start this many local ranks")
    p.add_argument("--launcher", default="torchrun", choices=["torchrun", "deepspeed"], help="for --nproc > 1")
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)      # appended by the deepspeed launcher
    return p


def launch(a: argparse.Namespace, argv: list[str]) -> int:
    """--nproc N: stdin and stdout go through files the ranks read and rank 0 writes."""
    import subprocess

    from massive_mt.launch import launch_command, launch_env

    with tempfile.TemporaryDirectory(prefix="massive-mt-translate-") as tmp:
        extra = []
        if a.input is None:
            Path(tmp, "input").write_bytes(sys.stdin.buffer.read())
            extra += ["--input", str(Path(tmp, "input"))]
        if a.output is None:
            extra += ["--output", str(Path(tmp, "output"))]
        cmd = launch_command(a.launcher, a.nproc, rank_argv(argv) + extra, module="massive_mt.evaluation.translate")
        print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
        rc = subprocess.call(cmd, env=launch_env(a.nproc), stdout=sys.stderr)
        if rc != 0:
            print(f"massive-mt translate: the ranks failed with exit status {rc}", file=sys.stderr)
            return 2
        if a.output is None:
            sys.stdout.buffer.write(Path(tmp, "output").read_bytes())
            sys.stdout.flush()
    return 0


def run(a: argparse.Namespace, argv: list[str]) -> int:
    from massive_mt.engine.distributed import discover
    from massive_mt.io import atomic_write_text

    d = discover()
    check_options(a.beam, a.batch_size, a.max_tokens, 0, a.max_new_tokens)
    check_langs(a.model, a.src, a.tgt)
    if a.nproc > 1 and d.source == "single":
        return launch(a, argv)
    tr = load_translator(a.model, a.engine, a.device or (f"cuda:{d.local_rank}" if torch.cuda.is_available() else None))
    lines = read_lines(a.input)
    rank, world = 0, 1
    if d.world_size > 1:
        from massive_mt.engine.distributed import init_distributed

        rank, world = init_distributed()
    out = translate_lines(tr, lines, a.src, a.tgt, a.beam, a.batch_size, a.max_tokens, a.max_new_tokens, rank, world)
    if out is not None:
        text = "".join(h + "\n" for h in out)
        if a.output is None:
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            atomic_write_text(a.output, text)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    from massive_mt.launch import run_command

    argv = sys.argv[1:] if argv is None else list(argv)
    a = build_parser().parse_intermixed_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from massive_mt.engine.distributed import leave

    return leave(run_command("translate", a.output, run, a, argv))


if __name__ == "__main__":
    sys.exit(main())
