"""Figures and a summary of a built multi-source corpus, from its ``manifest.json``.

    python -m massive_mt.data.sources.report CORPUS --plot docs/corpus/pairs_per_language.png
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

TOP_SOURCES = 9  # coloured individually; the rest as "other"


def pairs_by_source(manifest: dict) -> dict[str, Counter]:
    """{source: {language: pairs it added}} for the languages the corpus kept."""
    kept = set(manifest["languages"])
    return {s["name"]: Counter({k: v for k, v in s["languages"].items() if k in kept}) for s in manifest["sources"]}


def plot_pairs_per_language(manifest: dict, out: Path) -> Path:
    """Stacked bars of pairs per language (log scale), languages by size, coloured by source."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_source = pairs_by_source(manifest)
    totals = Counter()
    for counts in by_source.values():
        totals.update(counts)
    langs = [lang for lang, _ in totals.most_common()]
    ranked = sorted(by_source, key=lambda s: -sum(by_source[s].values()))
    groups = {s: by_source[s] for s in ranked[:TOP_SOURCES]}
    other = Counter()
    for s in ranked[TOP_SOURCES:]:
        other.update(by_source[s])
    if other:
        groups["other"] = other
    fig, ax = plt.subplots(figsize=(14, 4.5))
    bottom = [0] * len(langs)
    x = range(len(langs))
    cmap = plt.get_cmap("tab10")
    for i, (name, counts) in enumerate(groups.items()):
        heights = [counts.get(lang, 0) for lang in langs]
        ax.bar(x, heights, bottom=[max(b, 0.8) if h else b for b, h in zip(bottom, heights)], width=1.0,
               color=cmap(i % 10), label=name, linewidth=0)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_yscale("log")
    ax.set_ylim(0.8, max(bottom) * 1.5)
    step = max(1, len(langs) // 40)
    ax.set_xticks(list(x)[::step])
    ax.set_xticklabels(langs[::step], rotation=90, fontsize=7)
    ax.set_xlim(-0.5, len(langs) - 0.5)
    ax.set_ylabel("unique (en, xx) pairs")
    st = manifest["stats"]
    ax.set_title(f"{st['pairs']:,} pairs in {st['languages']} languages "
                 f"({st['languages_ge_1k']} with ≥ 1 k, {st['languages_ge_10k']} with ≥ 10 k), by source")
    ax.legend(ncol=5, fontsize=8, loc="upper right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def summary(manifest: dict) -> str:
    """A Markdown summary: totals, held-out sets, and one row per source."""
    st = manifest["stats"]
    lines = [f"- pairs: {st['pairs']:,} in {st['languages']} languages; >= 1 k: {st['languages_ge_1k']}, "
             f">= 10 k: {st['languages_ge_10k']}, >= 100 k: {st['languages_ge_100k']}"]
    for name, t in manifest.get("test_sets", {}).items():
        cov = ", ".join(f"{n} languages {k}" for k, n in t["languages_with_at_least"].items())
        lines.append(f"- {name}: {t['english_strings']} shared English strings, {t['languages']} languages; {cov}")
    lines += ["", "| source | format | licence | languages | pairs | candidates |", "|---|---|---|---|---|---|"]
    for s in manifest["sources"]:
        lines.append(f"| {s['name']} | {s['format']} | {s['licence']} | {len(s['languages'])} | {s['pairs']:,} "
                     f"| {s['candidates']:,} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus")
    p.add_argument("--plot", help="write the pairs-per-language figure here")
    a = p.parse_args(argv)
    manifest = json.loads((Path(a.corpus) / "manifest.json").read_text(encoding="utf-8"))
    print(summary(manifest))
    if a.plot:
        print(plot_pairs_per_language(manifest, Path(a.plot)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
