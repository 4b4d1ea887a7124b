"""The reports of `massive-mt compare`: the verdict summary it prints, compare.md (per bucket and per
language, with intervals, p-values, Holm corrections and power), compare.png, and compare.json."""
from __future__ import annotations

import json
import os
from pathlib import Path

from massive_mt.experiments.seed_stats import ALPHA, METRICS, NAMES, NLL

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
