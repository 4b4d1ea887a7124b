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

Statistics (docs/comparing.md):
- seed interval: mean over the n seeds +- t(0.975, n-1) * s / sqrt(n), s the sample standard
  deviation of the per-seed corpus scores (Student t-interval; seeds are the sampling unit);
- difference to the baseline per language: mean(system) - mean(baseline) with a Welch t-interval
  (unequal variances, Welch-Satterthwaite degrees of freedom): the seeds of two configurations are
  independent draws, a seed number shared by both does not pair them;
- seed-level verdict: see `seed_model`; power: see `seeds_for_power`;
- paired test per language: see `paired_test` (it holds the trained models fixed).

`python -m massive_mt.experiments.compare --from-json OLD/compare.json --out DIR` recomputes everything but the
paired tests (kept from the file) from the per-seed scores a compare.json records.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from massive_mt.engine.config import flatten
from massive_mt.errors import ConfigError, DataError

# config fields that do not make a different configuration: seeds, paths, checkpoint/log cadence
IGNORED = ("train.output_dir", "train.resume", "train.seed", "sampling.seed", "train.save_interval",
           "train.keep_last", "train.tensorboard", "train.stop_signals", "train.collective_timeout_s",
           "train.log_interval", "reconcile.log_interval")
# what results.json records of a task's test set that must be the same for every run
TEST_SET_KEYS = ("split", "sentences", "reference_sha256", "source_sha256")
METRICS = ("bleu", "chrf")              # always compared
NLL = "nll"                             # test NLL, compared when every run recorded it; lower is better
NAMES = {"bleu": "BLEU", "chrf": "chrF", NLL: "NLL"}
NLL_TOLERANCE = 6e-5                    # results.json rounds to 4 decimals
BUCKETS = ("high", "medium", "low", "all")
LEVEL = 0.95
ALPHA = 0.05
SCORE_TOLERANCE = 0.011          # results.json rounds to 2 decimals

CELL_FILE = "cell.json"          # in a cell's run directory: {config, seed, grid, eval}; marks it finished


class CompareError(ConfigError):
    """Runs that cannot be compared: unevaluated, other test sets, other tasks, missing seeds."""


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


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
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
    groups = {}
    for k, rs in by_key.items():
        rs = sorted(rs, key=lambda r: (r.config.get("train.seed"), r.config.get("sampling.seed")))
        for a, b in zip(rs, rs[1:]):
            if a.seed == b.seed:                        # equal seeds are neighbours in this order
                raise CompareError(f"{b.path}: same configuration and seed {b.seed} as {a.path}")
        groups[labels[k]] = rs
    counts = {label: len(rs) for label, rs in groups.items()}
    most = max(counts.values())
    for label, rs in groups.items():
        if len(rs) < 2 or len(rs) < most:
            raise CompareError(f"configuration {label!r} has {len(rs)} seed(s) ({', '.join(str(r.path) for r in rs)}); "
                               f"every configuration needs the same number of seeds, at least 2 (the most: {most})")
    return groups


# ----------------------------------------------------------------------------- statistics

def t_interval(x, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): Student t-interval of the mean of the seeds' scores."""
    from scipy import stats

    x = np.asarray(x, dtype=float)
    m = float(x.mean())
    half = float(stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return m, m - half, m + half


def welch_interval(x, y, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean(x) - mean(y), low, high): Welch t-interval of a difference of means (unequal variances)."""
    from scipy import stats

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    d = float(x.mean() - y.mean())
    se = math.sqrt(vx + vy)
    if se == 0.0:
        return d, d, d
    df = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    half = float(stats.t.ppf((1 + level) / 2, df) * se)
    return d, d - half, d + half


def paired_test(base: list[Run], system: list[Run], task: str, samples: int) -> dict:
    """sacrebleu's paired approximate randomisation (sacrebleu.significance.PairedTest, test_type
    'ar') of one language, on the concatenation of the seeds' hypotheses.

    The k-th seed of each configuration translates the same test sentences; the seeds' outputs are
    concatenated (references repeated once per seed) and line i of the system is paired with line
    i of the baseline. Under the null hypothesis that the two sets of outputs are interchangeable,
    swapping any paired line is as likely as not, which is what approximate randomisation samples.
    The trained models are held fixed: the test asks whether these 2 x n models' outputs differ
    beyond what resampling the test sentences would give, not whether another draw of seeds would
    differ. Seed variation is not part of it (one lucky seed can make a language "significant");
    the seed-level question is `seed_model`'s. The statistic is the absolute difference of corpus
    BLEU (chrF) of the pooled outputs: two-sided.

    sacrebleu (2.x, as MultEval) counts the trials whose difference is strictly above the observed
    one, so outputs identical line for line (every trial ties at 0) would get p = 1/(trials+1);
    they get p = 1 here without a test. Trials tie with the observed difference with probability
    2^(1-k) when k lines differ: `differing_lines` is recorded, and with k < 10 the p-value is
    biased low by up to that much."""
    import sacrebleu
    from sacrebleu.significance import PairedTest

    from massive_mt.scoring import bleu_tokenize_for

    refs = [x for r in base for x in r.refs[task]]
    named = [("baseline", [h for r in base for h in r.hyps[task]]),
             ("system", [h for r in system for h in r.hyps[task]])]
    metrics = {"BLEU": sacrebleu.BLEU(tokenize=bleu_tokenize_for(task.split("-")[1])), "chrF": sacrebleu.CHRF()}
    differing = sum(a != b for a, b in zip(named[0][1], named[1][1]))
    if differing == 0:
        out = {}
        for name, key in (("BLEU", "bleu"), ("chrF", "chrf")):
            pooled = metrics[name].corpus_score(named[0][1], [refs]).score
            out[key] = {"pooled_baseline": pooled, "pooled": pooled, "p": 1.0, "differing_lines": 0}
        return out
    sigs, res = PairedTest(named, metrics, references=[refs], test_type="ar", n_samples=samples)()
    out = {"test_signatures": {k: str(v) for k, v in sigs.items()}}
    for name, key in (("BLEU", "bleu"), ("chrF2", "chrf")):
        b, s = res[name]
        out[key] = {"pooled_baseline": b.score, "pooled": s.score, "p": s.p_value, "differing_lines": differing}
    return out


def paired_nll_test(base: list[Run], system: list[Run], task: str, samples: int, seed: int = 0) -> dict:
    """Paired approximate randomisation of the test NLL of one language, on the seeds' concatenated
    per-sentence NLL sums (line i of the system paired with line i of the baseline, as for BLEU).
    Both systems score the same references, so the token counts pair too and the statistic is
    |Σ_i (x_i - y_i)| / Σ_i n_i; a trial swaps each pair with probability 1/2 (flips the sign of its
    difference). p = (trials at least as extreme + 1) / (trials + 1), two-sided."""
    x = np.concatenate([r.nll[task][0] for r in system])
    y = np.concatenate([r.nll[task][0] for r in base])
    n = float(np.concatenate([r.nll[task][1] for r in base]).sum())
    d = x - y
    observed = abs(d.sum())
    if not d.any():
        return {"pooled_baseline": float(y.sum() / n), "pooled": float(x.sum() / n), "p": 1.0, "differing_lines": 0}
    rng = np.random.default_rng(seed)
    extreme, done = 0, 0
    while done < samples:
        k = min(1000, samples - done)
        signs = rng.integers(0, 2, size=(k, len(d)), dtype=np.int8) * 2 - 1
        extreme += int((np.abs(signs @ d) >= observed * (1 - 1e-12)).sum())
        done += k
    return {"pooled_baseline": float(y.sum() / n), "pooled": float(x.sum() / n),
            "p": (extreme + 1) / (samples + 1), "differing_lines": int(np.count_nonzero(d))}


def verdict(delta: float, p: float, metric: str = "bleu") -> str:
    """win / tie / loss at p < ALPHA; for NLL a lower value wins."""
    better = -delta if metric == NLL else delta
    return "win" if p < ALPHA and better > 0 else ("loss" if p < ALPHA and better < 0 else "tie")


def holm(p) -> list[float]:
    """Holm's step-down adjusted p-values: the i-th smallest of m gets max_{j<=i} (m - j + 1) p_(j),
    capped at 1; reading each at p_holm < ALPHA holds the family-wise error rate at ALPHA. (What
    statsmodels' multipletests(method='holm') returns, without its gc.collect() per call.)"""
    p = np.asarray(list(p), dtype=float)
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
    out = np.empty_like(adj)
    out[order] = adj
    return [float(x) for x in out]


def seed_model(scores: dict, buckets: dict, base: str, level: float = LEVEL) -> dict:
    """The seed-level test of one metric: a linear mixed model of the per-language scores,

        y[c, k, l] = a[l] + b[c, bucket(l)] + u[c, k] + e[c, k, l],   u ~ N(0, s2_run), e ~ N(0, s2_res)

    with the language (a) and configuration x bucket (b, 0 for the baseline) as fixed effects and
    the run (configuration c x seed k) as a random intercept, fitted by REML (statsmodels MixedLM).
    ``scores``: {config: {task: [score per seed]}}; ``buckets``: {task: bucket}.

    Contrasts: b[c, B] (config c minus the baseline in bucket B) and, over all languages,
    sum_B n_B / n * b[c, B]. The runs are the replicates of a configuration, so the t-statistics
    are referred to t with df = runs - configurations (the between-run degrees of freedom, the
    containment rule; MixedLM's own intervals are normal and its t_test would count the
    observations). For a balanced design the "all" contrast is exactly the pooled two-sample t on
    the runs' mean scores. Holm's correction (`p_holm`, which the verdict reads) runs over the
    configurations' contrasts to the baseline in one bucket (or "all"): one family per question
    "which configurations differ from the baseline here"; `p_holm_all` corrects over every contrast
    of the metric at once (configurations x buckets and "all"), stricter, since the bucket contrasts
    of one configuration are nearly the same whole-model shift. The scores are standardised for the
    fit and the estimates scaled back."""
    from scipy import stats
    from statsmodels.regression.mixed_linear_model import MixedLM

    labels = [base] + [c for c in scores if c != base]
    tasks = list(next(iter(scores.values())))
    names = [b for b in BUCKETS if b != "all" and any(buckets[t] == b for t in tasks)]
    names += sorted({buckets[t] for t in tasks} - set(names))
    n_seeds = len(scores[base][tasks[0]])
    others = labels[1:]
    cols = [(c, b) for c in others for b in names]
    y, X, groups = [], [], []
    for ci, c in enumerate(labels):
        for k in range(n_seeds):
            for ti, t in enumerate(tasks):
                row = np.zeros(len(tasks) + len(cols))
                row[ti] = 1.0
                if c != base:
                    row[len(tasks) + cols.index((c, buckets[t]))] = 1.0
                X.append(row)
                y.append(scores[c][t][k])
                groups.append(ci * n_seeds + k)
    y, X = np.asarray(y, dtype=float), np.asarray(X)
    runs, df = len(labels) * n_seeds, len(labels) * (n_seeds - 1)
    out = {"model": "score ~ language + configuration:bucket + (1 | run), REML (statsmodels MixedLM)",
           "df": df, "df_rule": "runs - configurations", "runs": runs, "observations": len(y), "level": level}
    if not others:
        return {**out, "contrasts": {}}
    scale = float(y.std())
    if scale == 0.0:                                      # every score equal: nothing differs
        out.update(run_variance=0.0, residual_variance=0.0, converged=True,
                   note="every score is the same: every difference is 0")
        beta, cov = np.zeros(X.shape[1]), np.zeros((X.shape[1], X.shape[1]))
    elif len(tasks) == 1:              # one score per run: the run effect is the residual, OLS is the model
        import statsmodels.api as sm

        fit = sm.OLS((y - y.mean()) / scale, X).fit()
        beta, cov = np.asarray(fit.params) * scale, np.asarray(fit.cov_params()) * scale ** 2
        out.update(run_variance=float(fit.scale) * scale ** 2, residual_variance=0.0, converged=True,
                   note="one language: ordinary least squares on the runs' scores (df = runs - configurations)")
    else:
        z = (y - y.mean()) / scale
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit = _fit_mixed(MixedLM(z, X, groups=np.asarray(groups)))
        k = X.shape[1]
        beta = np.asarray(fit.fe_params) * scale
        cov = np.asarray(fit.cov_params())[:k, :k] * scale ** 2
        out.update(run_variance=float(np.asarray(fit.cov_re).item()) * scale ** 2,
                   residual_variance=float(fit.scale) * scale ** 2, converged=bool(fit.converged))
        msgs = sorted({str(w.message).splitlines()[0] for w in caught})
        if msgs:
            out["warnings"] = msgs
    q = stats.t.ppf((1 + level) / 2, df)
    contrasts, flat = {}, []
    n_in = {b: sum(buckets[t] == b for t in tasks) for b in names}
    for c in others:
        contrasts[c] = {}
        for b in names + ["all"]:
            L = np.zeros(X.shape[1])
            for bb in (names if b == "all" else [b]):
                L[len(tasks) + cols.index((c, bb))] = n_in[bb] / len(tasks) if b == "all" else 1.0
            est, se = float(L @ beta), float(np.sqrt(max(L @ cov @ L, 0.0)))
            tval = est / se if se > 0 else (0.0 if est == 0 else math.copysign(math.inf, est))
            p = float(2 * stats.t.sf(abs(tval), df)) if se > 0 else (1.0 if est == 0 else 0.0)
            contrasts[c][b] = {"mean": est, "low": float(est - q * se), "high": float(est + q * se), "se": se,
                               "t": float(tval), "p": p}
            flat.append(contrasts[c][b])
    for b in names + ["all"]:                           # the family of a question: every configuration in b
        family = [contrasts[c][b] for c in others]
        for entry, ph in zip(family, holm([e["p"] for e in family])):
            entry["p_holm"] = ph
    for entry, ph in zip(flat, holm([e["p"] for e in flat])):
        entry["p_holm_all"] = ph
    out["contrasts"] = contrasts
    return out


def _fit_mixed(model):
    """REML fit, by the first optimiser that converges (L-BFGS can step onto a singular X'V^-1X)."""
    from numpy.linalg import LinAlgError

    fit, errors = None, []
    for method in ("bfgs", "lbfgs", "powell", "nm"):
        try:
            fit = model.fit(reml=True, method=method)
        except (LinAlgError, ValueError) as e:
            errors.append(f"{method}: {e}")
            continue
        if fit.converged:
            return fit
    if fit is None:
        raise CompareError(f"the seed-level mixed model could not be fitted ({'; '.join(errors)})")
    return fit


def seeds_for_power(system, baseline, power: float = 0.8, alpha: float = ALPHA) -> dict:
    """How many seeds per configuration a two-sided two-sample t-test at ``alpha`` (equal seeds,
    pooled SD of the two configurations' per-seed scores) needs to detect the observed difference
    with probability ``power``, and its power at the seeds there are (statsmodels TTestIndPower).
    The observed difference and SD stand for the true ones: a rough planning figure."""
    from statsmodels.stats.power import TTestIndPower

    x, y = np.asarray(system, dtype=float), np.asarray(baseline, dtype=float)
    sd = float(math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2))
    diff = float(x.mean() - y.mean())
    out = {"diff": diff, "sd_pooled": sd, "seeds": len(x), "power_target": power}
    if sd == 0.0 or diff == 0.0:
        return {**out, "effect_size": None, "power_now": None, "seeds_needed": None,
                "note": "no seed variance" if sd == 0.0 else "no difference"}
    d = abs(diff) / sd
    analysis = TTestIndPower()

    def power_at(n):        # scipy's noncentral t gives nan far in its tail: there the power is 1
        p = float(analysis.power(effect_size=d, nobs1=n, alpha=alpha, ratio=1.0))
        return p if math.isfinite(p) or d < 5 else 1.0

    now, needed = power_at(len(x)), None
    if power_at(2) >= power:
        needed = 2
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")        # solve_power warns and returns nan where it fails
            n = float(analysis.solve_power(effect_size=d, power=power, alpha=alpha, ratio=1.0, nobs1=None))
        needed = math.ceil(n) if math.isfinite(n) else None
    return {**out, "effect_size": d, "power_now": now, "seeds_needed": needed}


def _interval(t) -> dict:
    return {"mean": t[0], "low": t[1], "high": t[2]}


def compare(runs: list[Run], baseline: Optional[str] = None, samples: int = 10000) -> dict:
    """The comparison as a JSON-able dict (see docs/comparing.md for every field)."""
    check_comparable(runs)
    groups = group_runs(runs)
    base_label = _baseline_label(groups, baseline)
    first = runs[0]
    tasks = sorted(first.tasks, key=lambda t: (-(first.train_sentences.get(t) or 0), t))
    nll_left_out = _nll_left_out(runs, tasks)
    not_decoded = [str(r.path) for r in runs if r.report.get("metrics") == "nll"]
    metrics = (() if not_decoded else METRICS) + (() if nll_left_out else (NLL,))
    if not metrics:
        raise CompareError(f"nothing to compare: {not_decoded[0]} was evaluated with --metrics nll and test NLL is "
                           f"left out ({nll_left_out})")
    per_seed = {label: {t: {m: [r.scores[t][m] for r in rs] for m in metrics} for t in tasks}
                for label, rs in groups.items()}
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
                       for label, rs in groups.items()},
           "tasks": {}, "buckets": {}}
    base = per_seed[base_label]
    for t in tasks:
        row = {"bucket": first.buckets.get(t, "-"), "train_sentences": first.train_sentences.get(t),
               "n_sentences": len(first.refs[t]), "test_set": first.test_sets[t], "configs": {}}
        for label, rs in groups.items():
            c = {m: {**_interval(t_interval(per_seed[label][t][m])), "per_seed": per_seed[label][t][m]} for m in metrics}
            if label != base_label:
                test = paired_test(groups[base_label], rs, t, samples) if not not_decoded else {}
                if NLL in metrics:
                    test[NLL] = paired_nll_test(groups[base_label], rs, t, samples)
                for m in metrics:
                    c[m]["diff"] = _interval(welch_interval(per_seed[label][t][m], base[t][m]))
                    c[m]["p"] = test[m]["p"]
                    for k in ("pooled", "pooled_baseline", "differing_lines"):
                        c[m][k] = test[m][k]
                if "test_signatures" in test:
                    out.setdefault("test_signatures", test["test_signatures"])
            row["configs"][label] = c
        out["tasks"][t] = row
    off = off_target_rates(groups, tasks, first.buckets)
    if off:
        out["off_target"] = off
    return seed_statistics(out)


def off_target_rates(groups: dict[str, list[Run]], tasks: list[str], buckets: dict[str, str]) -> Optional[dict]:
    """The off-target rate (share of hypotheses not in the target language, `evaluate`) per task and
    configuration, the mean over the seeds that measured it, and per bucket the mean over its
    measured tasks: descriptive (no test). None when no run measured it."""
    rates = {label: {t: [r.report_task(t).get("off_target") for r in rs] for t in tasks} for label, rs in groups.items()}
    if all(x is None for per in rates.values() for xs in per.values() for x in xs):
        return None

    def mean(xs):
        xs = [x for x in xs if x is not None]
        return {"mean": float(np.mean(xs)) if xs else None, "seeds": len(xs)}
    per_task = {t: {label: mean(rates[label][t]) for label in groups} for t in tasks}
    per_bucket = {}
    for b in ("high", "medium", "low", "all"):
        ts = [t for t in tasks if b == "all" or buckets.get(t) == b]
        if ts:
            per_bucket[b] = {label: mean([per_task[t][label]["mean"] for t in ts]) for label in groups}
    lids = sorted({r.report.get("off_target_lid") for rs in groups.values() for r in rs} - {None})
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
            c = {m: {**_interval(t_interval(avg[label][m])), "per_seed": avg[label][m]} for m in metrics}
            if label != base_label:
                for m in metrics:
                    c[m]["diff"] = _interval(welch_interval(avg[label][m], avg[base_label][m]))
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


def _baseline_label(groups: dict, baseline: Optional[str]) -> str:
    if baseline is None:
        return next(iter(groups))
    if baseline in groups:
        return baseline
    path = Path(baseline).resolve()
    for label, rs in groups.items():
        if any(r.path.resolve() == path for r in rs):
            return label
    raise CompareError(f"--baseline {baseline!r}: neither a configuration ({', '.join(groups)}) nor one of the runs")


# ----------------------------------------------------------------------------- reports

def _fmt(c: dict, metric: str = "bleu") -> str:
    d = 3 if metric == NLL else 2
    return f"{c['mean']:.{d}f} [{c['low']:.{d}f}, {c['high']:.{d}f}]"


def _p(p: float, alpha: float = ALPHA) -> str:
    return f"{p:.4f}" + (" *" if p < alpha else "")


def lang_label(task: str) -> str:
    src, tgt = task.split("-")
    return tgt if src == "en" else (src if tgt == "en" else task)


def _verdict_rows(res: dict, metric: str) -> list[list[str]]:
    """Per contrast (configuration x bucket): the mixed model's difference, interval, p, Holm p,
    verdict, and the power figures, as table cells."""
    fit = res["seed_model"][metric]
    d = 3 if metric == NLL else 2
    rows = []
    for label, by_bucket in fit["contrasts"].items():
        for b, e in by_bucket.items():
            pw = res["buckets"][b]["configs"][label][metric]["power"]
            rows.append([label, b, f"{e['mean']:+.{d}f} [{e['low']:+.{d}f}, {e['high']:+.{d}f}]", f"{e['p']:.4f}",
                         _p(e["p_holm"], res["alpha"]), f"{e['p_holm_all']:.4f}", e["verdict"],
                         "-" if pw["power_now"] is None else f"{pw['power_now']:.2f}",
                         "-" if pw["seeds_needed"] is None else str(pw["seeds_needed"])])
    return rows


VERDICT_HEAD = ["configuration", "bucket", "Δ", "p", "p Holm", "p Holm (all)", "verdict", "power", "seeds for 80 %"]


def summary(res: dict) -> str:
    """The seed-level verdicts as printed by `massive-mt compare`."""
    L = []
    for m in res["metrics"]:
        fit = res["seed_model"][m]
        if not fit["contrasts"]:
            continue
        L.append(f"{NAMES[m]} vs {res['baseline']}: mixed model, run as random effect, t({fit['df']}) "
                 f"({fit['df_rule']}); Holm over the configurations per bucket; power of a two-sample t at "
                 f"{len(res['configs'][res['baseline']]['seeds'])} seeds and the seeds per configuration for 80 %"
                 + (" (lower is better)" if m == NLL else ""))
        rows = [VERDICT_HEAD] + _verdict_rows(res, m)
        widths = [max(len(r[i]) for r in rows) for i in range(len(VERDICT_HEAD))]
        L += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(L)


def markdown(res: dict) -> str:
    base = res["baseline"]
    metrics = res.get("metrics", METRICS)
    n = len(res["configs"][base]["seeds"])
    L = [f"# Comparison against `{base}`", "",
         f"Test split `{res['split']}`, beam {res['beam']}, max_sentences {res['max_sentences'] or 'all'}, "
         f"{n} seeds per configuration.", "",
         "| configuration | seeds | checkpoints evaluated | runs |", "|---|---|---|---|"]
    for label, c in res["configs"].items():
        L.append(f"| {label}{' (baseline)' if label == base else ''} | {', '.join(c['seeds'])} | "
                 f"{'<br>'.join(c.get('checkpoints', []))} | {'<br>'.join(c['runs'])} |")
    fits = {m: res["seed_model"][m] for m in metrics if res["seed_model"][m]["contrasts"]}
    if fits:
        df = next(iter(fits.values()))["df"]
        L += ["", "## Seed-level verdict", "",
              f"Linear mixed model per metric: score ~ language + configuration × bucket + (1 | run), the run "
              f"(configuration × seed) a random effect, REML (statsmodels MixedLM); Δ with its "
              f"{int(res['level'] * 100)} % interval and p from t with {df} degrees of freedom (runs − "
              f"configurations). p Holm: Holm over the configurations within the bucket (the verdict, at "
              f"p Holm < {res['alpha']}, * marks it); p Holm (all): over every contrast of the metric. power: of a "
              f"two-sided two-sample t-test (α {res['alpha']}, pooled SD of the per-seed bucket means) at {n} "
              f"seeds for the observed Δ; seeds for 80 %: seeds per configuration it needs for power 0.8."]
        for m, fit in fits.items():
            L += ["", f"### {NAMES[m]}" + (" (lower is better)" if m == NLL else ""), "",
                  f"Run variance {fit['run_variance']:.4g}, residual variance {fit['residual_variance']:.4g}"
                  + ("" if fit.get("converged", True) else " (the fit did not converge)")
                  + (f"; {'; '.join(fit['warnings'])}" if fit.get("warnings") else "") + ".", "",
                  "| " + " | ".join(VERDICT_HEAD) + " |", "|---|---|---:|---:|---:|---:|---|---:|---:|"]
            L += ["| " + " | ".join(r) + " |" for r in _verdict_rows(res, m)]
    for label in res["configs"]:
        if label == base:
            continue
        L += ["", f"## {label} vs {base}, per language", "",
              f"Means over seeds with {int(res['level'] * 100)} % Student t-intervals; Δ with Welch t-intervals. "
              f"p (Holm): the paired sentence-level test (approximate randomisation, {res['ar_samples']} trials, "
              f"on the seeds' concatenated outputs, two-sided) and in brackets its Holm correction over the "
              f"{len(res['tasks'])} languages; * and win/loss at Holm p < {res['alpha']}. The paired test holds "
              f"the trained models fixed: it says whether these models' outputs differ, not whether other "
              f"seeds would."]
        head = "".join(f" {NAMES[m]} baseline | {NAMES[m]} | Δ {NAMES[m]} | p (Holm) |" for m in metrics)
        L += ["", "| language | train pairs | bucket | test sents |" + head,
              "|---|---:|---|---:|" + "---:|---:|---:|---:|" * len(metrics)]
        for t, row in res["tasks"].items():
            b, s = row["configs"][base], row["configs"][label]
            cells = [t, str(row["train_sentences"] or "-"), row["bucket"], str(row["n_sentences"])]
            for m in metrics:
                cells += [_fmt(b[m], m), _fmt(s[m], m), _fmt(s[m]["diff"], m),
                          f"{s[m]['p']:.4f} ({_p(s[m]['p_holm'], res['alpha'])})"]
            L.append("| " + " | ".join(cells) + " |")
        head = "".join(f" {NAMES[m]} baseline | {NAMES[m]} | Δ {NAMES[m]} | W/T/L {NAMES[m]} |" for m in metrics)
        L += ["", "Per bucket: the per-seed average over its languages; Δ with its Welch interval; W/T/L: "
              "languages the paired test (Holm) calls better / not different / worse.", "",
              "| bucket | tasks |" + head, "|---|---:|" + "---:|---:|---:|---|" * len(metrics)]
        for bname, e in res["buckets"].items():
            b, s = e["configs"][base], e["configs"][label]
            cells = [bname, str(len(e["tasks"]))]
            for m in metrics:
                cells += [_fmt(b[m], m), _fmt(s[m], m), _fmt(s[m]["diff"], m), "/".join(map(str, s[m]["win_tie_loss"]))]
            L.append("| " + " | ".join(cells) + " |")
    if res.get("off_target"):
        from massive_mt.evaluation.evaluate import percent

        off, labels = res["off_target"], list(res["configs"])
        L += ["", "## Off-target rate", "",
              f"Share of hypotheses (%) whose detected language ({', '.join(off['identifier'])}) is not the "
              "target, the mean over seeds; per bucket the mean over its measured languages; n/m: not measured "
              "(the identifier does not know the language). Descriptive: no test.", "",
              "| bucket |" + "".join(f" {lb} |" for lb in labels), "|---|" + "---:|" * len(labels)]
        L += [f"| {b} |" + "".join(f" {percent(v[lb]['mean'])} |" for lb in labels) for b, v in off["buckets"].items()]
        L += ["", "| language |" + "".join(f" {lb} |" for lb in labels), "|---|" + "---:|" * len(labels)]
        L += [f"| {t} |" + "".join(f" {percent(v[lb]['mean'])} |" for lb in labels) for t, v in off["tasks"].items()]
    L += ["", "sacrebleu signatures:"] + [f"- `{s}`" for s in res["signatures"]]
    L += [f"- test: `{s}`" for s in res.get("test_signatures", {}).values()]
    return "\n".join(L) + "\n"


def plot(res: dict, out: Path) -> Path:
    """Per-language difference to the baseline against training-set size (log x), coloured by
    bucket, with the Welch intervals; filled markers where the paired test's Holm p < alpha."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from massive_mt.experiments.plots import _save

    base = res["baseline"]
    metrics = res.get("metrics", METRICS)
    others = [c for c in res["configs"] if c != base] or [base]
    colours = {"high": "tab:blue", "medium": "tab:orange", "low": "tab:red", "-": "tab:gray"}
    fig, axes = plt.subplots(len(metrics), len(others), figsize=(5.5 * len(others), 3.8 * len(metrics)),
                             squeeze=False, layout="constrained")
    for j, label in enumerate(others):
        for i, m in enumerate(metrics):
            ax = axes[i, j]
            for t, row in res["tasks"].items():
                c = row["configs"][label][m]
                if "diff" not in c or not row["train_sentences"]:
                    continue
                d = c["diff"]
                col = colours.get(row["bucket"], "tab:gray")
                ax.errorbar(row["train_sentences"], d["mean"], yerr=[[d["mean"] - d["low"]], [d["high"] - d["mean"]]],
                            fmt="o", color=col, mfc=col if c["p_holm"] < res["alpha"] else "white", ms=5, capsize=2, lw=1)
                ax.annotate(lang_label(t), (row["train_sentences"], d["mean"]), fontsize=6, xytext=(3, 2),
                            textcoords="offset points")
            ax.axhline(0, color="k", lw=0.5)
            ax.set_xscale("log")
            ax.set(xlabel="training sentences", ylabel=f"Δ {NAMES[m]} vs {base}" + (" (lower is better)" if m == NLL else ""),
                   title=label if i == 0 else None)
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=b) for b, c in colours.items() if b != "-"]
    handles.append(plt.Line2D([], [], marker="o", ls="", color="k", mfc="white", label=f"paired test, Holm p ≥ {res['alpha']}"))
    axes[0, -1].legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle(f"difference to {base} per language, {int(res['level'] * 100)} % Welch intervals over seeds",
                 fontsize=10)
    return _save(fig, out)


def write_outputs(res: dict, out_dir: Path) -> list[Path]:
    """compare.json, compare.md and compare.png in out_dir, each written next to it and renamed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in (("compare.json", json.dumps(res, indent=2, ensure_ascii=False)), ("compare.md", markdown(res))):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out_dir / name)
        paths.append(out_dir / name)
    paths.append(plot(res, out_dir / "compare.png"))
    return paths


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
