"""Evaluation: batched beam search with the target-language tag forced, sacrebleu BLEU and chrF per
task with their signatures, averages per resource bucket, JSON and a markdown table.

Works on any parallel files in the corpus layout ({split}.{src}-{tgt}.{lang}) and any model
directory written by the trainer (`save_pretrained` + spm.model + massive_mt.json).

Data-parallel over the launcher's ranks (`torchrun --nproc_per_node N -m massive_mt.evaluate ...`
or `massive-mt evaluate --nproc N`): the sentences of every task are cut into length-sorted,
token-bounded batches once, the same whatever the world size; the batches of all tasks are dealt
to the ranks (largest first, each to the least loaded rank), gathered on rank 0 in the original
order and scored there once. Every batch is translated exactly as one process would translate it,
so N ranks give the hypotheses and scores of one process.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .data.sampler import token_budget_batches
from .data.tasks import parse_task
from .errors import ConfigError, DataError, MassiveMTError
from .io import atomic_write_texts, read_json_object

# sacrebleu tokenizers for scripts written without spaces; chrF needs none
BLEU_TOKENIZE = {"zh": "zh", "ja": "char", "th": "char", "my": "char", "km": "char", "lo": "char"}
# weight files of a `save_pretrained` directory, in the order transformers looks for them
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


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
    test_set: dict          # what identifies the test set: split, files, their sha256, sentences
    nll: Optional[float] = None     # test NLL: nats per reference token (teacher-forced, tag excluded)
    nll_tokens: Optional[int] = None

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


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def test_set_identity(split: str, src_path: Path, ref_path: Path, n_sentences: int) -> dict:
    """What identifies a test set: the split, both files with their sha256, the sentences used."""
    return {"split": split, "sentences": n_sentences,
            "source": str(src_path.resolve()), "source_sha256": sha256_file(src_path),
            "reference": str(ref_path.resolve()), "reference_sha256": sha256_file(ref_path)}


class Translator:
    """Beam search with an M2M100-style model from a trainer output directory."""

    def __init__(self, model_dir: str | Path, device: Optional[str] = None, max_len: Optional[int] = None):
        from .data.spm import Tokenizer

        model_dir = Path(model_dir)
        for f in ("config.json", "spm.model"):
            if not (model_dir / f).is_file():
                raise DataError(f"{model_dir / f}: missing (not a massive_mt model directory)")
        meta_path = model_dir / "massive_mt.json"
        self.meta = read_json_object(meta_path) if meta_path.is_file() else {}
        self.tokenizer = Tokenizer(model_dir / "spm.model")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_model(model_dir)
        self.model.to(self.device).eval()
        self.max_positions = self.model.config.max_position_embeddings
        self.max_len = min(max_len or self.meta.get("max_len", 256), self.max_positions - 2)

    def encode(self, sentences: list[str], src: str) -> list[list[int]]:
        """``[src_tag] + tokens + [eos]`` per sentence, within the model's length."""
        tok = self.tokenizer
        src_tag = tok.lang_id(src)
        return [[src_tag] + tok.encode(s)[: self.max_len - 2] + [tok.eos_id] for s in sentences]

    @torch.inference_mode()
    def generate(self, encoded: list[list[int]], tgt: str, beam: int = 4, max_new_tokens: int = 128,
                 length_penalty: float = 1.0) -> list[str]:
        """One batch of beam search: the rows right-padded, the target tag forced as the first token."""
        tok = self.tokenizer
        width = max(map(len, encoded))
        ids = torch.full((len(encoded), width), tok.pad_id, dtype=torch.long)
        for row, e in enumerate(encoded):
            ids[row, :len(e)] = torch.tensor(e)
        mask = ids.ne(tok.pad_id).long()
        # fairseq-style length limit a*src+b, within the model's position table
        limit = min(max_new_tokens, int(1.5 * width) + 10, self.max_positions - 2)
        gen = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                  num_beams=beam, max_new_tokens=limit, length_penalty=length_penalty,
                                  forced_bos_token_id=tok.lang_id(tgt), decoder_start_token_id=tok.eos_id,
                                  early_stopping=True)
        return [tok.decode(g) for g in gen.tolist()]

    @torch.inference_mode()
    def nll(self, encoded: list[list[int]], tgt: str, refs: list[str]) -> list[tuple[float, int]]:
        """(summed negative log-likelihood in nats, tokens) of each reference given its source, teacher
        forced as in training (``labels = [tgt_tag] + tokens + [eos]``, ``decoder_input_ids = [eos] +
        labels[:-1]``, no label smoothing); the target tag, which decoding forces, is not scored."""
        tok = self.tokenizer
        labels = [[tok.lang_id(tgt)] + tok.encode(r)[: self.max_len - 2] + [tok.eos_id] for r in refs]
        ids = torch.full((len(encoded), max(map(len, encoded))), tok.pad_id, dtype=torch.long)
        lab = torch.full((len(labels), max(map(len, labels))), tok.pad_id, dtype=torch.long)
        for row, (e, y) in enumerate(zip(encoded, labels)):
            ids[row, :len(e)] = torch.tensor(e)
            lab[row, :len(y)] = torch.tensor(y)
        dec = torch.cat([torch.full((len(labels), 1), tok.eos_id, dtype=torch.long), lab[:, :-1]], dim=1)
        logits = self.model(input_ids=ids.to(self.device), attention_mask=ids.ne(tok.pad_id).long().to(self.device),
                            decoder_input_ids=dec.to(self.device)).logits
        lab = lab.to(self.device)
        tok_nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), lab, reduction="none")
        scored = lab.ne(tok.pad_id)
        scored[:, 0] = False                                  # the forced target tag
        tok_nll = tok_nll.masked_fill(~scored, 0.0)
        return [(float(s), int(n)) for s, n in zip(tok_nll.double().sum(1).tolist(), scored.sum(1).tolist())]

    def translate(self, sentences: list[str], src: str, tgt: str, beam: int = 4, batch_size: int = 64,
                  max_tokens: int = 4096, max_new_tokens: int = 128, length_penalty: float = 1.0) -> list[str]:
        """Translate in one process: length-sorted batches of at most ``batch_size`` sentences and
        ``max_tokens`` source tokens (padding included), hypotheses in the input order."""
        encoded = self.encode(sentences, src)
        out: list[Optional[str]] = [None] * len(sentences)
        for idx in length_batches(encoded, max_tokens, batch_size):
            for i, h in zip(idx, self.generate([encoded[i] for i in idx], tgt, beam, max_new_tokens,
                                               length_penalty)):
                out[i] = h
        return out


def load_model(model_dir: Path):
    """The model of a `save_pretrained` directory; DataError naming the directory or weight file when
    the weights are missing, unreadable (e.g. a truncated safetensors file) or not finite."""
    from safetensors import SafetensorError
    from transformers import M2M100ForConditionalGeneration
    from transformers.utils import logging as hf_logging

    weights = next((model_dir / f for f in WEIGHT_FILES if (model_dir / f).is_file()), None)
    if weights is None:
        raise DataError(f"{model_dir}: no model weights ({WEIGHT_FILES[0]}): not a complete model directory")
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()                  # one line per error, no bar of a small load
    try:
        model = M2M100ForConditionalGeneration.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{weights}: cannot load the model weights ({reason}); the file is damaged or truncated") from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    state = model.state_dict()
    bad = [name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise DataError(f"{weights}: the model is non-finite: NaN or inf in {len(bad)} of {len(state)} tensors "
                        f"(first: {bad[0]}); the training diverged, evaluate an earlier checkpoint")
    return model


def length_batches(encoded: list[list[int]], max_tokens: int, batch_size: int) -> list[np.ndarray]:
    """Sentence indices in length-sorted batches of at most ``batch_size`` sentences and ``max_tokens``
    padded source tokens: a function of the lengths alone, so every world size cuts the same batches."""
    if not encoded:
        return []
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    if lengths.max() > max_tokens:
        raise ConfigError(f"--max-tokens {max_tokens} is below the longest source sentence "
                          f"({int(lengths.max())} tokens with its tag and </s>)")
    return token_budget_batches(lengths, lengths, max_tokens, max_sentences=batch_size, seed=0)


def deal(costs: list[int], world_size: int) -> list[int]:
    """The rank of every job: the most costly first, each to the least loaded rank (ties: lowest rank,
    then the earlier job), so that the ranks finish together. Deterministic."""
    load = [0] * world_size
    owner = [0] * len(costs)
    for j in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        owner[j] = r
        load[r] += costs[j]
    return owner


def check_options(beam: int, batch_size: int, max_tokens: int, max_sentences: int, max_new_tokens: int) -> None:
    for flag, value, least in (("--beam", beam, 1), ("--batch-size", batch_size, 1), ("--max-tokens", max_tokens, 1),
                               ("--max-sentences", max_sentences, 0), ("--max-new-tokens", max_new_tokens, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{flag} must be an integer >= {least}, got {value!r}")


def check_writable(out_dir: Path) -> None:
    """Create ``out_dir`` and a file in it (removed again): an OSError now, before any translation,
    instead of after it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    probe = out_dir / f".write-check-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


def _agree(rank: int, world_size: int, fn) -> None:
    """Run ``fn`` on rank 0; when it raises, every rank raises (no rank is left waiting)."""
    error: Optional[BaseException] = None
    if rank == 0:
        try:
            fn()
        except (MassiveMTError, OSError) as e:
            error = e
    if world_size > 1:
        from .cli import error_message

        box = [error_message(error) if error is not None else None]
        torch.distributed.broadcast_object_list(box, src=0)
        if error is None and box[0] is not None:
            raise MassiveMTError(f"rank 0: {box[0]}")
    if error is not None:
        raise error


def evaluate(model_dir: str | Path, corpus_dir: str | Path, tasks: Optional[list[str]] = None,
             split: str = "test", beam: int = 4, batch_size: int = 64, max_tokens: int = 4096,
             max_sentences: int = 0, max_new_tokens: int = 128, length_penalty: float = 1.0,
             device: Optional[str] = None, out_dir: Optional[str | Path] = None, progress: bool = True,
             rank: int = 0, world_size: int = 1, engine: str = "torch") -> Optional[dict]:
    """Translate and score every task; returns the report dict on rank 0 (None on the other ranks) and
    writes results.json, results.md and one hypothesis file per task to ``out_dir``.

    With ``world_size`` > 1 the process group must be initialised (:func:`main` does it); every rank
    translates its share of the batches, rank 0 gathers, scores and writes.
    """
    from tqdm import tqdm

    from .data.corpus import load_corpus

    check_options(beam, batch_size, max_tokens, max_sentences, max_new_tokens)
    from .translate import load_translator

    tr = load_translator(model_dir, engine, device)        # engine ct2: a `massive-mt export --format ct2`
    if tasks is None:
        tasks = tr.meta.get("tasks")
        if not tasks:
            raise ConfigError(f"{model_dir}/massive_mt.json lists no tasks: pass the tasks to evaluate")
    corpus = load_corpus(corpus_dir)
    untested = untested_tasks(corpus, tasks, split)         # listed in the report, never silently dropped
    if len(untested) == len(tasks):
        raise DataError(f"{corpus_dir}: none of the tasks has {split!r} sentences ({', '.join(tasks)})")
    tasks = [t for t in tasks if t not in untested]
    directions = [parse_task(t) for t in tasks]
    rows, files = {}, {}
    for task, (src, tgt) in zip(tasks, directions):       # every file read before any translation
        files[task] = corpus.task_files(split, src, tgt)    # DataError naming the files when the task has none
        rows[task] = corpus.read(split, src, tgt)[:max_sentences or None]
    if out_dir is not None:
        _agree(rank, world_size, lambda: check_writable(Path(out_dir)))

    # the same batches for every world size; each rank translates the ones dealt to it
    jobs = []                                               # (task, sentence indices, encoded sources)
    for task, (src, _) in zip(tasks, directions):
        encoded = tr.encode([s for s, _ in rows[task]], src)
        jobs += [(task, idx, [encoded[i] for i in idx]) for idx in length_batches(encoded, max_tokens, batch_size)]
    owner = deal([len(e) * max(map(len, e)) for _, _, e in jobs], world_size)
    mine = [j for j, r in zip(jobs, owner) if r == rank]
    t0 = time.perf_counter()
    done = []
    bar = tqdm(total=sum(len(idx) for _, idx, _ in mine), desc=f"evaluate {split}", unit="sent",
               disable=not progress or rank != 0, dynamic_ncols=True)
    with bar:
        for task, idx, encoded in mine:
            tgt = parse_task(task)[1]
            done.append((task, idx.tolist(), tr.generate(encoded, tgt, beam, max_new_tokens, length_penalty),
                         tr.nll(encoded, tgt, [rows[task][i][1] for i in idx])))
            bar.update(len(idx))
    parts = [done]
    if world_size > 1:
        parts = [None] * world_size if rank == 0 else None
        torch.distributed.gather_object(done, parts, dst=0)
        if rank != 0:
            return None
    seconds = time.perf_counter() - t0
    done = [d for part in parts for d in part]

    hyps_all: dict[str, list[Optional[str]]] = {task: [None] * len(rows[task]) for task in tasks}
    nll_all: dict[str, list[Optional[tuple[float, int]]]] = {task: [None] * len(rows[task]) for task in tasks}
    for task, idx, hyps, nlls in done:
        for i, h, x in zip(idx, hyps, nlls):
            hyps_all[task][i], nll_all[task][i] = h, x
    train_sizes = tr.meta.get("train_sentences", {})
    buckets = resource_buckets({t: train_sizes[t] for t in tasks if t in train_sizes})
    results = []
    for task, (src, tgt) in zip(tasks, directions):
        hyps, refs = hyps_all[task], [r for _, r in rows[task]]
        assert None not in hyps, f"{task}: a sentence was not translated"
        bleu, chrf, bsig, csig = score(hyps, refs, tgt)
        nll, n_tok = nll_score(nll_all[task])
        results.append(TaskResult(task, len(refs), train_sizes.get(task), buckets.get(task, "-"),
                                  round(bleu, 2), round(chrf, 2), bsig, csig,
                                  test_set_identity(split, *files[task], len(refs)), round(nll, 4), n_tok))
    n = sum(len(r) for r in rows.values())
    report = {"model": str(model_dir), "engine": engine, "corpus": str(corpus_dir), "split": split, "beam": beam,
              "max_sentences": max_sentences, "scored": describe_test_set(corpus, split),
              "untested": untested, "tasks": [r.to_dict() for r in results],
              "buckets": bucket_averages(results),
              "speed": {"world_size": world_size, "sentences": n, "translate_s": round(seconds, 3),
                        "rank_sentences": [sum(len(d[1]) for d in part) for part in parts],
                        "sentences_per_s": round(n / seconds, 2) if seconds > 0 else None,
                        "batch_size": batch_size, "max_tokens": max_tokens}}
    if out_dir is not None:
        write_report(report, hyps_all, Path(out_dir), nll_all)
    return report


def nll_score(per_sentence: list[tuple[float, int]]) -> tuple[float, int]:
    """(nats per reference token, tokens) of a task from its sentences' (NLL sum, tokens)."""
    n = sum(k for _, k in per_sentence)                # > 0: every reference has its </s> scored
    return math.fsum(x for x, _ in per_sentence) / n, n


def untested_tasks(corpus, tasks: list[str], split: str) -> dict[str, str]:
    """{task: reason} for the tasks whose language pair is in the corpus but has no ``split``
    sentences (in a multi-way test set, a language that translated none of the held-out strings).
    A task whose pair is missing altogether is an error (DataError naming the files)."""
    out = {}
    for task in tasks:
        info = corpus.pair_for(*parse_task(task))
        if not info.sizes.get(split):
            out[task] = f"pair {info.name} has no {split!r} sentences in {corpus.root}"
    return out


def describe_test_set(corpus, split: str) -> dict:
    """Which test set was scored, from the corpus manifest's `test_sets`: the multi-way set held out
    for every language (``build-corpus --sources``), the help-paragraph set (CORPUS/test_doc), or a
    per-pair split (the default PyPI corpus, or ``--split hash``)."""
    info = corpus.test_sets.get(split, {})
    kind = info.get("kind", "per-pair")
    text = {"multiway": "multi-way set: the same English strings held out of training for every language",
            "multiway-doc": "multi-way help paragraphs held out of training for every language",
            "hash": "per-pair hash split of the English strings",
            "per-pair": "per-pair split of the corpus"}.get(kind, kind)
    out = {"corpus": str(corpus.root), "split": split, "kind": kind, "description": text}
    if info.get("english_strings") is not None:
        out["english_strings"] = info["english_strings"]
    return out


def scored_line(report: dict) -> str:
    s = report["scored"]
    n = f" ({s['english_strings']} English strings)" if "english_strings" in s else ""
    line = f"scored: {s['corpus']} {s['split']!r}, {s['description']}{n}"
    if report.get("untested"):
        line += f"; not scored, no {s['split']!r} sentences: {', '.join(report['untested'])}"
    return line


def bucket_averages(results: list[TaskResult]) -> dict:
    out = {}
    for b in ("high", "medium", "low", "all"):
        rs = [r for r in results if b == "all" or r.bucket == b]
        if rs:
            out[b] = {"tasks": len(rs), "bleu": round(float(np.mean([r.bleu for r in rs])), 2),
                      "chrf": round(float(np.mean([r.chrf for r in rs])), 2)}
            if all(r.nll is not None for r in rs):
                out[b]["nll"] = round(float(np.mean([r.nll for r in rs])), 4)
    return out


def _nll(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def markdown_table(report: dict) -> str:
    lines = ["| task | train pairs | bucket | test sents | BLEU | chrF | NLL |", "|---|---:|---|---:|---:|---:|---:|"]
    rows = sorted(report["tasks"], key=lambda r: -(r["train_sentences"] or 0))
    for r in rows:
        lines.append(f"| {r['task']} | {r['train_sentences'] if r['train_sentences'] is not None else '-'} | "
                     f"{r['bucket']} | {r['n_sentences']} | {r['bleu']:.2f} | {r['chrf']:.2f} | {_nll(r.get('nll'))} |")
    lines += ["", "| bucket | tasks | avg BLEU | avg chrF | avg NLL |", "|---|---:|---:|---:|---:|"]
    for b, v in report["buckets"].items():
        lines.append(f"| {b} | {v['tasks']} | {v['bleu']:.2f} | {v['chrf']:.2f} | {_nll(v.get('nll'))} |")
    sigs = sorted({r["bleu_signature"] for r in report["tasks"]}) + sorted({r["chrf_signature"] for r in report["tasks"]})
    lines += ["", "sacrebleu signatures:"] + [f"- `{s}`" for s in sigs]
    if "scored" in report:
        lines += ["", scored_line(report)]
    return "\n".join(lines)


def write_report(report: dict, hyps: dict[str, list[str]], out_dir: Path,
                 nlls: Optional[dict[str, list[tuple[float, int]]]] = None) -> None:
    """results.json, results.md, one hypothesis file per task and, with ``nlls``, one file of
    per-sentence "NLL<TAB>tokens" lines per task (nll.SPLIT.TASK.tsv), each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {out_dir / "results.json": json.dumps(report, indent=2, ensure_ascii=False),
             out_dir / "results.md": markdown_table(report) + "\n"}
    for task, hs in hyps.items():
        files[out_dir / f"hyp.{report['split']}.{task}.txt"] = "".join(h + "\n" for h in hs)
    for task, xs in (nlls or {}).items():
        files[out_dir / f"nll.{report['split']}.{task}.tsv"] = "".join(f"{x!r}\t{n}\n" for x, n in xs)
    atomic_write_texts(files)


# ---------------------------------------------------------------------------------- command line
def _count(least: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="massive-mt evaluate", allow_abbrev=False, description=(
        "Beam search + sacrebleu BLEU/chrF per task. Data-parallel under a launcher "
        "(torchrun --nproc_per_node N -m massive_mt.evaluate ...) or with --nproc N."))
    p.add_argument("--model", required=True, help="model directory written by training (run/model)")
    p.add_argument("--corpus", required=True, help="corpus directory in the {split}.{src}-{tgt}.{lang} layout")
    p.add_argument("--tasks", nargs="*", help="tasks such as en-fr en-pt_BR (default: the model's training tasks)")
    p.add_argument("--split", default="test")
    p.add_argument("--beam", type=_count(1), default=4)
    p.add_argument("--batch-size", type=_count(1), default=64, help="most sentences per batch")
    p.add_argument("--max-tokens", type=_count(1), default=4096,
                   help="most source tokens per batch, padding included")
    p.add_argument("--max-sentences", type=_count(0), default=0, help="the first N sentences per task, 0 = all")
    p.add_argument("--max-new-tokens", type=_count(1), default=128)
    p.add_argument("--device", help="default: this rank's GPU if there is one, else the CPU")
    p.add_argument("--engine", choices=["torch", "ct2"], default="torch",
                   help="torch (transformers' generate) or ct2 (CTranslate2: a massive-mt export --format ct2)")
    p.add_argument("--out", help="where results.json/results.md go (default: next to the model, in eval/)")
    p.add_argument("--nproc", type=_count(1), default=1, help="start this many local ranks (one per GPU or CPU share)")
    p.add_argument("--launcher", default="torchrun", choices=["torchrun", "deepspeed"], help="for --nproc > 1")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)      # appended by the deepspeed launcher
    return p


def _rank_argv(argv: list[str]) -> list[str]:
    """The arguments of the ranks: ``argv`` without --nproc and --launcher, which the launchers'
    own parsers would take for (abbreviations of) their options."""
    out, skip = [], False
    for arg in argv:
        if skip or arg in ("--nproc", "--launcher") or arg.startswith(("--nproc=", "--launcher=")):
            skip = not skip and arg in ("--nproc", "--launcher")
            continue
        out.append(arg)
    return out


def run(a: argparse.Namespace, argv: list[str]) -> int:
    from .distributed import discover

    d = discover()
    if a.nproc > 1 and d.source == "single":          # not started by a launcher: start the ranks
        import subprocess

        from .cli import launch_command, launch_env

        cmd = launch_command(a.launcher, a.nproc, _rank_argv(argv), module="massive_mt.evaluate")
        print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
        rc = subprocess.call(cmd, env=launch_env(a.nproc))
        if rc != 0:
            print(f"massive-mt evaluate: the ranks failed with exit status {rc}", file=sys.stderr)
        return 2 if rc != 0 else 0
    rank, world = 0, 1
    if d.world_size > 1:
        from .distributed import init_distributed

        rank, world = init_distributed()
    device = a.device
    if device is None and torch.cuda.is_available():
        device = f"cuda:{d.local_rank}"
    report = evaluate(a.model, a.corpus, tasks=a.tasks, split=a.split, beam=a.beam, batch_size=a.batch_size,
                      max_tokens=a.max_tokens, max_sentences=a.max_sentences, max_new_tokens=a.max_new_tokens,
                      device=device, out_dir=a.out, progress=not a.no_progress,
                      rank=rank, world_size=world, engine=a.engine)
    if report is not None:
        print(markdown_table(report))
        s = report["speed"]
        print(f"\n{s['sentences']} sentences in {s['translate_s']:.1f} s on {s['world_size']} rank(s): "
              f"{s['sentences_per_s']} sentences/s", file=sys.stderr)
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    from .cli import run_command

    argv = sys.argv[1:] if argv is None else list(argv)
    a = build_parser().parse_intermixed_args(argv)
    if a.out is None:
        a.out = str(Path(a.model).parent / "eval")
    return run_command("evaluate", a.out, run, a, argv)


if __name__ == "__main__":
    sys.exit(main())
