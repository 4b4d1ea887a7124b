"""Gradient similarity against language relatedness (the GradVac paper's central analysis, from
a run's telemetry): per parameter group and per span of training, Spearman's rho between the
pairwise cosines of the languages' gradients (reconcile.jsonl) and their typological distances
from URIEL (genetic, syntactic, geographic; the `urielplus` package, CC-BY-SA, data in its
wheel), with a Mantel permutation p-value: one-sided by default (the hypothesis has a direction:
similarity falls as distance grows, rho < 0), two-sided on request.

Language codes of the tasks (pt_BR, zh_Hans, sr_Latn, ...) are mapped to ISO 639-3 with
`langcodes` (pt_BR -> por, zh_Hans -> zho, a macrolanguage where URIEL has one); languages
without a code, unknown to URIEL or without features of a distance type are listed in the
report for that type, and the correlation is over the others.

    pip install massive_mt[typology]
    massive-mt relatedness RUN [--spans 3] [--permutations 999] [--group model] [--two-sided]
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from massive_mt.errors import DataError, MassiveMTError
from massive_mt.experiments.plots import _save, cosine_matrices, read_jsonl, similarity_windows

DISTANCES = ("genetic", "syntactic", "geographic")
ALTERNATIVES = ("less", "two-sided", "greater")       # scipy's words: "less" is rho < 0
INSTALL = "pip install massive_mt[typology]"


class TypologyMissing(MassiveMTError):
    """The optional typology packages (urielplus, langcodes) are not installed."""


# ----------------------------------------------------------------------------- the Mantel test

def spearman_rows(x: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spearman's rho of the vector x against each row of Y, over the entries finite in both (ties
    get average ranks, as scipy.stats.spearmanr); (rho per row, NaN where under 3 pairs or a constant
    side, and the number of pairs per row)."""
    from scipy.stats import rankdata

    ok = np.isfinite(x)[None, :] & np.isfinite(Y)
    rx = rankdata(np.where(ok, x[None, :], np.nan), axis=1, nan_policy="omit")
    ry = rankdata(np.where(ok, Y, np.nan), axis=1, nan_policy="omit")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)          # rows without pairs: NaN
        rx = rx - np.nanmean(rx, axis=1, keepdims=True)
        ry = ry - np.nanmean(ry, axis=1, keepdims=True)
        den = np.sqrt(np.nansum(rx ** 2, axis=1) * np.nansum(ry ** 2, axis=1))
        rho = np.nansum(rx * ry, axis=1) / den
    n = ok.sum(1)
    return np.where((n >= 3) & (den > 0), rho, np.nan), n


def mantel(a: np.ndarray, b: np.ndarray, permutations: int = 999, seed: int = 0,
           alternative: str = "less") -> tuple[float, float, int]:
    """Mantel test of two symmetric n x n matrices: Spearman's rho of their off-diagonal pairs and
    a permutation p-value, where each permutation relabels the languages of `b` (its rows and
    columns together) and keeps `a`: (1 + #{rho_perm <= rho}) / (1 + permutations) for
    ``alternative`` "less" (rho < 0), #{rho_perm >= rho} for "greater", #{|rho_perm| >= |rho|} for
    "two-sided". Pairs that are NaN in either matrix are left out (of every permutation's rho as
    well)."""
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    iu = np.triu_indices(len(a), k=1)
    (rho,), (n,) = spearman_rows(a[iu], b[iu][None, :])
    if not np.isfinite(rho):
        return float(rho), float("nan"), int(n)
    rng = np.random.default_rng(seed)
    perm = np.stack([rng.permutation(len(b)) for _ in range(permutations)])
    shuffled = b[perm[:, :, None], perm[:, None, :]][:, iu[0], iu[1]]
    r, _ = spearman_rows(a[iu], shuffled)
    extreme = {"less": r <= rho + 1e-12, "greater": r >= rho - 1e-12,
               "two-sided": np.abs(r) >= abs(rho) - 1e-12}[alternative]
    hits = int(np.sum(np.isfinite(r) & extreme))
    return float(rho), (1 + hits) / (1 + permutations), int(n)


# ----------------------------------------------------------------------------- languages and URIEL

def task_languages(tasks: list[str]) -> list[str]:
    """One language per task: the side that is not the pivot shared by every task."""
    sides = [t.split("-") for t in tasks]
    common = set(sides[0]).intersection(*map(set, sides[1:])) if len(sides) > 1 else {sides[0][0]}
    if not common:
        raise DataError(f"tasks {tasks} share no pivot language: relatedness pairs one language per task")
    pivot = sorted(common)[0]
    langs = [s[1] if s[0] == pivot else s[0] for s in sides]
    dup = sorted({x for x in langs if langs.count(x) > 1})
    if dup:
        raise DataError(f"languages {dup} appear in two tasks (both directions): pass --tasks with one direction")
    return langs


def _typology():
    handlers, level = list(logging.root.handlers), logging.root.level
    try:
        import langcodes
        from urielplus import urielplus
    except ImportError as e:
        raise TypologyMissing(f"the relatedness analysis needs URIEL+ and langcodes ({e.name} is not installed): "
                              f"{INSTALL}") from None
    finally:                    # undo urielplus's logging.basicConfig(level=INFO) on the root logger
        logging.root.handlers[:] = handlers
        logging.root.setLevel(level)
    return langcodes, urielplus


@contextlib.contextmanager
def _quiet():
    """urielplus logs every query at INFO on the root logger."""
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def iso639_3(code: str) -> Optional[str]:
    langcodes, _ = _typology()
    try:
        iso = langcodes.Language.get(code.replace("_", "-")).to_alpha3()
    except (ValueError, LookupError):
        return None
    return iso or None


@functools.lru_cache(maxsize=1)
def _uriel():
    _, urielplus = _typology()
    with _quiet():
        return urielplus.URIELPlus()


@functools.lru_cache(maxsize=8)
def uriel_distances(isos: tuple) -> dict:
    """{kind: (n x n matrix with NaN where URIEL cannot tell, {iso: why it is missing})} for the
    ISO 639-3 codes `isos` (None: no code), and {"family": {iso: top-level family}}."""
    u = _uriel()
    known = set(u.langs[0].tolist())
    out = {}
    present = sorted({i for i in isos if i is not None and i in known})   # pt and pt_BR: one code
    for kind in DISTANCES:
        m = np.full((len(isos), len(isos)), np.nan)
        missing = {i: ("no ISO 639-3 code" if i is None else "not in URIEL") for i in isos
                   if i is None or i not in known}
        if len(present) >= 2:
            with _quiet():
                d = np.array(u.new_distance(kind, present), dtype=float)
            d = d.reshape(len(present), len(present)) if d.ndim == 2 else np.array([[0.0, d], [d, 0.0]])
            d[d < 0] = np.nan                                    # -1: no shared features
            np.fill_diagonal(d, 0.0)
            idx = [k for k, i in enumerate(isos) if i in present]
            pos = [present.index(isos[k]) for k in idx]
            m[np.ix_(idx, idx)] = d[np.ix_(pos, pos)]
            for k, i in enumerate(present):
                if np.isnan(np.delete(d[k], k)).all():
                    missing[i] = f"no {kind} features"
        for k, i in enumerate(isos):
            if i in missing:
                m[k, :] = m[:, k] = np.nan
        out[kind] = (m, missing)
    fam = u.data[0][:, :, 0] == 1
    size = fam.sum(0)
    row = {lang: r for r, lang in enumerate(u.langs[0].tolist())}
    families = {}
    for i in present:
        feats = np.flatnonzero(fam[row[i]])
        families[i] = str(u.feats[0][feats[np.argmax(size[feats])]])[2:] if len(feats) else "isolate"
    out["family"] = families
    return out


def family_order(genetic: np.ndarray, families: list[str]) -> np.ndarray:
    """Languages grouped by family (families in order of first appearance in the clustering), within
    a family by average-linkage clustering on the genetic distance; unknown ones last."""
    from massive_mt.experiments.plots import cluster_order

    order = cluster_order(-np.nan_to_num(genetic, nan=1.0))   # cluster_order works on similarities (1 - x)
    first = {}
    for i in order:
        first.setdefault(families[i], len(first))
    return np.array(sorted(order, key=lambda i: (families[i] == "?", first[families[i]])))


# ----------------------------------------------------------------------------- the analysis

def analyse(run_dir: Path, spans: int = 3, permutations: int = 999, tasks: Optional[list[str]] = None,
            alternative: str = "less") -> dict:
    records = read_jsonl(Path(run_dir) / "reconcile.jsonl")
    names = records[0]["tasks"]
    if tasks:
        unknown = sorted(set(tasks) - set(names))
        if unknown:
            raise DataError(f"--tasks {unknown}: not tasks of this run ({', '.join(names)})")
    keep = [names.index(t) for t in (tasks or names)]
    langs = task_languages([names[i] for i in keep])
    isos = tuple(iso639_3(x) for x in langs)
    uriel = uriel_distances(isos)
    groups = ["model"] + (list(records[0]["groups"]) if "cos_groups" in records[0] else [])
    res = {"run": str(run_dir), "tasks": [names[i] for i in keep], "languages": langs,
           "iso639_3": list(isos), "families": [uriel["family"].get(i, "?") for i in isos],
           "permutations": permutations, "alternative": alternative, "pairs_total": len(keep) * (len(keep) - 1) // 2,
           "spans": [], "groups": {}, "missing": {}, "distances": {}}
    for kind in DISTANCES:
        m, missing = uriel[kind]
        res["missing"][kind] = [{"language": x, "iso639_3": i, "reason": missing[i]}
                                for x, i in zip(langs, isos) if i in missing]
        res["distances"][kind] = [[None if np.isnan(v) else float(v) for v in r] for r in m]
    for g in groups:
        _, windows = similarity_windows(records, g, spans)
        res["spans"] = [[a, b] for a, b, _ in windows]
        rows = []
        for a, b, cos in windows:
            cos = cos[np.ix_(keep, keep)]
            entry = {"steps": [a, b]}
            for kind in DISTANCES:
                rho, p, n = mantel(cos, uriel[kind][0], permutations, alternative=alternative)
                entry[kind] = {"rho": None if np.isnan(rho) else rho, "p": None if np.isnan(p) else p, "pairs": n,
                               "dropped": res["pairs_total"] - n}
            rows.append(entry)
        res["groups"][g] = rows
    return res


def _cell(e: dict) -> str:
    return "-" if e["rho"] is None else f"{e['rho']:+.2f} ({e['p']:.3f})"


SIDES = {"less": "one-sided (rho < 0: related languages have more similar gradients)",
         "greater": "one-sided (rho > 0)", "two-sided": "two-sided"}


def markdown(res: dict) -> str:
    L = [f"# Gradient similarity against language relatedness: {res['run']}", "",
         "Spearman's rho between the pairwise cosines of the languages' gradients and their URIEL "
         f"distance (negative: related languages have more similar gradients), with the {SIDES[res['alternative']]} "
         f"Mantel permutation p-value ({res['permutations']} permutations of the languages) in parentheses; "
         f"below each table the language pairs measured and dropped of {res['pairs_total']}: a pair is dropped from a span when "
         "its two tasks never shared a logged step there (no cosine) or URIEL has no distance for it.", ""]
    spans = " | ".join(f"steps {a}-{b}" for a, b in res["spans"])
    for kind in DISTANCES:
        L += [f"## {kind} distance", "", f"| group | {spans} |", "|---|" + "---:|" * len(res["spans"])]
        for g, rows in res["groups"].items():
            L.append(f"| {g} | " + " | ".join(_cell(r[kind]) for r in rows) + " |")
        L += ["", "Pairs measured / dropped: " + ", ".join(
            f"steps {a}-{b}: {r[kind]['pairs']} / {r[kind]['dropped']}"
            for (a, b), r in zip(res["spans"], res["groups"]["model"])), ""]
    L += ["## Languages URIEL lacks", ""]
    for kind in DISTANCES:
        miss = res["missing"][kind]
        L.append(f"- {kind}: " + (", ".join(f"{m['language']} ({m['iso639_3'] or '-'}: {m['reason']})" for m in miss)
                                   if miss else "none"))
    L += ["", "Languages: " + ", ".join(f"{x} ({i or '-'}, {f})" for x, i, f in
                                        zip(res["languages"], res["iso639_3"], res["families"])),
          "", "Typological data: URIEL+ (urielplus), CC-BY-SA 4.0."]
    return "\n".join(L) + "\n"


def plot(res: dict, run_dir: Path, group: str, out: Path) -> Path:
    """The run's mean cosine matrix of `group`, languages ordered by family, next to the scatter of
    cosine against each distance (one colour per span)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_jsonl(Path(run_dir) / "reconcile.jsonl")
    names = records[0]["tasks"]
    keep = [names.index(t) for t in res["tasks"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(cosine_matrices(records, group), axis=0)[np.ix_(keep, keep)]
    _, windows = similarity_windows(records, group, len(res["spans"]))
    gen = np.array([[np.nan if v is None else v for v in r] for r in res["distances"]["genetic"]])
    order = family_order(gen, res["families"])
    labels = [f"{res['languages'][i]} ({res['families'][i]})" for i in order]
    fig, axes = plt.subplots(1, 1 + len(DISTANCES), figsize=(5.2 * (1 + len(DISTANCES)), 5.2), layout="constrained")
    sub = mean[np.ix_(order, order)].copy()
    np.fill_diagonal(sub, np.nan)
    vmax = max(0.05, float(np.nanmax(np.abs(sub))) if np.isfinite(sub).any() else 0.05)
    im = axes[0].imshow(sub, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
    size = 6 if len(labels) <= 30 else 4
    axes[0].set_xticks(range(len(labels)), labels, rotation=90, fontsize=size)
    axes[0].set_yticks(range(len(labels)), labels, fontsize=size)
    axes[0].set_title(f"gradient cosine ({group}), ordered by family", fontsize=9)
    fig.colorbar(im, ax=axes[0], shrink=0.7)
    iu = np.triu_indices(len(keep), k=1)
    colours = plt.cm.viridis(np.linspace(0, 1, max(1, len(windows))))
    for ax, kind in zip(axes[1:], DISTANCES):
        d = np.array([[np.nan if v is None else v for v in r] for r in res["distances"][kind]])
        for (a, b, cos), col, stats in zip(windows, colours, res["groups"][group]):
            c = cos[np.ix_(keep, keep)]
            ax.scatter(d[iu], c[iu], s=10, color=col, label=f"steps {a}-{b}: rho {_cell(stats[kind])}")
        ax.set(xlabel=f"URIEL {kind} distance", ylabel="gradient cosine", title=kind)
        ax.legend(fontsize=6)
    fig.suptitle(f"gradient similarity against language relatedness: {Path(run_dir).name}", fontsize=10)
    return _save(fig, out)


def run_relatedness(run_dir: Path, out_dir: Path, spans: int = 3, permutations: int = 999, group: str = "model",
                    tasks: Optional[list[str]] = None, alternative: str = "less") -> Path:
    if spans < 1 or permutations < 1:
        raise DataError(f"--spans and --permutations must be >= 1, got {spans} and {permutations}")
    first = read_jsonl(Path(run_dir) / "reconcile.jsonl")[0]
    logged = ["model"] + (list(first["groups"]) if "cos_groups" in first else [])
    if group not in logged:
        raise DataError(f"--group {group!r}: not logged; groups: {', '.join(logged)}")
    res = analyse(run_dir, spans, permutations, tasks, alternative)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(res, run_dir, group, out_dir / f"relatedness_{group}.png")
    for name, text in (("relatedness.json", json.dumps(res, indent=2)), ("relatedness.md", markdown(res))):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out_dir / name)
    return out_dir
