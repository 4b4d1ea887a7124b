"""Multi-seed comparison of evaluated runs: mean BLEU/chrF (and test NLL, when every run recorded
it) over seeds with 95 % t-intervals, the difference to a baseline configuration per resource
bucket from a linear mixed model with the run (configuration x seed) as a random effect (the
primary verdict, Holm-corrected across the contrasts), the seeds a contrast would need for 80 %
power, and per language the Welch interval over seeds and a paired sentence-level test (paired
approximate randomisation: sacrebleu's for BLEU and chrF, `paired_nll_test` for NLL) with
win/tie/loss counts from its Holm-corrected p-values.

A run is a training output_dir (config.yaml, model/massive_mt.json) evaluated by `massive-mt
evaluate` (eval/results.json and one hypothesis file per task). Runs are grouped into
configurations by their resolved config.yaml without the fields in IGNORED (seeds, output paths,
checkpoint and logging cadence); the runs of a configuration are its seeds. A configuration is
labelled by its name in a `massive-mt study` (the runs' cell.json), else by the fields that differ.

Runs must have been evaluated on the same test sets: results.json records per task the split, the
number of sentences and the sha256 of the source and reference files (`test_set`). The references
are read from the recorded file (checked against its sha256) and the scores recomputed from the
hypothesis files with the tokenisation `massive-mt evaluate` uses, then checked against the scores
results.json recorded: a reference or hypothesis file that changed since the evaluation is an error.

Statistics (docs/comparing.md; the functions are in massive_mt/experiments/seed_stats.py, the
reports in compare_report.py):
- seed interval: mean over the n seeds +- t(0.975, n-1) * s / sqrt(n), s the sample standard
  deviation of the per-seed corpus scores (Student t-interval; seeds are the sampling unit);
- difference to the baseline per language: mean(system) - mean(baseline) with a Welch t-interval
  (unequal variances, Welch-Satterthwaite degrees of freedom): the seeds of two configurations are
  independent draws, a seed number shared by both does not pair them;
- seed-level verdict: see `seed_model`; power: see `seeds_for_power`;
- paired test per language: see `paired_test` (it holds the trained models fixed).

`python -m massive_mt.experiments.compare --from-json OLD/compare.json --out DIR` recomputes everything but the
paired tests (kept from the file) from the per-seed scores a compare.json records.

Length: loading, checking and grouping the runs and assembling the comparison read as one
pipeline; the statistics and the reports are already apart (seed_stats.py, compare_report.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from massive_mt.engine.config import flatten
from massive_mt.errors import DataError
from massive_mt.experiments.compare_report import summary, write_outputs
from massive_mt.experiments.seed_stats import (ALPHA, BUCKETS, LEVEL, METRICS, NLL, CompareError, as_interval, holm,
                                               paired_nll_test, paired_test, seed_model, seeds_for_power,
                                               t_interval, verdict, welch_interval)

# config fields that do not make a different configuration: seeds, paths, checkpoint/log cadence
IGNORED = ("train.output_dir", "train.resume", "train.seed", "sampling.seed", "train.save_interval",
           "train.keep_last", "train.tensorboard", "train.stop_signals", "train.collective_timeout_s",
           "train.log_interval", "reconcile.log_interval")
# what results.json records of a task's test set that must be the same for every run
TEST_SET_KEYS = ("split", "sentences", "reference_sha256", "source_sha256")
NLL_TOLERANCE = 6e-5                    # results.json rounds to 4 decimals
SCORE_TOLERANCE = 0.011          # results.json rounds to 2 decimals

CELL_FILE = "cell.json"          # in a cell's run directory: {config, seed, grid, eval}; marks it finished


@dataclass
class Run:
    path: Path
    config: dict                 # flattened resolved config
    label: Optional[str]         # the study's configuration name (cell.json), None outside a study
    seed: str
    tasks: list[str]             # the evaluated tasks (those the test set has sentences for)
    train_sentences: dict
    buckets: dict
    report: dict                 # eval/results.json
    hyps: dict                   # task -> hypotheses
    refs: dict                   # task -> references
    test_sets: dict              # task -> results.json's test_set
    scores: dict = field(default_factory=dict)   # task -> {"bleu": x, "chrf": y[, "nll": z]}, recomputed
    nll: dict = field(default_factory=dict)      # task -> (per-sentence NLL sums, tokens) when recorded
    checkpoint: str = "last"     # which checkpoint the evaluated model is (export --step), with its step(s)

    def report_task(self, task: str) -> dict:
        """The task's entry of results.json."""
        return next(r for r in self.report["tasks"] if r["task"] == task)

    @property
    def key(self) -> str:
        return json.dumps({k: v for k, v in self.config.items() if k not in IGNORED}, sort_keys=True, default=str)


def _read_json(path: Path, what: str, run: Path) -> dict:
    if not path.is_file():
        raise CompareError(f"{run}: {what} ({path} not found)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CompareError(f"{path}: not valid JSON ({e})") from None


def _references(run: Path, task: str, test_set: dict, corpus: Optional[str]) -> list[str]:
    """The reference lines `task` was scored against: the file results.json names (under `corpus`
    when given: the corpus moved), checked against the sha256 recorded at the evaluation."""
    from massive_mt.data.corpus import read_lines
    from massive_mt.io import sha256_file

    path = Path(test_set["reference"])
    if corpus is not None:
        path = Path(corpus) / path.name
    try:
        sha = sha256_file(path)
    except OSError as e:
        raise CompareError(f"{run}: the references of {task} cannot be read ({path}: {e.strerror or e}); "
                           f"--corpus names the corpus directory when it moved") from None
    if sha != test_set["reference_sha256"]:
        raise CompareError(f"{run}: {path} is not the reference file {task} was evaluated on (sha256 {sha[:12]}, "
                           f"recorded {test_set['reference_sha256'][:12]}): the test set changed since the evaluation")
    try:
        return [line for _, line in read_lines(path)][:test_set["sentences"]]
    except DataError as e:
        raise CompareError(f"{run}: {e}") from None


def load_run(path, eval_dir: str = "eval", corpus: Optional[str] = None) -> Run:
    """Read one evaluated run; CompareError naming the run for anything missing or inconsistent."""
    from massive_mt.scoring import score

    run = Path(path)
    if not (run / "config.yaml").is_file():
        raise CompareError(f"{run}: no config.yaml (not a training output_dir)")
    try:
        config = flatten(yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {})
    except yaml.YAMLError as e:
        raise CompareError(f"{run / 'config.yaml'}: not valid YAML ({e})") from None
    meta = _read_json(run / "model" / "massive_mt.json", "training did not finish (no exported model)", run)
    report = _read_json(run / eval_dir / "results.json",
                        f"not evaluated: run `massive-mt evaluate --model {run / 'model'} --corpus CORPUS`", run)
    evaluated = [r["task"] for r in report["tasks"]]
    untested = sorted(report.get("untested", {}))           # tasks the test set has no sentences for
    if sorted(evaluated + untested) != sorted(meta["tasks"]):
        raise CompareError(f"{run}: evaluated on tasks {sorted(evaluated)} but trained on {sorted(meta['tasks'])}")
    label = None
    if (run / CELL_FILE).is_file():
        label = _read_json(run / CELL_FILE, "", run).get("config")
    hyps, refs, test_sets, scores, nll = {}, {}, {}, {}, {}
    for r in report["tasks"]:
        task = r["task"]
        if not isinstance(r.get("test_set"), dict):
            raise CompareError(f"{run / eval_dir / 'results.json'}: task {task} records no test_set (written by an "
                               f"older `massive-mt evaluate`): evaluate the run again")
        test_sets[task] = r["test_set"]
        refs[task] = _references(run, task, r["test_set"], corpus)
        scores[task] = {}
        if report.get("metrics") == "nll":                   # `evaluate --metrics nll`: nothing decoded
            if r.get(NLL) is None:
                raise CompareError(f"{run}: evaluated with --metrics nll but {task} records no nll")
        else:
            hyps[task], scores[task] = _decoded_scores(run, eval_dir, report, r, refs[task], score)
        if r.get(NLL) is not None:
            nll[task] = _read_nll(run, run / eval_dir / f"nll.{report['split']}.{task}.tsv", r)
            scores[task][NLL] = float(nll[task][0].sum() / nll[task][1].sum())
    seed = str(config.get("train.seed"))
    if config.get("sampling.seed") != config.get("train.seed"):
        seed += f"/{config.get('sampling.seed')}"
    return Run(run, config, label, seed, evaluated, meta.get("train_sentences", {}),
               {r["task"]: r["bucket"] for r in report["tasks"]}, report, hyps, refs, test_sets, scores, nll,
               evaluated_checkpoint(report))


def evaluated_checkpoint(report: dict) -> str:
    """`best (step 40)`, `avg:2 (steps 180, 200)`, `last (step 200)`: what the evaluated model was, as
    results.json recorded it; `unknown` for an evaluation that predates the record."""
    c = report.get("checkpoint")
    if not c:
        return "unknown"
    steps = c.get("steps") or []
    return f"{c.get('select')} (step{'s' * (len(steps) > 1)} {', '.join(map(str, steps))})"


def _decoded_scores(run: Path, eval_dir: str, report: dict, r: dict, refs: list[str], score) -> tuple[list, dict]:
    """(hypotheses, {"bleu", "chrf"}) of one task, re-scored from its hypothesis file and checked
    against what results.json recorded."""
    task = r["task"]
    hyp_path = run / eval_dir / f"hyp.{report['split']}.{task}.txt"
    if not hyp_path.is_file():
        raise CompareError(f"{run}: hypotheses of {task} missing ({hyp_path})")
    hyps = hyp_path.read_text(encoding="utf-8").split("\n")[:-1]
    if len(hyps) != r["n_sentences"] or len(refs) != r["n_sentences"]:
        raise CompareError(f"{run}: {task} was evaluated on {r['n_sentences']} sentences; {hyp_path.name} has "
                           f"{len(hyps)} lines and its references {len(refs)}")
    bleu, chrf, _, _ = score(hyps, refs, task.split("-")[1])
    for name, got in (("bleu", bleu), ("chrf", chrf)):
        if abs(got - r[name]) > SCORE_TOLERANCE:
            raise CompareError(f"{run}: {name} of {task} recorded in results.json ({r[name]}) does not match its "
                               f"hypotheses ({got:.2f}): {hyp_path} changed since the evaluation")
    return hyps, {"bleu": bleu, "chrf": chrf}


def _read_nll(run: Path, path: Path, r: dict) -> tuple[np.ndarray, np.ndarray]:
    """The per-sentence (NLL sum, tokens) of a task, checked against its sentence count and the NLL
    results.json recorded."""
    try:
        rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]
        x = np.array([float(a) for a, _ in rows], dtype=np.float64)
        n = np.array([int(b) for _, b in rows], dtype=np.int64)
    except (OSError, ValueError) as e:
        raise CompareError(f"{run}: per-sentence NLL of {r['task']} unreadable ({path}: {e})") from None
    if len(x) != r["n_sentences"] or not np.isfinite(x).all() or n.sum() == 0:
        raise CompareError(f"{run}: {path} has {len(x)} finite lines for {r['n_sentences']} sentences")
    if abs(x.sum() / n.sum() - r[NLL]) > NLL_TOLERANCE:
        raise CompareError(f"{run}: nll of {r['task']} recorded in results.json ({r[NLL]}) does not match "
                           f"{path.name} ({x.sum() / n.sum():.4f}): the file changed since the evaluation")
    return x, n


def check_comparable(runs: list[Run]) -> None:
    """Same tasks, same test sets (as results.json records them), same evaluation settings for every run."""
    first = runs[0]
    for r in runs[1:]:
        if sorted(r.tasks) != sorted(first.tasks):
            extra, missing = sorted(set(r.tasks) - set(first.tasks)), sorted(set(first.tasks) - set(r.tasks))
            raise CompareError(f"{r.path}: tasks differ from {first.path} (extra {extra}, missing {missing})")
        for k in ("split", "beam", "max_sentences", "engine", "dtype"):
            if r.report.get(k) != first.report.get(k):
                raise CompareError(f"{r.path}: evaluated with {k}={r.report.get(k)!r}, {first.path} with "
                                   f"{k}={first.report.get(k)!r}")
        for t in first.tasks:
            a, b = r.test_sets[t], first.test_sets[t]
            if any(a[k] != b[k] for k in TEST_SET_KEYS):
                raise CompareError(f"{r.path}: evaluated on a different test set for {t} than {first.path} "
                                   f"(split {a['split']} vs {b['split']}, {a['sentences']} vs {b['sentences']} "
                                   f"sentences, references sha256 {a['reference_sha256'][:12]} vs "
                                   f"{b['reference_sha256'][:12]}, sources sha256 {a['source_sha256'][:12]} vs "
                                   f"{b['source_sha256'][:12]})")


def runs_by_config(runs: list[Run]) -> dict[str, list[Run]]:
    """{label: runs sorted by seed}; labels are the study's configuration names (the runs' cell.json)
    when those tell the configurations apart, else the config fields that differ between them."""
    by_key: dict[str, list[Run]] = {}
    for r in runs:
        by_key.setdefault(r.key, []).append(r)
    names = {k: {r.label for r in rs} for k, rs in by_key.items()}
    if (all(len(n) == 1 and None not in n for n in names.values())
            and len({next(iter(n)) for n in names.values()}) == len(by_key)):
        labels = {k: str(next(iter(names[k]))) for k in by_key}
    else:
        cfgs = {k: json.loads(k) for k in by_key}
        varying = sorted({f for c in cfgs.values() for f in c if len({json.dumps(d.get(f)) for d in cfgs.values()}) > 1})
        labels = {k: ", ".join(f"{f}={cfgs[k].get(f)}" for f in varying) or "config" for k in by_key}
    by_config = {}
    for k, rs in by_key.items():
        rs = sorted(rs, key=lambda r: (r.config.get("train.seed"), r.config.get("sampling.seed")))
        for a, b in zip(rs, rs[1:]):
            if a.seed == b.seed:                        # equal seeds are neighbours in this order
                raise CompareError(f"{b.path}: same configuration and seed {b.seed} as {a.path}")
        by_config[labels[k]] = rs
    counts = {label: len(rs) for label, rs in by_config.items()}
    most = max(counts.values())
    for label, rs in by_config.items():
        if len(rs) < 2 or len(rs) < most:
            raise CompareError(f"configuration {label!r} has {len(rs)} seed(s) ({', '.join(str(r.path) for r in rs)}); "
                               f"every configuration needs the same number of seeds, at least 2 (the most: {most})")
    return by_config


def compare(runs: list[Run], baseline: Optional[str] = None, samples: int = 10000) -> dict:
    """The comparison as a JSON-able dict (see docs/comparing.md for every field)."""
    check_comparable(runs)
    by_config = runs_by_config(runs)
    base_label = _baseline_label(by_config, baseline)
    first = runs[0]
    tasks = sorted(first.tasks, key=lambda t: (-(first.train_sentences.get(t) or 0), t))
    nll_left_out = _nll_left_out(runs, tasks)
    not_decoded = [str(r.path) for r in runs if r.report.get("metrics") == "nll"]
    metrics = (() if not_decoded else METRICS) + (() if nll_left_out else (NLL,))
    if not metrics:
        raise CompareError(f"nothing to compare: {not_decoded[0]} was evaluated with --metrics nll and test NLL is "
                           f"left out ({nll_left_out})")
    per_seed = {label: {t: {m: [r.scores[t][m] for r in rs] for m in metrics} for t in tasks}
                for label, rs in by_config.items()}
    out = {"level": LEVEL, "alpha": ALPHA, "baseline": base_label, "ar_samples": samples, **_methods(metrics),
           "metrics": list(metrics), **({"nll_left_out": nll_left_out} if nll_left_out else {}),
           **({"decoded_left_out": f"{len(not_decoded)} run(s) evaluated with --metrics nll, e.g. {not_decoded[0]}"}
              if not_decoded else {}),
           "split": first.report["split"], "beam": first.report["beam"],
           "max_sentences": first.report.get("max_sentences", 0),
           "signatures": sorted({s for r in runs for s in _signatures(r)}),
           "configs": {label: {"runs": [str(r.path) for r in rs], "seeds": [r.seed for r in rs],
                               "checkpoints": [r.checkpoint for r in rs],
                               "config": {k: v for k, v in rs[0].config.items() if k not in IGNORED}}
                       for label, rs in by_config.items()},
           "tasks": {}, "buckets": {}}
    base = per_seed[base_label]
    for t in tasks:
        row = {"bucket": first.buckets.get(t, "-"), "train_sentences": first.train_sentences.get(t),
               "n_sentences": len(first.refs[t]), "test_set": first.test_sets[t], "configs": {}}
        for label, rs in by_config.items():
            c = {m: {**as_interval(t_interval(per_seed[label][t][m])), "per_seed": per_seed[label][t][m]} for m in metrics}
            if label != base_label:
                test = paired_test(by_config[base_label], rs, t, samples) if not not_decoded else {}
                if NLL in metrics:
                    test[NLL] = paired_nll_test(by_config[base_label], rs, t, samples)
                for m in metrics:
                    c[m]["diff"] = as_interval(welch_interval(per_seed[label][t][m], base[t][m]))
                    c[m]["p"] = test[m]["p"]
                    for k in ("pooled", "pooled_baseline", "differing_lines"):
                        c[m][k] = test[m][k]
                if "test_signatures" in test:
                    out.setdefault("test_signatures", test["test_signatures"])
            row["configs"][label] = c
        out["tasks"][t] = row
    off = off_target_rates(by_config, tasks, first.buckets)
    if off:
        out["off_target"] = off
    return seed_statistics(out)


def off_target_rates(by_config: dict[str, list[Run]], tasks: list[str], buckets: dict[str, str]) -> Optional[dict]:
    """The off-target rate (share of hypotheses not in the target language, `evaluate`) per task and
    configuration, the mean over the seeds that measured it, and per bucket the mean over its
    measured tasks: descriptive (no test). None when no run measured it."""
    rates = {label: {t: [r.report_task(t).get("off_target") for r in rs] for t in tasks} for label, rs in by_config.items()}
    if all(x is None for per in rates.values() for xs in per.values() for x in xs):
        return None

    def mean(xs):
        xs = [x for x in xs if x is not None]
        return {"mean": float(np.mean(xs)) if xs else None, "seeds": len(xs)}
    per_task = {t: {label: mean(rates[label][t]) for label in by_config} for t in tasks}
    per_bucket = {}
    for b in ("high", "medium", "low", "all"):
        ts = [t for t in tasks if b == "all" or buckets.get(t) == b]
        if ts:
            per_bucket[b] = {label: mean([per_task[t][label]["mean"] for t in ts]) for label in by_config}
    lids = sorted({r.report.get("off_target_lid") for rs in by_config.values() for r in rs} - {None})
    return {"identifier": lids, "tasks": per_task, "buckets": per_bucket}


def _methods(metrics) -> dict:
    """What compare.json's numbers are, in words."""
    return {"interval": "Student t over seeds (mean); Welch t (difference to the baseline per language)",
            "verdict": "linear mixed model per metric, run (configuration x seed) as a random effect, t with "
                       "df = runs - configurations, Holm over the configurations per bucket",
            "test": "paired sentence-level test (trained models held fixed): sacrebleu paired approximate "
                    "randomisation on the seeds' concatenated hypotheses"
                    + ("; NLL: paired approximate randomisation of the per-sentence NLL" if NLL in metrics else "")
                    + "; win/tie/loss at its Holm-corrected p over the languages"}


def seed_statistics(out: dict) -> dict:
    """Everything `compare` derives from the per-seed scores and the paired tests' p-values recorded
    in ``out`` (a compare.json): the Holm-corrected paired verdicts and win/tie/loss, the buckets'
    per-seed averages with their intervals, the power figures and the seed-level mixed model."""
    base_label, metrics, tasks = out["baseline"], out["metrics"], list(out["tasks"])
    labels = list(out["configs"])
    for label in [x for x in labels if x != base_label]:
        for m in metrics:
            cells = [out["tasks"][t]["configs"][label][m] for t in tasks]
            for c, ph in zip(cells, holm([c["p"] for c in cells])):
                c["p_holm"] = ph
                c["verdict"] = verdict(c["pooled"] - c["pooled_baseline"], ph, m)
    n_seeds = len(out["configs"][base_label]["seeds"])
    out["buckets"] = {}
    for b in BUCKETS:
        members = [t for t in tasks if b == "all" or out["tasks"][t]["bucket"] == b]
        if not members:
            continue
        avg = {label: {m: [float(np.mean([out["tasks"][t]["configs"][label][m]["per_seed"][k] for t in members]))
                           for k in range(n_seeds)] for m in metrics} for label in labels}
        entry = {"tasks": members, "configs": {}}
        for label in labels:
            c = {m: {**as_interval(t_interval(avg[label][m])), "per_seed": avg[label][m]} for m in metrics}
            if label != base_label:
                for m in metrics:
                    c[m]["diff"] = as_interval(welch_interval(avg[label][m], avg[base_label][m]))
                    c[m]["power"] = seeds_for_power(avg[label][m], avg[base_label][m])
                    v = [out["tasks"][t]["configs"][label][m]["verdict"] for t in members]
                    c[m]["win_tie_loss"] = [v.count("win"), v.count("tie"), v.count("loss")]
            entry["configs"][label] = c
        out["buckets"][b] = entry
    buckets = {t: out["tasks"][t]["bucket"] for t in tasks}
    out["seed_model"] = {}
    for m in metrics:
        fit = seed_model({label: {t: out["tasks"][t]["configs"][label][m]["per_seed"] for t in tasks}
                          for label in labels}, buckets, base_label, out["level"])
        for c in fit["contrasts"].values():
            for e in c.values():
                e["verdict"] = verdict(e["mean"], e["p_holm"], m)
        out["seed_model"][m] = fit
    return out


def _nll_left_out(runs: list[Run], tasks: list[str]) -> Optional[str]:
    """Why test NLL is not compared (None: it is): a run did not record it, or the runs' references
    have other token counts (another SentencePiece model: NLL per token would not compare)."""
    missing = [str(r.path) for r in runs if any(t not in r.nll for t in tasks)]
    if missing:
        return f"not recorded by {len(missing)} run(s), e.g. {missing[0]}"
    for t in tasks:
        for r in runs[1:]:
            if not np.array_equal(r.nll[t][1], runs[0].nll[t][1]):
                return f"token counts of the {t} references differ between {runs[0].path} and {r.path} (another tokenizer)"
    return None


def _signatures(run: Run) -> list[str]:
    return [s for r in run.report["tasks"] for s in (r["bleu_signature"], r["chrf_signature"]) if s]


def _baseline_label(by_config: dict, baseline: Optional[str]) -> str:
    if baseline is None:
        return next(iter(by_config))
    if baseline in by_config:
        return baseline
    path = Path(baseline).resolve()
    for label, rs in by_config.items():
        if any(r.path.resolve() == path for r in rs):
            return label
    raise CompareError(f"--baseline {baseline!r}: neither a configuration ({', '.join(by_config)}) nor one of the runs")


def run_compare(run_dirs: list, out_dir, baseline: Optional[str] = None, samples: int = 10000,
                eval_dir: str = "eval", corpus: Optional[str] = None) -> dict:
    if samples < 1:
        raise CompareError(f"--samples must be >= 1, got {samples}")
    if len(run_dirs) < 2:
        raise CompareError("compare needs the runs of at least one configuration with at least 2 seeds")
    runs = [load_run(r, eval_dir, corpus) for r in run_dirs]
    res = compare(runs, baseline, samples)
    write_outputs(res, Path(out_dir))
    if res["seed_model"] and any(f["contrasts"] for f in res["seed_model"].values()):
        print(summary(res), flush=True)
    return res


def recompute(json_path, out_dir) -> dict:
    """compare.json's seed-level statistics, Holm corrections and power figures recomputed from the
    per-seed scores and paired p-values it records (no runs needed), written to out_dir."""
    path = Path(json_path)
    res = _read_json(path, "no compare.json", path.parent)
    for key in ("baseline", "metrics", "configs", "tasks", "level"):
        if key not in res:
            raise CompareError(f"{path}: no '{key}' (not a compare.json)")
    res = seed_statistics({**res, **_methods(res["metrics"])})
    write_outputs(res, Path(out_dir))
    print(summary(res), flush=True)
    return res


if __name__ == "__main__":
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m massive_mt.experiments.compare", description=recompute.__doc__)
    ap.add_argument("--from-json", required=True, help="a compare.json written by `massive-mt compare`")
    ap.add_argument("--out", required=True, help="directory for the new compare.md, compare.json, compare.png")
    a = ap.parse_args()
    try:
        recompute(a.from_json, a.out)
    except CompareError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
