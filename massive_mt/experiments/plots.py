"""Figures from a run's telemetry: the language-by-language gradient-similarity heatmap
(the GradVac paper's central analysis) and its change over training; CATS task scales
against training-data size."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from massive_mt.errors import DataError


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        hint = " (train with reconcile.method other than 'plain' to log it)" if path.name == "reconcile.jsonl" else ""
        raise DataError(f"{path}: not found{hint}")
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i}: not valid JSON ({e.msg})") from None
    if not out:
        raise DataError(f"{path}: no records")
    return out


def cosine_matrices(records: list[dict], group: str) -> np.ndarray:
    """[n_records, T, T] cosines of `group` ('model' or a logged group name), NaN where a pair never met."""
    if group == "model":
        mats = [r["cos_model"] for r in records]
    else:
        groups = records[0]["groups"]
        if group not in groups:
            raise DataError(f"group {group!r} not logged; groups: model, {', '.join(groups)}")
        if "cos_groups" not in records[0]:
            raise DataError("per-group cosines were not logged (too many groups x tasks); use group 'model'")
        g = groups.index(group)
        mats = [r["cos_groups"][g] for r in records]
    return np.array([[[np.nan if v is None else v for v in row] for row in m] for m in mats], dtype=float)


def similarity_windows(records: list[dict], group: str, windows: int):
    """Average T x T cosine matrices over `windows` consecutive spans of the records.

    Returns (tasks, [(first_step, last_step, matrix with NaN where a pair never met)]).
    """
    tasks = records[0]["tasks"]
    arr = cosine_matrices(records, group)
    spans = np.array_split(np.arange(len(records)), max(1, min(windows, len(records))))
    out = []
    for span in spans:
        with warnings.catch_warnings():          # pairs that never met stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            m = np.nanmean(arr[span], axis=0) if np.isfinite(arr[span]).any() else arr[span][0]
        out.append((records[span[0]]["from_step"], records[span[-1]]["step"], m))
    return tasks, out


def cluster_order(m: np.ndarray) -> np.ndarray:
    """Leaf order of average-linkage clustering on 1 - cosine (pairs never seen count as 0)."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    if len(m) < 3:
        return np.arange(len(m))
    sim = np.nan_to_num((m + m.T) / 2, nan=0.0)
    dist = np.clip(1.0 - sim, 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    return leaves_list(linkage(squareform(dist, checks=False), method="average"))


def plot_similarity(run_dir: Path, out: Path, group: str = "model", windows: int = 3,
                    tasks: Optional[list[str]] = None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_jsonl(Path(run_dir) / "reconcile.jsonl")
    names, spans = similarity_windows(records, group, windows)
    keep = np.arange(len(names)) if tasks is None else np.array([names.index(t) for t in tasks])
    order = keep[cluster_order(spans[-1][2][np.ix_(keep, keep)])]
    labels = [names[i].split("-", 1)[1] if names[i].startswith("en-") else names[i] for i in order]
    vmax = max(0.05, float(np.nanmax(np.abs([np.where(np.eye(len(names), dtype=bool), np.nan, m)
                                               for _, _, m in spans]))))
    n = len(spans)
    fig = plt.figure(figsize=(4.2 * n + 1, 4.2 + 2.6))
    grid = fig.add_gridspec(2, n, height_ratios=[4.2, 2.0])
    for k, (a, b, m) in enumerate(spans):
        ax = fig.add_subplot(grid[0, k])
        sub = m[np.ix_(order, order)].copy()
        np.fill_diagonal(sub, np.nan)
        im = ax.imshow(sub, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
        ax.set_title(f"steps {a}-{b}", fontsize=9)
        size = 6 if len(labels) <= 40 else 4
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=size)
        ax.set_yticks(range(len(labels)), labels if k == 0 else [], fontsize=size)
    fig.colorbar(im, ax=fig.axes, shrink=0.6, label="cosine similarity of task gradients")
    ax = fig.add_subplot(grid[1, :])
    steps = [r["step"] for r in records]
    allm = cosine_matrices(records, group)
    off = ~np.eye(len(names), dtype=bool)
    with warnings.catch_warnings():              # a record where no pair met gives NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        ax.plot(steps, [np.nanmean(m[off]) for m in allm], label="mean over language pairs")
        ax.fill_between(steps, [np.nanpercentile(m[off], 10) for m in allm],
                        [np.nanpercentile(m[off], 90) for m in allm], alpha=0.25, label="10-90th percentile")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("step")
    ax.set_ylabel("cosine")
    ax.legend(fontsize=8)
    fig.suptitle(f"gradient similarity between languages ({group}), ordered by clustering", fontsize=11)
    return _save(fig, Path(out))


def _save(fig, out: Path) -> Path:
    """Write the figure to a temporary name, then rename it into place."""
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(".tmp-" + out.name)
    fig.savefig(tmp, dpi=120, bbox_inches="tight", format=out.suffix.lstrip(".") or "png")
    plt.close(fig)
    tmp.replace(out)
    return out


def task_scale_history(run_dir: Path):
    """(tasks, steps, alpha [n_records, T], lam [n_records], train sentences per task) of a CATS run."""
    run_dir = Path(run_dir)
    records = [r for r in read_jsonl(run_dir / "reconcile.jsonl") if "cats" in r]
    if not records:
        raise DataError(f"{run_dir / 'reconcile.jsonl'}: no CATS records (train with reconcile.method: cats)")
    start = next((r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("event") == "start"), None)
    if start is None:
        raise DataError(f"{run_dir / 'metrics.jsonl'}: no start record with the training-set sizes")
    tasks = records[0]["tasks"]
    sizes = np.array([start["train_sentences"][t] for t in tasks], dtype=float)
    alpha = np.array([r["cats"]["alpha"] for r in records], dtype=float)
    lam = np.array([r["cats"]["lam"] for r in records], dtype=float)
    return tasks, np.array([r["step"] for r in records]), alpha, lam, sizes


def plot_task_scales(run_dir: Path, out: Path) -> Path:
    """CATS at a glance: each language's scale over training (coloured by its training-set size),
    the multiplier lam, and the final scales against training-set size (T * alpha: 1 = uniform)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, steps, alpha, lam, sizes = task_scale_history(run_dir)
    T = len(tasks)
    colours = plt.cm.viridis(np.interp(np.log10(sizes), (np.log10(sizes).min(), np.log10(sizes).max() + 1e-9), (0, 1)))
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(16, 4.6), layout="constrained")
    for t in range(T):
        a1.plot(steps, T * alpha[:, t], color=colours[t], lw=1)
    a1.axhline(1.0, color="k", lw=0.5, ls="--")
    a1.set(xlabel="step", ylabel="T x alpha (1 = uniform)", title="task scales over training")
    sm = plt.cm.ScalarMappable(cmap="viridis", norm=matplotlib.colors.LogNorm(sizes.min(), max(sizes.max(), sizes.min() + 1)))
    fig.colorbar(sm, ax=a1, label="training sentences")
    a2.plot(steps, lam, color="tab:red")
    a2.set(xlabel="step", ylabel="lam", title="curvature multiplier")
    a3.scatter(sizes, T * alpha[-1], c=colours, s=18)
    for t in range(T):
        a3.annotate(tasks[t].replace("en-", "").replace("-en", ""), (sizes[t], T * alpha[-1, t]), fontsize=6,
                    xytext=(2, 2), textcoords="offset points")
    a3.axhline(1.0, color="k", lw=0.5, ls="--")
    a3.set_xscale("log")
    a3.set(xlabel="training sentences", ylabel="T x alpha", title=f"scales at step {steps[-1]} vs data size")
    fig.suptitle("CATS task scales", fontsize=11)
    return _save(fig, Path(out))
