"""`massive-mt compare` on synthetic evaluated runs: intervals, the seed-level mixed model, power,
paired tests, bad input."""
import json
import shutil

import numpy as np
import pytest
import yaml

from massive_mt import cli
from massive_mt.experiments.compare import CELL_FILE, recompute, run_compare
from massive_mt.experiments.seed_stats import CompareError, holm, seed_model, seeds_for_power, t_interval, welch_interval
from massive_mt.engine.config import load_config
from massive_mt.data.tasks import resource_buckets
from massive_mt.evaluation.evaluate import TaskResult, bucket_averages, write_report
from massive_mt.scoring import score
from massive_mt.evaluation.evaluate import test_set_identity as set_identity   # not collected as a test

SIZES = {"en-fr": 5000, "en-de": 4000, "en-es": 900, "en-ru": 800, "en-ja": 100, "en-it": 80}
TASKS = list(SIZES)
N_SENT = 60


def sentences(rng, n, vocab):
    return [" ".join(rng.choice(vocab, size=10)) for _ in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A test split of N_SENT sentences per en-xx task, and the vocabulary they are drawn from."""
    rng = np.random.default_rng(0)
    vocab = np.array([f"w{i}" for i in range(300)])
    root = tmp_path_factory.mktemp("corpus")
    refs = {}
    for task in TASKS:
        src, tgt = task.split("-")
        refs[task] = sentences(rng, N_SENT, vocab)
        (root / f"test.{task}.{src}").write_text("".join(f"src {i}\n" for i in range(N_SENT)))
        (root / f"test.{task}.{tgt}").write_text("".join(r + "\n" for r in refs[task]))
    return root, refs, vocab


def corrupt(refs, q, rng, vocab):
    """Each word replaced by a random one with probability q: a system of known quality."""
    out = []
    for r in refs:
        words = r.split()
        out.append(" ".join(str(rng.choice(vocab)) if rng.random() < q else w for w in words))
    return out


def make_run(root, name, seed, corpus_dir, hyps, tasks=TASKS, overrides=(), refs=None, config_name=None,
             untested=(), nlls=None):
    """A training output_dir as the trainer, `massive-mt evaluate` and `massive-mt study` (cell.json, with
    the configuration's name) leave it; ``untested``: trained tasks the test set has no sentences for."""
    run = root / f"{name}-s{seed}"
    cfg = load_config(None, [f"train.seed={seed}", f"sampling.seed={seed}", f"train.output_dir={run}", *overrides])
    (run / "model").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    trained = [*tasks, *untested]
    (run / "model" / "massive_mt.json").write_text(json.dumps(
        {"tasks": trained, "train_sentences": {t: SIZES[t] for t in trained}, "steps": 10}))
    buckets = resource_buckets({t: SIZES[t] for t in tasks})
    results = []
    for t in tasks:
        bleu, chrf, bsig, csig = score(hyps[t], refs[t], t.split("-")[1])
        src, tgt = t.split("-")
        test_set = set_identity("test", corpus_dir / f"test.{t}.{src}", corpus_dir / f"test.{t}.{tgt}",
                                     len(hyps[t]))
        nll = (round(sum(x for x, _ in nlls[t]) / sum(n for _, n in nlls[t]), 4),
               sum(n for _, n in nlls[t])) if nlls else (None, None)
        results.append(TaskResult(t, len(hyps[t]), SIZES[t], buckets[t], round(bleu, 2), round(chrf, 2), bsig, csig,
                                  test_set, *nll))
    n = sum(len(hyps[t]) for t in tasks)
    report = {"model": str(run / "model"), "corpus": str(corpus_dir), "split": "test", "beam": 4,
              "max_sentences": 0, "untested": {t: "no 'test' sentences" for t in untested},
              "tasks": [r.to_dict() for r in results], "buckets": bucket_averages(results),
              "speed": {"world_size": 1, "sentences": n, "translate_s": 1.0, "rank_sentences": [n],
                        "sentences_per_s": float(n), "batch_size": 64, "max_tokens": 4096}}
    write_report(report, {t: hyps[t] for t in tasks}, run / "eval", nlls)
    (run / CELL_FILE).write_text(json.dumps({"config": config_name or name, "seed": seed}))
    return run


def system(refs, q, seed, vocab, tasks=TASKS):
    rng = np.random.default_rng(seed)
    return {t: corrupt(refs[t], q[t] if isinstance(q, dict) else q, rng, vocab) for t in tasks}


@pytest.fixture(scope="module")
def study(corpus, tmp_path_factory):
    """base: q=0.5; better: q=0.3 on the high and low buckets, 0.5 on the medium ones; copy: the
    base's outputs verbatim; noise: q=0.5 drawn afresh (the same system as base). 3 seeds each."""
    corpus_dir, refs, vocab = corpus
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    better_q = {t: (0.5 if SIZES[t] in (900, 800) else 0.3) for t in TASKS}
    for s in (1, 2, 3):
        base_h = system(refs, 0.5, 100 + s, vocab)
        runs[("base", s)] = make_run(root, "base", s, corpus_dir, base_h, refs=refs)
        runs[("better", s)] = make_run(root, "better", s, corpus_dir, system(refs, better_q, 200 + s, vocab),
                                       overrides=["reconcile.method=gradvac"], refs=refs)
        runs[("copy", s)] = make_run(root, "copy", s, corpus_dir, base_h, overrides=["sampling.temperature=1.0"],
                                     refs=refs)
        runs[("noise", s)] = make_run(root, "noise", s, corpus_dir, system(refs, 0.5, 300 + s, vocab),
                                      overrides=["sampling.temperature=2.0"], refs=refs)
    return root, runs


def test_intervals_cover_the_truth_at_the_nominal_rate():
    """200 synthetic studies of 3 seeds: the t-interval covers the true mean, the Welch interval
    the true difference, in 95 % of them within a binomial tolerance (3 sd: 181..199 of 200)."""
    rng = np.random.default_rng(12)
    cover_mean = cover_diff = 0
    for _ in range(200):
        a = rng.normal(20.0, 1.5, size=3)
        b = rng.normal(18.5, 0.7, size=3)
        _, lo, hi = t_interval(a)
        cover_mean += lo <= 20.0 <= hi
        _, lo, hi = welch_interval(a, b)
        cover_diff += lo <= 1.5 <= hi
    sd = np.sqrt(200 * 0.95 * 0.05)
    assert abs(cover_mean - 190) <= 3 * sd, cover_mean
    assert abs(cover_diff - 190) <= 3 * sd, cover_diff
    # and a degenerate case: no seed variance, an interval of width zero
    assert welch_interval([3, 3], [1, 1]) == (2.0, 2.0, 2.0)


@pytest.mark.slow
def test_compare_finds_the_real_difference_and_not_the_null(study, tmp_path):
    root, runs = study
    out = tmp_path / "cmp"
    rc = cli.main(["compare", *map(str, runs.values()), "--baseline", "base", "--samples", "1000",
                   "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "compare.json").read_text())
    assert res["baseline"] == "base" and sorted(res["configs"]) == ["base", "better", "copy", "noise"]
    assert res["configs"]["better"]["seeds"] == ["1", "2", "3"]
    for t, row in res["tasks"].items():
        better, copy, noise = (row["configs"][c]["bleu"] for c in ("better", "copy", "noise"))
        if SIZES[t] in (900, 800):                       # same quality as the base on the medium bucket
            assert better["verdict"] == "tie", (t, better)
        else:
            assert better["verdict"] == "win" and better["p"] < 0.01 and better["diff"]["low"] > 0, (t, better)
            assert better["p_holm"] < 0.05 and better["p_holm"] >= better["p"]
        assert copy["p"] == 1.0 and copy["diff"]["mean"] == 0.0 and copy["diff"]["low"] < 0 < copy["diff"]["high"]
        assert copy["verdict"] == "tie"
        # the reported interval is the t-interval of the seeds' sacrebleu scores
        assert better["per_seed"] == pytest.approx([score(
            (runs[("better", s)] / "eval" / f"hyp.test.{t}.txt").read_text().splitlines(),
            (res_refs := _refs(runs[("better", s)], t)), t.split("-")[1])[0] for s in (1, 2, 3)])
        assert len(res_refs) == N_SENT
        m, lo, hi = t_interval(better["per_seed"])
        assert (better["mean"], better["low"], better["high"]) == pytest.approx((m, lo, hi))
    # the same system drawn afresh: significant on at most one of 6 languages (5 % each)
    assert sum(row["configs"]["noise"]["bleu"]["verdict"] != "tie" for row in res["tasks"].values()) <= 1
    assert res["buckets"]["high"]["configs"]["better"]["bleu"]["win_tie_loss"] == [2, 0, 0]
    assert res["buckets"]["medium"]["configs"]["better"]["bleu"]["win_tie_loss"] == [0, 2, 0]
    assert res["buckets"]["all"]["configs"]["copy"]["chrf"]["win_tie_loss"] == [0, 6, 0]
    # the seed-level verdict: better on the high and low buckets, no difference where the quality is the same
    fit = res["seed_model"]["bleu"]
    assert fit["df"] == 4 * 3 - 4 and fit["df_rule"] == "runs - configurations"
    for b, want in (("high", "win"), ("low", "win"), ("medium", "tie")):
        assert fit["contrasts"]["better"][b]["verdict"] == want, (b, fit["contrasts"]["better"][b])
    assert all(fit["contrasts"]["copy"][b]["p"] > 0.99 for b in ("high", "medium", "low", "all"))
    assert res["buckets"]["high"]["configs"]["better"]["bleu"]["power"]["seeds_needed"] >= 2
    md = (out / "compare.md").read_text()
    assert "## better vs base, per language" in md and "| high | 2 |" in md and "approximate randomisation" in md
    assert "## Seed-level verdict" in md and "| better | high |" in md and "runs − configurations" in md
    assert "nrefs:1" in md and "ar:1000" in md
    assert (out / "compare.png").stat().st_size > 10_000


@pytest.mark.slow
def test_compare_prints_the_seed_level_verdict_and_recomputes_from_its_json(study, tmp_path, capsys):
    """The printed report is the mixed model's table with the seeds for 80 % power; `python -m
    massive_mt.experiments.compare --from-json` recomputes the same statistics from a compare.json alone."""
    root, runs = study
    res = run_compare([runs[(c, s)] for c in ("base", "better") for s in (1, 2, 3)], tmp_path / "a", samples=200)
    printed = capsys.readouterr().out
    assert "mixed model, run as random effect, t(4)" in printed and "seeds for 80 %" in printed
    assert __import__("re").search(r"better +high +\+", printed) and "nan" not in printed, printed
    again = recompute(tmp_path / "a" / "compare.json", tmp_path / "b")
    for m in res["metrics"]:
        for b, e in res["seed_model"][m]["contrasts"]["better"].items():
            assert again["seed_model"][m]["contrasts"]["better"][b] == pytest.approx(e, rel=1e-6, abs=1e-9)
    (tmp_path / "bad.json").write_text(json.dumps({"baseline": "base"}))
    with pytest.raises(CompareError, match="no 'metrics'"):
        recompute(tmp_path / "bad.json", tmp_path / "c")


TASKS9 = [f"l{i}" for i in range(9)]
BUCKETS9 = {t: ("high", "medium", "low")[i // 3] for i, t in enumerate(TASKS9)}


def simulate(rng, effects, seeds=3, run_sd=1.0, res_sd=0.5):
    """Per-language scores of configurations x seeds: language level + the configuration's effect in
    the language's bucket + a run (seed) effect + noise. ``effects``: {config: {bucket: effect}}."""
    level = {t: 0.4 * i for i, t in enumerate(TASKS9)}
    out = {}
    for c, eff in effects.items():
        out[c] = {t: [] for t in TASKS9}
        for _ in range(seeds):
            u = rng.normal(0, run_sd)
            for t in TASKS9:
                out[c][t].append(level[t] + eff[BUCKETS9[t]] + u + rng.normal(0, res_sd))
    return out


def test_seed_model_is_the_pooled_two_sample_t_on_run_means():
    """Balanced design, a known seed effect: the mixed model's overall contrast equals the estimate,
    standard error, interval and p of a t-test on the runs' mean scores with the variance pooled over
    all configurations (df = runs - configurations), computed here by hand; a bucket contrast is
    the difference of the bucket means; the interval covers the true effect."""
    from scipy import stats

    rng = np.random.default_rng(3)
    truth = {"base": {"high": 0.0, "medium": 0.0, "low": 0.0}, "up": {"high": 4.0, "medium": 4.0, "low": 4.0},
             "same": {"high": 0.0, "medium": 0.0, "low": 0.0}}
    scores = simulate(rng, truth, seeds=4)
    fit = seed_model(scores, BUCKETS9, "base")
    means = {c: np.array([np.mean([scores[c][t][k] for t in TASKS9]) for k in range(4)]) for c in scores}
    df = 3 * 4 - 3
    mse = sum(((m - m.mean()) ** 2).sum() for m in means.values()) / df
    se = np.sqrt(mse * (1 / 4 + 1 / 4))
    for c in ("up", "same"):
        d = means[c].mean() - means["base"].mean()
        p = 2 * stats.t.sf(abs(d / se), df)
        q = stats.t.ppf(0.975, df)
        got = fit["contrasts"][c]["all"]
        assert got["mean"] == pytest.approx(d, abs=1e-6)
        assert got["se"] == pytest.approx(se, rel=2e-3)
        assert (got["low"], got["high"], got["p"]) == pytest.approx((d - q * se, d + q * se, p), rel=5e-3, abs=1e-4)
        assert got["low"] <= truth[c]["high"] <= got["high"]             # the same effect in every bucket
        for b in ("high", "medium", "low"):
            members = [t for t in TASKS9 if BUCKETS9[t] == b]
            bd = np.mean([scores[c][t] for t in members]) - np.mean([scores["base"][t] for t in members])
            assert fit["contrasts"][c][b]["mean"] == pytest.approx(bd, abs=1e-6)
    assert fit["df"] == df and fit["runs"] == 12 and fit["observations"] == 3 * 4 * 9
    assert fit["contrasts"]["up"]["all"]["p_holm"] < 0.05 < fit["contrasts"]["same"]["all"]["p_holm"]
    assert fit["run_variance"] > 0.3                          # the seed effect (variance 1) is found
    # one language: one score per run, the model is scipy's two-sample t-test
    one = seed_model({c: {"l0": scores[c]["l0"]} for c in ("base", "up")}, {"l0": "high"}, "base")
    t = stats.ttest_ind(scores["up"]["l0"], scores["base"]["l0"])
    assert (one["contrasts"]["up"]["all"]["t"], one["contrasts"]["up"]["all"]["p"]) == pytest.approx((t.statistic, t.pvalue))


@pytest.mark.slow
def test_seed_model_type_one_error_is_nominal():
    """200 simulated null studies (2 configurations x 3 seeds x 9 languages, seed effect as large as
    the noise): the overall contrast and a bucket's reject at p < 0.05 in 5 % of them within a
    99.9 % binomial band; the same statistic referred to the normal distribution (MixedLM's own z-intervals, or
    degrees of freedom counted in observations) rejects more often."""
    from scipy import stats

    rng = np.random.default_rng(11)
    null = {c: {"high": 0.0, "medium": 0.0, "low": 0.0} for c in ("base", "sys")}
    reject = reject_normal = reject_bucket = 0
    for _ in range(200):
        fit = seed_model(simulate(rng, null), BUCKETS9, "base")["contrasts"]["sys"]
        e = fit["all"]
        reject += e["p"] < 0.05
        reject_normal += 2 * stats.norm.sf(abs(e["t"])) < 0.05
        reject_bucket += fit["low"]["p"] < 0.05
    lo, hi = stats.binom.interval(0.999, 200, 0.05)
    assert lo <= reject <= hi, reject
    assert lo <= reject_bucket <= hi, reject_bucket          # a bucket's contrast too
    # P(|t_4| > 1.96) = 0.12: about 24 of 200
    assert reject_normal >= reject + 5, (reject, reject_normal)


def test_holm_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(2)
    for p in ([0.01, 0.04, 0.03, 0.005, 0.2, 0.03], rng.uniform(0, 0.2, size=17), [0.5]):
        assert holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))
    assert holm([]) == []


def test_seeds_for_power_on_a_known_case():
    """The power of a two-sided two-sample t-test by hand (noncentral t, df 2n-2, noncentrality
    d sqrt(n/2)): at 3 seeds for the observed effect, and the fewest seeds that reach 0.8."""
    from scipy import stats

    base = [5.43, 5.38, 5.45]
    system = [5.36, 5.34, 5.42]
    got = seeds_for_power(system, base)
    sd = np.sqrt((np.var(base, ddof=1) + np.var(system, ddof=1)) / 2)
    d = abs(np.mean(system) - np.mean(base)) / sd

    def power(n):
        df, nc = 2 * n - 2, d * np.sqrt(n / 2)
        q = stats.t.ppf(0.975, df)
        return stats.nct.sf(q, df, nc) + stats.nct.cdf(-q, df, nc)

    assert got["effect_size"] == pytest.approx(d) and got["sd_pooled"] == pytest.approx(sd)
    assert got["power_now"] == pytest.approx(power(3), abs=1e-4)
    n = next(n for n in range(2, 1000) if power(n) >= 0.8)
    assert got["seeds_needed"] == n and power(3) < 0.8
    assert seeds_for_power([1.0, 1.0], [1.0, 1.0])["seeds_needed"] is None       # no variance: no figure
    huge = seeds_for_power([10.0, 10.1], [0.0, 0.1])                           # d = 141
    assert huge["seeds_needed"] == 2 and huge["power_now"] == 1.0


def _refs(run, task):
    tasks = json.loads((run / "eval" / "results.json").read_text())["tasks"]
    return (__import__("pathlib").Path(next(r for r in tasks if r["task"] == task)["test_set"]["reference"])
            .read_text().splitlines())


def _fails(capsys, args, *expected):
    rc = cli.main(["compare", *map(str, args), "--samples", "100", "--out", str(args[0].parent / "out")])
    err = capsys.readouterr().err
    assert rc == 2, err
    for e in expected:
        assert str(e) in err, err
    return err


def _copy_config(runs, name, tmp_path):
    out = []
    for s in (1, 2, 3):
        dst = tmp_path / f"{name}-s{s}"
        shutil.copytree(runs[(name, s)], dst)
        out.append(dst)
    return out


def test_run_without_evaluation_is_named(study, tmp_path, capsys):
    root, runs = study
    base = _copy_config(runs, "base", tmp_path)
    shutil.rmtree(base[1] / "eval")
    _fails(capsys, [*base, runs[("better", 1)], runs[("better", 2)], runs[("better", 3)]],
           base[1], "not evaluated")
    shutil.rmtree(base[1] / "model")
    _fails(capsys, base, base[1], "training did not finish")
    _fails(capsys, [tmp_path, *base], tmp_path, "no config.yaml")


@pytest.mark.slow
def test_other_test_set_is_named(study, corpus, tmp_path, capsys):
    root, runs = study
    corpus_dir, refs, vocab = corpus
    other = tmp_path / "other-corpus"
    shutil.copytree(corpus_dir, other)
    new_refs = dict(refs)
    new_refs["en-de"] = refs["en-de"][:-1] + ["a different last sentence"]
    (other / "test.en-de.de").write_text("".join(r + "\n" for r in new_refs["en-de"]))
    odd = make_run(tmp_path, "better", 3, other, system(refs, 0.3, 7, vocab), overrides=["reconcile.method=gradvac"],
                   refs=new_refs)
    err = _fails(capsys, [runs[("base", s)] for s in (1, 2, 3)] + [runs[("better", 1)], runs[("better", 2)], odd],
                 odd, "different test set for en-de")
    assert "sha256" in err
    # a test set that changed after the evaluation: its reference file is not the one recorded
    own = tmp_path / "own-corpus"
    shutil.copytree(corpus_dir, own)
    base = [runs[("base", s)] for s in (2, 3)]
    changed = make_run(tmp_path, "base", 1, own, system(refs, 0.5, 101, vocab), refs=refs)
    assert run_compare([changed, *base], tmp_path / "ok", samples=10)["configs"]["base"]["seeds"] == ["1", "2", "3"]
    (own / "test.en-ja.ja").write_text("".join(r + "\n" for r in refs["en-ja"][::-1]))
    err = _fails(capsys, [changed, *base], changed, own / "test.en-ja.ja", "is not the reference file en-ja was "
                 "evaluated on", "the test set changed since the evaluation")
    assert "sha256" in err
    # a corpus that moved: --corpus finds the recorded reference files in their new place
    moved = tmp_path / "moved-corpus"
    shutil.copytree(corpus_dir, moved)
    res = run_compare([changed, *base], tmp_path / "moved", samples=10, corpus=str(moved))
    assert res["configs"]["base"]["seeds"] == ["1", "2", "3"]
    _fails(capsys, [changed, *base, "--corpus", tmp_path / "nowhere"], changed, "the references of en-fr cannot be read")
    # a hypothesis file that changed after the evaluation: scores no longer match the hypotheses
    hyp = changed / "eval" / "hyp.test.en-fr.txt"
    hyp.write_text("".join(r + "\n" for r in refs["en-fr"]))
    _fails(capsys, [changed, *base, "--corpus", moved], changed, "does not match its hypotheses", hyp)
    # a results.json of an older `massive-mt evaluate`, without the test-set record
    report = json.loads((changed / "eval" / "results.json").read_text())
    del report["tasks"][0]["test_set"]
    (changed / "eval" / "results.json").write_text(json.dumps(report))
    _fails(capsys, [changed, *base], changed, "records no test_set", "evaluate the run again")


@pytest.mark.slow
def test_missing_seeds_mixed_tasks_and_duplicates_are_named(study, corpus, tmp_path, capsys):
    root, runs = study
    corpus_dir, refs, vocab = corpus
    base = [runs[("base", s)] for s in (1, 2, 3)]
    err = _fails(capsys, [*base, runs[("better", 1)], runs[("better", 2)]], "'better' has 2 seed(s)",
                 runs[("better", 1)], runs[("better", 2)])
    assert "at least 2" in err
    _fails(capsys, [runs[("better", 1)], runs[("base", 1)], runs[("base", 2)]], "'better' has 1 seed(s)")
    few = make_run(tmp_path, "base", 4, corpus_dir, system(refs, 0.5, 9, vocab, TASKS[:4]), tasks=TASKS[:4], refs=refs)
    _fails(capsys, [*base, few], few, "tasks differ", "missing ['en-it', 'en-ja']")
    twin = tmp_path / "twin"
    shutil.copytree(runs[("base", 2)], twin)
    _fails(capsys, [*base, twin], twin, "same configuration and seed 2")
    _fails(capsys, [*base, runs[("better", 1)], runs[("better", 2)], runs[("better", 3)], "--baseline", "nope"],
           "'nope'")
    assert cli.main(["compare", *map(str, base), "--samples", "0"]) == 2
    assert "--samples must be >= 1" in capsys.readouterr().err


def test_tasks_without_test_sentences_are_left_out_by_name(corpus, tmp_path, capsys):
    """Tasks that `evaluate` listed as untested (a multi-way test set without sentences for them) are
    not compared; a run evaluated on fewer tasks without saying why is still refused."""
    corpus_dir, refs, vocab = corpus
    kept, gone = TASKS[:4], TASKS[4:]
    runs = [make_run(tmp_path, name, s, corpus_dir, system(refs, 0.5, 10 * s + i, vocab, kept), tasks=kept,
                     untested=gone, refs=refs, overrides=over)
            for i, (name, over) in enumerate([("a", []), ("b", ["sampling.temperature=2.0"])]) for s in (1, 2)]
    res = run_compare(runs, tmp_path / "cmp", samples=100)
    assert sorted(res["tasks"]) == sorted(kept)
    silent = make_run(tmp_path / "x", "a", 3, corpus_dir, system(refs, 0.5, 7, vocab, kept), tasks=kept, refs=refs)
    meta = silent / "model" / "massive_mt.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "tasks": TASKS}))
    _fails(capsys, [*runs[:2], silent], silent, "evaluated on tasks")


@pytest.mark.slow
def test_test_nll_is_compared_when_every_run_has_it(corpus, tmp_path, capsys):
    """Per-sentence NLL 0.2 nats per token lower on every language is a significant win (NLL: lower
    wins) with an interval below 0; a system drawn like the baseline is a tie on most languages; a
    run whose nll file no longer matches results.json is named; without NLL in every run, BLEU and
    chrF alone are compared."""
    corpus_dir, refs, vocab = corpus
    rng = np.random.default_rng(5)

    tokens = {t: rng.integers(5, 15, size=N_SENT) for t in TASKS}     # the references' token counts

    def nlls(shift):
        return {t: [(float(k * (3.0 + shift + rng.normal(0, 0.2))), int(k)) for k in tokens[t]] for t in TASKS}

    runs = {}
    for s in (1, 2, 3):
        h = system(refs, 0.5, 400 + s, vocab)
        runs[("base", s)] = make_run(tmp_path, "base", s, corpus_dir, h, refs=refs, nlls=nlls(0.0))
        runs[("lower", s)] = make_run(tmp_path, "lower", s, corpus_dir, h, refs=refs, nlls=nlls(-0.2),
                                      overrides=["reconcile.method=gradvac"])
        runs[("same", s)] = make_run(tmp_path, "same", s, corpus_dir, h, refs=refs, nlls=nlls(0.0),
                                     overrides=["sampling.temperature=2.0"])
    res = run_compare(list(runs.values()), tmp_path / "cmp", baseline="base", samples=2000)
    assert res["metrics"] == ["bleu", "chrf", "nll"]
    for t in TASKS:
        lower, same = res["tasks"][t]["configs"]["lower"]["nll"], res["tasks"][t]["configs"]["same"]["nll"]
        assert lower["verdict"] == "win" and lower["diff"]["high"] < 0 and lower["p"] < 0.01, (t, lower)
        assert res["tasks"][t]["configs"]["lower"]["bleu"]["p"] == 1.0          # the same hypotheses
    assert res["buckets"]["all"]["configs"]["lower"]["nll"]["win_tie_loss"] == [len(TASKS), 0, 0]
    assert res["buckets"]["all"]["configs"]["same"]["nll"]["win_tie_loss"][1] >= len(TASKS) - 2
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "Δ NLL" in md and "W/T/L NLL" in md
    bad = runs[("same", 3)] / "eval" / "nll.test.en-fr.tsv"
    lines = bad.read_text().splitlines()
    bad.write_text("\n".join(["999.0\t" + lines[0].split("\t")[1], *lines[1:]]) + "\n")
    _fails(capsys, list(runs.values()), runs[("same", 3)], "nll of en-fr")
    retok = {t: [(x, n + 1) for x, n in v] for t, v in nlls(0.0).items()}      # another tokenizer
    other = make_run(tmp_path / "o", "base", 4, corpus_dir, system(refs, 0.5, 9, vocab), refs=refs, nlls=retok)
    res = run_compare([*(runs[("base", s)] for s in (1, 2, 3)), other], tmp_path / "c3", samples=10)
    assert res["metrics"] == ["bleu", "chrf"] and "token counts" in res["nll_left_out"]
    plain = [make_run(tmp_path / "plain", n, s, corpus_dir, system(refs, 0.5, s, vocab), refs=refs,
                      overrides=o) for n, o in (("a", ["optim.lr=0.001"]), ("b", ["sampling.temperature=2.0"])) for s in (1, 2)]
    assert run_compare([runs[("base", 1)], runs[("base", 2)], *plain], tmp_path / "c2", samples=10)["metrics"] == \
        ["bleu", "chrf"]


def _as_nll_only(run):
    """The run as `massive-mt evaluate --metrics nll` leaves it: no hypotheses, decoded scores null."""
    path = run / "eval" / "results.json"
    report = json.loads(path.read_text())
    report["metrics"] = "nll"
    for r in report["tasks"]:
        for k in ("bleu", "chrf", "bleu_signature", "chrf_signature"):
            r[k] = None
    path.write_text(json.dumps(report))
    for h in (run / "eval").glob("hyp.*"):
        h.unlink()
    return run


@pytest.mark.slow
def test_nll_only_evaluations_compare_on_nll(corpus, tmp_path):
    """Runs evaluated with --metrics nll are compared on test NLL alone, with the same NLL figures as
    when they were decoded; NLL-only runs without NLL in common leave nothing to compare."""
    corpus_dir, refs, vocab = corpus
    rng = np.random.default_rng(7)
    tokens = {t: rng.integers(5, 15, size=N_SENT) for t in TASKS}

    def nlls(shift):
        return {t: [(float(k * (3.0 + shift + rng.normal(0, 0.2))), int(k)) for k in tokens[t]] for t in TASKS}

    runs = [make_run(tmp_path, name, s, corpus_dir, system(refs, 0.5, 40 + s, vocab), refs=refs, nlls=nlls(shift),
                     overrides=o) for name, shift, o in (("base", 0.0, []), ("lower", -0.2, ["reconcile.method=gradvac"]))
            for s in (1, 2, 3)]
    full = run_compare(runs, tmp_path / "full", baseline="base", samples=200)
    only = run_compare([_as_nll_only(r) for r in runs], tmp_path / "only", baseline="base", samples=200)
    assert only["metrics"] == ["nll"] and "--metrics nll" in only["decoded_left_out"]
    for t in TASKS:
        a, b = full["tasks"][t]["configs"]["lower"]["nll"], only["tasks"][t]["configs"]["lower"]["nll"]
        assert a["diff"] == b["diff"] and a["per_seed"] == b["per_seed"]
    assert only["seed_model"] and "BLEU" not in (tmp_path / "only" / "compare.md").read_text()


def test_off_target_rates_are_reported_per_configuration(corpus, tmp_path):
    """Off-target rates recorded by evaluate: the mean over seeds per language and configuration,
    per bucket the mean over measured languages; a language no run measured stays n/m."""
    corpus_dir, refs, vocab = corpus
    rates = {"base": {"en-fr": [0.2, 0.4], "en-de": [0.1, 0.1]}, "other": {"en-fr": [0.0, 0.2], "en-de": [0.3, 0.5]}}
    runs = []
    for name, o in (("base", []), ("other", ["reconcile.method=gradvac"])):
        for s in (1, 2):
            run = make_run(tmp_path, name, s, corpus_dir, system(refs, 0.5, 60 + s, vocab), refs=refs, overrides=o)
            path = run / "eval" / "results.json"
            report = json.loads(path.read_text())
            for r in report["tasks"]:
                r["off_target"] = rates[name].get(r["task"], [None, None])[s - 1]
            report["off_target_lid"] = "py3langid"
            path.write_text(json.dumps(report))
            runs.append(run)
    res = run_compare(runs, tmp_path / "cmp", baseline="base", samples=50)
    off = res["off_target"]
    assert off["identifier"] == ["py3langid"]
    assert off["tasks"]["en-fr"]["base"]["mean"] == pytest.approx(0.3) and off["tasks"]["en-de"]["other"]["mean"] == pytest.approx(0.4)
    unmeasured = [t for t in TASKS if t not in ("en-fr", "en-de")]
    assert all(off["tasks"][t]["base"] == {"mean": None, "seeds": 0} for t in unmeasured)
    assert off["buckets"]["all"]["other"]["mean"] == pytest.approx((0.1 + 0.4) / 2)
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "## Off-target rate" in md and "| en-fr | 30.0 | 10.0 |" in md and "n/m" in md


def test_run_compare_without_a_baseline_difference(study, tmp_path):
    """One configuration alone: its intervals, no differences (and no error)."""
    root, runs = study
    res = run_compare([runs[("base", s)] for s in (1, 2, 3)], tmp_path / "one", samples=100)
    assert list(res["configs"]) == ["base"] and "diff" not in res["tasks"]["en-fr"]["configs"]["base"]["bleu"]


@pytest.mark.slow
def test_labels_from_the_differing_fields_and_baseline_by_run(study, corpus, tmp_path):
    """Configurations with one study name (cell.json) are labelled by the fields in which they differ,
    as are runs outside a study (no cell.json); a run path names its configuration as the baseline."""
    root, runs = study
    corpus_dir, refs, vocab = corpus
    made = {}
    for s in (1, 2):
        for label, q, over in (("a", 0.5, []), ("b", 0.5, ["optim.lr=0.001"])):
            made[label, s] = make_run(tmp_path, label, s, corpus_dir, system(refs, q, 40 + s, vocab), overrides=over,
                                      refs=refs, config_name="experiment")
    res = run_compare(list(made.values()), tmp_path / "cmp", baseline=str(made["b", 2]), samples=100)
    assert sorted(res["configs"]) == ["optim.lr=0.0005", "optim.lr=0.001"]
    assert res["baseline"] == "optim.lr=0.001"
    for run in made.values():
        (run / CELL_FILE).unlink()
    res = run_compare(list(made.values()), tmp_path / "cmp", baseline=str(made["b", 2]), samples=100)
    assert sorted(res["configs"]) == ["optim.lr=0.0005", "optim.lr=0.001"]
    res = run_compare([runs[("base", s)] for s in (1, 2, 3)], tmp_path / "one", baseline=str(runs[("base", 3)]),
                      samples=100)
    assert res["baseline"] == "base"
