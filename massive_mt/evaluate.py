"""Evaluation: beam search with the target-language tag forced, sacrebleu BLEU and chrF per
task with their signatures, averages per resource bucket, JSON and a markdown table.

Works on any parallel files in the corpus layout ({split}.{src}-{tgt}.{lang}) and any model
directory written by the trainer (`save_pretrained` + spm.model + massive_mt.json).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .data.tasks import parse_task
from .errors import ConfigError, DataError
from .io import atomic_write_texts, read_json_object

# sacrebleu tokenizers for scripts written without spaces; chrF needs none
BLEU_TOKENIZE = {"zh": "zh", "ja": "char", "th": "char", "my": "char", "km": "char", "lo": "char"}


def bleu_tokenize_for(lang: str) -> str:
    return BLEU_TOKENIZE.get(lang.split("_")[0], "13a")


@dataclass
class TaskResult:
    task: str
    n_sentences: int
    train_sentences: Optional[int]
    bucket: str
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str

    def to_dict(self):
        return dict(self.__dict__)


def resource_buckets(train_sizes: dict[str, int]) -> dict[str, str]:
    """high / medium / low by training size: the top, middle and bottom thirds of the tasks."""
    if not train_sizes:
        return {}
    names = sorted(train_sizes, key=lambda t: (-train_sizes[t], t))
    n = len(names)
    out = {}
    for i, t in enumerate(names):
        out[t] = "high" if i < math.ceil(n / 3) else ("medium" if i < math.ceil(2 * n / 3) else "low")
    return out


def score(hyps: list[str], refs: list[str], tgt_lang: str):
    import sacrebleu

    bleu = sacrebleu.BLEU(tokenize=bleu_tokenize_for(tgt_lang))
    chrf = sacrebleu.CHRF()
    b = bleu.corpus_score(hyps, [refs])
    c = chrf.corpus_score(hyps, [refs])
    return b.score, c.score, str(bleu.get_signature()), str(chrf.get_signature())


class Translator:
    """Beam search with an M2M100-style model from a trainer output directory."""

    def __init__(self, model_dir: str | Path, device: Optional[str] = None, max_len: Optional[int] = None):
        from transformers import M2M100ForConditionalGeneration

        from .data.spm import Tokenizer

        model_dir = Path(model_dir)
        for f in ("config.json", "spm.model"):
            if not (model_dir / f).is_file():
                raise DataError(f"{model_dir / f}: missing (not a massive_mt model directory)")
        meta_path = model_dir / "massive_mt.json"
        self.meta = read_json_object(meta_path) if meta_path.is_file() else {}
        self.tokenizer = Tokenizer(model_dir / "spm.model")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = M2M100ForConditionalGeneration.from_pretrained(str(model_dir), local_files_only=True)
        self.model.to(self.device).eval()
        self.max_positions = self.model.config.max_position_embeddings
        self.max_len = min(max_len or self.meta.get("max_len", 256), self.max_positions - 2)

    @torch.no_grad()
    def translate(self, sentences: list[str], src: str, tgt: str, beam: int = 4, batch_size: int = 64,
                  max_new_tokens: int = 128, length_penalty: float = 1.0) -> list[str]:
        tok = self.tokenizer
        src_tag, tgt_tag = tok.lang_id(src), tok.lang_id(tgt)
        encoded = [[src_tag] + tok.encode(s)[: self.max_len - 2] + [tok.eos_id] for s in sentences]
        order = np.argsort([-len(e) for e in encoded], kind="stable")   # long first: fewer pad tokens
        out: list[Optional[str]] = [None] * len(sentences)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), tok.pad_id, dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, :len(encoded[i])] = torch.tensor(encoded[i])
            mask = ids.ne(tok.pad_id).long()
            # fairseq-style length limit a*src+b, within the model's position table
            limit = min(max_new_tokens, int(1.5 * width) + 10, self.max_positions - 2)
            gen = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                      num_beams=beam, max_new_tokens=limit,
                                      length_penalty=length_penalty, forced_bos_token_id=tgt_tag,
                                      decoder_start_token_id=tok.eos_id, early_stopping=True)
            for row, i in enumerate(idx):
                out[i] = tok.decode(gen[row].tolist())
        return out


def evaluate(model_dir: str | Path, corpus_dir: str | Path, tasks: Optional[list[str]] = None,
             split: str = "test", beam: int = 4, batch_size: int = 64, max_sentences: int = 0,
             max_new_tokens: int = 128, length_penalty: float = 1.0, device: Optional[str] = None,
             out_dir: Optional[str | Path] = None, progress: bool = True) -> dict:
    """Translate and score every task; returns the report dict (and writes JSON/markdown to out_dir)."""
    from tqdm import tqdm

    from .data.corpus import load_corpus

    tr = Translator(model_dir, device=device)
    corpus = load_corpus(corpus_dir)
    if tasks is None:
        tasks = tr.meta.get("tasks")
        if not tasks:
            raise ConfigError(f"{model_dir}/massive_mt.json lists no tasks: pass the tasks to evaluate")
    train_sizes = tr.meta.get("train_sentences", {})
    buckets = resource_buckets({t: train_sizes[t] for t in tasks if t in train_sizes})
    results = []
    hyps_all = {}
    for task in tqdm(tasks, desc=f"evaluate {split}", disable=not progress, dynamic_ncols=True):
        src, tgt = parse_task(task)
        rows = corpus.read(split, src, tgt)       # DataError naming the files when the task has none
        if max_sentences:
            rows = rows[:max_sentences]
        srcs, refs = [r[0] for r in rows], [r[1] for r in rows]
        hyps = tr.translate(srcs, src, tgt, beam=beam, batch_size=batch_size, max_new_tokens=max_new_tokens,
                            length_penalty=length_penalty)
        bleu, chrf, bsig, csig = score(hyps, refs, tgt)
        results.append(TaskResult(task, len(rows), train_sizes.get(task), buckets.get(task, "-"),
                                  round(bleu, 2), round(chrf, 2), bsig, csig))
        hyps_all[task] = hyps
    report = {"model": str(model_dir), "corpus": str(corpus_dir), "split": split, "beam": beam,
              "max_sentences": max_sentences, "tasks": [r.to_dict() for r in results],
              "buckets": bucket_averages(results)}
    if out_dir is not None:
        write_report(report, hyps_all, Path(out_dir))
    return report


def bucket_averages(results: list[TaskResult]) -> dict:
    out = {}
    for b in ("high", "medium", "low", "all"):
        rs = [r for r in results if b == "all" or r.bucket == b]
        if rs:
            out[b] = {"tasks": len(rs), "bleu": round(float(np.mean([r.bleu for r in rs])), 2),
                      "chrf": round(float(np.mean([r.chrf for r in rs])), 2)}
    return out


def markdown_table(report: dict) -> str:
    lines = ["| task | train pairs | bucket | test sents | BLEU | chrF |", "|---|---:|---|---:|---:|---:|"]
    rows = sorted(report["tasks"], key=lambda r: -(r["train_sentences"] or 0))
    for r in rows:
        lines.append(f"| {r['task']} | {r['train_sentences'] if r['train_sentences'] is not None else '-'} | "
                     f"{r['bucket']} | {r['n_sentences']} | {r['bleu']:.2f} | {r['chrf']:.2f} |")
    lines += ["", "| bucket | tasks | avg BLEU | avg chrF |", "|---|---:|---:|---:|"]
    for b, v in report["buckets"].items():
        lines.append(f"| {b} | {v['tasks']} | {v['bleu']:.2f} | {v['chrf']:.2f} |")
    sigs = sorted({r["bleu_signature"] for r in report["tasks"]}) + sorted({r["chrf_signature"] for r in report["tasks"]})
    lines += ["", "sacrebleu signatures:"] + [f"- `{s}`" for s in sigs]
    return "\n".join(lines)


def write_report(report: dict, hyps: dict[str, list[str]], out_dir: Path) -> None:
    """results.json, results.md and one hypothesis file per task, each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {out_dir / "results.json": json.dumps(report, indent=2, ensure_ascii=False),
             out_dir / "results.md": markdown_table(report) + "\n"}
    for task, hs in hyps.items():
        files[out_dir / f"hyp.{report['split']}.{task}.txt"] = "".join(h + "\n" for h in hs)
    atomic_write_texts(files)
