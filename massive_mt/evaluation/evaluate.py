"""Evaluation: batched beam search with the target-language tag forced, sacrebleu BLEU, chrF and
chrF++ (spBLEU with a FLORES-200 SentencePiece model) per task with their signatures, the
off-target rate, the teacher-forced test NLL, averages per resource bucket, JSON and a markdown
table.

Works on any parallel files in the corpus layout ({split}.{src}-{tgt}.{lang}), on FLORES-200 /
FLORES+ from a local directory (``--benchmark flores200``, massive_mt/data/flores.py), and any model
directory written by the trainer (`save_pretrained` + spm.model + massive_mt.json).
``--metrics nll`` scores the test NLL alone, without decoding.

Data-parallel over the launcher's ranks (`torchrun --nproc_per_node N -m massive_mt.evaluation.evaluate ...`
or `massive-mt evaluate --nproc N`): the sentences of every task are cut into length-sorted,
token-bounded batches once, the same whatever the world size; the batches of all tasks are dealt
to the ranks (largest first, each to the least loaded rank), gathered on rank 0 in the original
order and scored there once. Every batch is translated exactly as one process would translate it,
so N ranks give the hypotheses and scores of one process.

Length: the data-parallel evaluation (the deal, the gather, the scoring on rank 0) and its
command line are one protocol that every rank runs in the same order; decoding is apart
(decoding.py).
"""
from __future__ import annotations

import argparse
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

from massive_mt.data.tasks import parse_task
from massive_mt.data.tasks import resource_buckets
from massive_mt.errors import ConfigError, DataError, MassiveMTError
from massive_mt.evaluation.decoding import (DTYPES, check_options, count_arg, deal, gather_on_rank0,
                                            length_batches, load_translator, rank_argv)
from massive_mt.io import atomic_write_texts, sha256_file
from massive_mt.scoring import score

METRICS = ("all", "nll")   # --metrics: decode and score everything, or the test NLL alone

@dataclass
class TaskResult:
    task: str
    n_sentences: int
    train_sentences: Optional[int]
    bucket: str
    bleu: Optional[float]           # None with --metrics nll (nothing decoded)
    chrf: Optional[float]
    bleu_signature: Optional[str]
    chrf_signature: Optional[str]
    test_set: dict          # what identifies the test set: split, files, their sha256, sentences
    nll: Optional[float] = None     # test NLL: nats per reference token (teacher-forced, tag excluded)
    nll_tokens: Optional[int] = None
    chrf_pp: Optional[float] = None         # chrF++ (word order 2)
    chrf_pp_signature: Optional[str] = None
    spbleu: Optional[float] = None          # with --spm-model
    spbleu_signature: Optional[str] = None
    off_target: Optional[float] = None      # share of hypotheses not in the target language; None: not measured

    def to_dict(self):
        return dict(self.__dict__)


def test_set_identity(split: str, src_path: Path, ref_path: Path, n_sentences: int) -> dict:
    """What identifies a test set: the split, both files with their sha256, the sentences used."""
    return {"split": split, "sentences": n_sentences,
            "source": str(src_path.resolve()), "source_sha256": sha256_file(src_path),
            "reference": str(ref_path.resolve()), "reference_sha256": sha256_file(ref_path)}


def check_writable(out_dir: Path) -> None:
    """Create ``out_dir`` and a file in it (removed again): an OSError now, before any translation,
    instead of after it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    probe = out_dir / f".write-check-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


def _agree(rank: int, world_size: int, fn):
    """Run ``fn`` on rank 0 and return its result there (None on the other ranks); when it raises,
    every rank raises (no rank is left waiting)."""
    error: Optional[BaseException] = None
    result = None
    if rank == 0:
        try:
            result = fn()
        except (MassiveMTError, OSError) as e:
            error = e
    if world_size > 1:
        from massive_mt.launch import error_message

        box = [error_message(error) if error is not None else None]
        torch.distributed.broadcast_object_list(box, src=0)
        if error is None and box[0] is not None:
            raise MassiveMTError(f"rank 0: {box[0]}")
    if error is not None:
        raise error
    return result


def evaluate(model_dir: str | Path, corpus_dir: Optional[str | Path], tasks: Optional[list[str]] = None,
             split: str = "test", beam: int = 4, batch_size: int = 64, max_tokens: int = 4096,
             max_sentences: int = 0, max_new_tokens: int = 128, length_penalty: float = 1.0,
             device: Optional[str] = None, out_dir: Optional[str | Path] = None, progress: bool = True,
             rank: int = 0, world_size: int = 1, flores_dir: Optional[str | Path] = None, metrics: str = "all",
             spm_model: Optional[str | Path] = None, lid_model: Optional[str | Path] = None,
             dtype: Optional[str] = None, engine: str = "torch") -> Optional[dict]:
    """Translate and score every task; returns the report dict on rank 0 (None on the other ranks) and
    writes results.json, results.md and one hypothesis file per task to ``out_dir``.

    The test set is the corpus's ``split``, or with ``flores_dir`` FLORES-200/FLORES+ (``split``
    dev or devtest). ``metrics="nll"`` scores the test NLL alone (nothing decoded);
    ``spm_model`` adds spBLEU, ``lid_model`` (a fastText model) replaces py3langid for the
    off-target rate. With ``world_size`` > 1 the process group must be initialised (:func:`main`
    does it); every rank translates its share of the batches, rank 0 gathers, scores and writes.
    """
    from tqdm import tqdm

    check_options(beam, batch_size, max_tokens, max_sentences, max_new_tokens)
    if metrics not in METRICS:
        raise ConfigError(f"--metrics {metrics!r}: expected one of {', '.join(METRICS)}")

    tr = load_translator(model_dir, engine, device, dtype)   # engine ct2: a `massive-mt export --format ct2`
    if tasks is None:
        tasks = tr.meta.get("tasks")
        if not tasks:
            raise ConfigError(f"{model_dir}/massive_mt.json lists no tasks: pass the tasks to evaluate")
    rows, files, untested, scored = test_rows(tasks, split, corpus_dir, flores_dir)
    rows = {task: r[:max_sentences or None] for task, r in rows.items()}
    tasks = [t for t in tasks if t not in untested]
    directions = [parse_task(t) for t in tasks]
    decode = metrics == "all"
    scorers = _agree(rank, world_size, lambda: Scorers(spm_model, lid_model)) if decode else None  # rank 0 scores
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
            hyps = tr.generate(encoded, tgt, beam, max_new_tokens, length_penalty) if decode else [""] * len(idx)
            done.append((task, idx.tolist(), hyps, tr.nll(encoded, tgt, [rows[task][i][1] for i in idx])))
            bar.update(len(idx))
    parts = gather_on_rank0(done, rank, world_size)
    if parts is None:
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
        nll, n_tok = nll_score(nll_all[task])
        result = TaskResult(task, len(refs), train_sizes.get(task), buckets.get(task, "-"), None, None, None, None,
                            test_set_identity(scored["split_name"], *files[task], len(refs)), round(nll, 4), n_tok)
        if scorers is not None:
            scorers.score(result, hyps, refs, tgt)
        results.append(result)
    n = sum(len(r) for r in rows.values())
    report = {"model": str(model_dir), "corpus": str(corpus_dir) if corpus_dir else None, "split": split,
              "beam": beam, "engine": engine, "dtype": tr.dtype, "max_sentences": max_sentences, "metrics": metrics,
              "checkpoint": tr.meta.get("checkpoint"),           # which checkpoint the model is (massive-mt export)
              "scored": {k: v for k, v in scored.items() if k != "split_name"},
              "off_target_lid": scorers.lid.name if scorers else None,
              "untested": untested, "tasks": [r.to_dict() for r in results],
              "buckets": bucket_averages(results),
              "speed": {"world_size": world_size, "sentences": n, "translate_s": round(seconds, 3),
                        "rank_sentences": [sum(len(d[1]) for d in part) for part in parts],
                        "sentences_per_s": round(n / seconds, 2) if seconds > 0 else None,
                        "batch_size": batch_size, "max_tokens": max_tokens}}
    if out_dir is not None:
        write_report(report, hyps_all if decode else {}, Path(out_dir), nll_all)
    return report


def test_rows(tasks: list[str], split: str, corpus_dir, flores_dir):
    """(rows {task: [(source, reference)]}, files {task: (source file, reference file)}, untested
    {task: reason}, what was scored) from the corpus's ``split`` or from FLORES; every file is read
    before any translation, and a task that cannot be scored is listed, never silently dropped."""
    if flores_dir is not None:
        from massive_mt.data.flores import Flores

        rows, files, untested = Flores(Path(flores_dir), split).rows([(t, *parse_task(t)) for t in tasks])
        if not rows:
            raise DataError(f"{flores_dir}: none of the tasks can be scored on FLORES {split}: "
                            + "; ".join(f"{t}: {why}" for t, why in untested.items()))
        n = len(next(iter(rows.values())))
        scored = {"benchmark": "flores200", "corpus": str(flores_dir), "split": split, "kind": "flores200",
                  "description": f"FLORES-200 {split}: {n} sentences, multi-way", "split_name": f"flores200:{split}"}
        return rows, files, untested, scored
    if corpus_dir is None:
        raise ConfigError("evaluate: give --corpus (the corpus's test split) or --benchmark-dir (FLORES)")
    from massive_mt.data.corpus import load_corpus

    corpus = load_corpus(corpus_dir)
    untested = untested_tasks(corpus, tasks, split)
    if len(untested) == len(tasks):
        raise DataError(f"{corpus_dir}: none of the tasks has {split!r} sentences ({', '.join(tasks)})")
    rows, files = {}, {}
    for task in tasks:
        if task not in untested:
            src, tgt = parse_task(task)
            files[task] = corpus.task_files(split, src, tgt)  # DataError naming the files when the task has none
            rows[task] = corpus.read(split, src, tgt)
    return rows, files, untested, {**describe_test_set(corpus, split), "split_name": split}


class Scorers:
    """The decoded metrics of a task: BLEU, chrF, chrF++, spBLEU (with ``spm_model``) and the
    off-target rate (py3langid, or the fastText ``lid_model``)."""

    def __init__(self, spm_model, lid_model):
        import tempfile

        from massive_mt.evaluation.lid import identifier
        from massive_mt.scoring import SpBleu

        self.lid = identifier(lid_model)
        self._sacrebleu_home = tempfile.TemporaryDirectory(prefix="massive_mt-sacrebleu-") if spm_model else None
        self.spbleu = SpBleu(spm_model, self._sacrebleu_home.name) if spm_model else None

    def score(self, result: TaskResult, hyps: list[str], refs: list[str], tgt: str) -> None:
        from massive_mt.evaluation.lid import off_target_rate
        from massive_mt.scoring import extra_scores

        bleu, chrf, result.bleu_signature, result.chrf_signature = score(hyps, refs, tgt)
        result.bleu, result.chrf = round(bleu, 2), round(chrf, 2)
        extra, sigs = extra_scores(hyps, refs, self.spbleu)
        result.chrf_pp, result.chrf_pp_signature = round(extra["chrf_pp"], 2), sigs["chrf_pp"]
        if self.spbleu is not None:
            result.spbleu, result.spbleu_signature = round(extra["spbleu"], 2), sigs["spbleu"]
        rate = off_target_rate(self.lid, hyps, tgt)
        result.off_target = None if rate is None else round(rate, 4)


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


AVERAGED = (("bleu", 2), ("chrf", 2), ("chrf_pp", 2), ("spbleu", 2), ("nll", 4))


def bucket_averages(results: list[TaskResult]) -> dict:
    """Per resource bucket and overall: the mean of each metric every task has, and the mean
    off-target rate over the tasks where it was measured (``off_target_tasks`` of them)."""
    out = {}
    for b in ("high", "medium", "low", "all"):
        rs = [r for r in results if b == "all" or r.bucket == b]
        if not rs:
            continue
        out[b] = {"tasks": len(rs)}
        for name, digits in AVERAGED:
            if all(getattr(r, name) is not None for r in rs):
                out[b][name] = round(float(np.mean([getattr(r, name) for r in rs])), digits)
        measured = [r.off_target for r in rs if r.off_target is not None]
        if measured:
            out[b]["off_target"], out[b]["off_target_tasks"] = round(float(np.mean(measured)), 4), len(measured)
    return out


def _fmt(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def percent(x: Optional[float]) -> str:
    """A rate as a percentage, or n/m (not measured)."""
    return "n/m" if x is None else f"{100 * x:.1f}"


def markdown_table(report: dict) -> str:
    tasks = report["tasks"]
    cols = [("BLEU", "bleu", 2), ("chrF", "chrf", 2), ("chrF++", "chrf_pp", 2), ("spBLEU", "spbleu", 2),
            ("NLL", "nll", 3)]
    cols = [c for c in cols if any(r.get(c[1]) is not None for r in tasks)]
    off = any(r.get("bleu") is not None for r in tasks)           # decoded: the off-target column
    head = [c[0] for c in cols] + (["off-target %"] if off else [])
    lines = ["| task | train pairs | bucket | test sents | " + " | ".join(head) + " |",
             "|---|---:|---|---:|" + "---:|" * len(head)]
    for r in sorted(tasks, key=lambda r: -(r["train_sentences"] or 0)):
        cells = [_fmt(r.get(key), d) for _, key, d in cols] + ([percent(r.get("off_target"))] if off else [])
        lines.append(f"| {r['task']} | {r['train_sentences'] if r['train_sentences'] is not None else '-'} | "
                     f"{r['bucket']} | {r['n_sentences']} | " + " | ".join(cells) + " |")
    lines += ["", "| bucket | tasks | " + " | ".join(f"avg {h}" for h in head) + " |",
              "|---|---:|" + "---:|" * len(head)]
    for b, v in report["buckets"].items():
        cells = [_fmt(v.get(key), d) for _, key, d in cols]
        if off:
            cells.append(percent(v.get("off_target")) + (f" ({v['off_target_tasks']} tasks)" if "off_target" in v else ""))
        lines.append(f"| {b} | {v['tasks']} | " + " | ".join(cells) + " |")
    sigs = sorted({r[f"{k}_signature"] for k in ("bleu", "chrf", "chrf_pp", "spbleu") for r in tasks
                   if r.get(f"{k}_signature")})
    if sigs:
        lines += ["", "sacrebleu signatures:"] + [f"- `{s}`" for s in sigs]
    if off:
        lines += ["", f"off-target: share of hypotheses whose language ({report.get('off_target_lid')}) is not the "
                      "target; n/m: the identifier does not know the target language (not measured)"]
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
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="massive-mt evaluate", allow_abbrev=False, description=(
        "Beam search + sacrebleu BLEU/chrF per task. Data-parallel under a launcher "
        "(torchrun --nproc_per_node N -m massive_mt.evaluation.evaluate ...) or with --nproc N."))
    p.add_argument("--model", required=True, help="model directory written by training (run/model)")
    p.add_argument("--corpus", help="corpus directory in the {split}.{src}-{tgt}.{lang} layout")
    p.add_argument("--tasks", nargs="*", help="tasks such as en-fr en-pt_BR (default: the model's training tasks)")
    p.add_argument("--split", help="the corpus's split (default test), or FLORES's dev|devtest (default devtest)")
    p.add_argument("--benchmark", choices=["flores200"], help="score on a benchmark instead of the corpus")
    p.add_argument("--benchmark-dir", help="FLORES-200 release (dev/eng_Latn.dev) or FLORES+ text files "
                                           "(dev/dev.eng_Latn); see docs/evaluation.md#flores-200")
    p.add_argument("--metrics", choices=METRICS, default="all",
                   help="all: decode and score BLEU/chrF/chrF++/off-target/NLL; nll: the test NLL alone, no decoding")
    p.add_argument("--spm-model", help="the FLORES-200 SentencePiece model (a local file) for spBLEU")
    p.add_argument("--lid-model", help="a local fastText language-ID model (GlotLID, OpenLID) for the off-target "
                                       "rate instead of py3langid")
    p.add_argument("--beam", type=count_arg(1), default=4)
    p.add_argument("--batch-size", type=count_arg(1), default=64, help="most sentences per batch")
    p.add_argument("--max-tokens", type=count_arg(1), default=4096,
                   help="most source tokens per batch, padding included")
    p.add_argument("--max-sentences", type=count_arg(0), default=0, help="the first N sentences per task, 0 = all")
    p.add_argument("--max-new-tokens", type=count_arg(1), default=128)
    p.add_argument("--device", help="default: this rank's GPU if there is one, else the CPU")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="the model's dtype for decoding "
                   "(default: bf16 on a GPU, fp32 on the CPU)")
    p.add_argument("--engine", choices=["torch", "ct2"], default="torch",
                   help="torch (transformers' generate) or ct2 (CTranslate2: a massive-mt export --format ct2)")
    p.add_argument("--out", help="where results.json/results.md go (default: next to the model, in eval/)")
    p.add_argument("--nproc", type=count_arg(1), default=1, help="start this many local ranks (one per GPU or CPU share)")
    p.add_argument("--launcher", default="torchrun", choices=["torchrun", "deepspeed"], help="for --nproc > 1")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)      # appended by the deepspeed launcher
    return p


def run(a: argparse.Namespace, argv: list[str]) -> int:
    from massive_mt.engine.distributed import discover

    d = discover()
    if a.nproc > 1 and d.source == "single":          # not started by a launcher: start the ranks
        import subprocess

        from massive_mt.launch import launch_command, launch_env

        cmd = launch_command(a.launcher, a.nproc, rank_argv(argv), module="massive_mt.evaluation.evaluate")
        print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
        rc = subprocess.call(cmd, env=launch_env(a.nproc))
        if rc != 0:
            print(f"massive-mt evaluate: the ranks failed with exit status {rc}", file=sys.stderr)
        return 2 if rc != 0 else 0
    rank, world = 0, 1
    if d.world_size > 1:
        from massive_mt.engine.distributed import init_distributed

        rank, world = init_distributed()
    device = a.device
    if device is None and world > 1:
        from massive_mt.engine.distributed import rank_device

        device = str(rank_device())                 # the GPU init_distributed bound this rank to
    report = evaluate(a.model, a.corpus, tasks=a.tasks, split=a.split, beam=a.beam, batch_size=a.batch_size,
                      max_tokens=a.max_tokens, max_sentences=a.max_sentences, max_new_tokens=a.max_new_tokens,
                      device=device, out_dir=a.out, progress=not a.no_progress,
                      rank=rank, world_size=world, flores_dir=a.benchmark_dir, metrics=a.metrics,
                      spm_model=a.spm_model, lid_model=a.lid_model, dtype=a.dtype, engine=a.engine)
    if report is not None:
        print(markdown_table(report))
        s = report["speed"]
        print(f"\n{s['sentences']} sentences in {s['translate_s']:.1f} s on {s['world_size']} rank(s): "
              f"{s['sentences_per_s']} sentences/s", file=sys.stderr)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    from massive_mt.launch import run_command

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    a = parser.parse_intermixed_args(argv)
    if (a.benchmark is None) != (a.benchmark_dir is None):
        parser.error("--benchmark flores200 and --benchmark-dir DIR go together")
    if a.benchmark is None and a.corpus is None:
        parser.error("--corpus DIR is required (or --benchmark flores200 --benchmark-dir DIR)")
    if a.split is None:
        a.split = "devtest" if a.benchmark else "test"
    if a.out is None:
        a.out = str(Path(a.model).parent / "eval")
    from massive_mt.engine.distributed import leave

    return leave(run_command("evaluate", a.out, run, a, argv))


if __name__ == "__main__":
    sys.exit(main())
