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
    """Pairs per language, largest first: on top the totals on a log scale, each bar coloured by the
    source that gives the language most pairs; below, each language's pairs split by source."""
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
    cmap = plt.get_cmap("tab10")
    colour = {name: cmap(i % 10) for i, name in enumerate(groups)}
    x = range(len(langs))
    fig, (top, share) = plt.subplots(2, 1, figsize=(14, 6.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    main = [max(groups, key=lambda g: groups[g].get(lang, 0)) for lang in langs]
    top.bar(x, [totals[lang] for lang in langs], width=1.0, color=[colour[m] for m in main], linewidth=0)
    top.set_yscale("log")
    top.set_ylabel("unique (en, xx) pairs")
    st = manifest["stats"]
    top.set_title(f"{st['pairs']:,} pairs in {st['languages']} languages ({st['languages_ge_1k']} with ≥ 1 k, "
                  f"{st['languages_ge_10k']} with ≥ 10 k); bar colour: the language's largest source")
    for t in (1_000, 10_000):
        top.axhline(t, color="grey", linewidth=0.6, linestyle=":")
    bottom = [0.0] * len(langs)
    for name, counts in groups.items():
        frac = [counts.get(lang, 0) / totals[lang] for lang in langs]
        share.bar(x, frac, bottom=bottom, width=1.0, color=colour[name], label=name, linewidth=0)
        bottom = [b + f for b, f in zip(bottom, frac)]
    share.set_ylim(0, 1)
    share.set_ylabel("share by source")
    step = max(1, len(langs) // 50)
    share.set_xticks(list(x)[::step])
    share.set_xticklabels(langs[::step], rotation=90, fontsize=7)
    share.set_xlim(-0.5, len(langs) - 0.5)
    share.set_xlabel("language, by number of pairs")
    fig.legend(*share.get_legend_handles_labels(), ncol=len(groups), fontsize=8, loc="upper center",
               bbox_to_anchor=(0.5, 0.0), frameon=False)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, bbox_inches="tight")
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
