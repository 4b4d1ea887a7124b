"""The statistics of a multi-seed comparison (docs/comparing.md), the seed being the unit: t- and
Welch intervals over seeds, the seed-level linear mixed model with the run as a random effect,
Holm's correction, the seeds a contrast needs for 80 % power, and the paired sentence-level tests
(sacrebleu's approximate randomisation for BLEU/chrF, a paired permutation test for the NLL) that
hold the trained models fixed. What is compared: METRICS, and the test NLL."""
from __future__ import annotations

import math
import warnings

import numpy as np

from massive_mt.errors import ConfigError

METRICS = ("bleu", "chrf")              # always compared
NLL = "nll"                             # test NLL, compared when every run recorded it; lower is better
NAMES = {"bleu": "BLEU", "chrf": "chrF", NLL: "NLL"}
BUCKETS = ("high", "medium", "low", "all")
LEVEL = 0.95
ALPHA = 0.05


class CompareError(ConfigError):
    """Runs that cannot be compared: unevaluated, other test sets, other tasks, missing seeds."""


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


def paired_test(base: list, system: list, task: str, samples: int) -> dict:
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


def paired_nll_test(base: list, system: list, task: str, samples: int, seed: int = 0) -> dict:
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


def as_interval(t) -> dict:
    return {"mean": t[0], "low": t[1], "high": t[2]}
