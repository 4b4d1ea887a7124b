"""Tables and plots from `massive-mt bench` results (JSON lines).

    massive-mt bench-report bench.jsonl [more.jsonl ...] --out bench-report/

writes `report.md` (step time and overhead ratio vs plain, time split, memory per rank, bytes
per step, plain vs a bare DeepSpeed loop) and three figures: `overhead_vs_k.png`,
`memory_vs_n.png`, `step_time_vs_n.png`. Ratios are taken only between configurations of the
same run (same `run_id`); repetitions of a configuration are pooled (all timed steps).
"""
from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from massive_mt.errors import DataError

REQUIRED = ("run_id", "method", "runner", "K", "world_size", "preset", "zero_stage", "step_s", "target_tokens",
            "parameters", "memory", "comm_bytes_per_step", "machine", "versions")


def load(paths) -> list[dict]:
    out = []
    for path in map(Path, paths):
        if not path.is_file():
            raise DataError(f"{path}: not found")
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = _older_names(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            missing = [k for k in REQUIRED if k not in rec]
            if missing:
                raise DataError(f"{path}:{i}: not a massive-mt bench record (missing {', '.join(missing)})")
            out.append(rec)
    if not out:
        raise DataError(f"{', '.join(map(str, paths))}: no benchmark records")
    return out


def _older_names(rec: dict) -> dict:
    """A record written before the runner and the memory measure had their names ('kind' both)."""
    if isinstance(rec, dict) and "runner" not in rec and "kind" in rec:
        rec["runner"] = rec.pop("kind")
        if isinstance(rec.get("memory"), dict) and "kind" in rec["memory"]:
            rec["memory"]["measure"] = rec["memory"].pop("kind")
    return rec


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4)
    return q[0], statistics.median(xs), q[2]


def summarise(records: list[dict]) -> list[dict]:
    """One row per (run, preset, N, ZeRO stage, K, method), repetitions pooled, with ratios to the
    run's `plain` row of the same K."""
    cells = defaultdict(list)
    for r in records:
        cells[(r["run_id"], r["preset"], r["world_size"], r["zero_stage"], r["K"], r["method"])].append(r)
    rows = []
    for key, recs in cells.items():
        r0 = recs[-1]
        times = [t for r in recs for t in r["step_s"]]
        q1, med, q3 = _quartiles(times)
        row = {"run_id": key[0], "preset": key[1], "N": key[2], "zero": key[3], "K": key[4], "method": key[5],
               "runner": r0["runner"], "P": r0["parameters"], "step_s": med, "q1": q1, "q3": q3, "n_steps": len(times),
               "tokens_per_s": sum(r["target_tokens"] for r in recs) / sum(sum(r["step_s"]) for r in recs),
               "peak_bytes": max(max(r["memory"]["peak_bytes"]) for r in recs), "memory_measure": r0["memory"]["measure"],
               "peak_above": max(max(r["memory"]["peak_above_start"]) for r in recs),
               "comm_bytes": r0["comm_bytes_per_step"], "comm": r0.get("comm_per_step", {})}
        for k in ("snapshot_bytes", "kpn_bytes", "local_numel", "n_groups", "allreduce_bytes", "gather_bytes"):
            if k in r0:
                row[k] = r0[k]
        if all("model_flops" in r for r in recs):     # model FLOPs per second and utilisation of the peak
            row["flops_per_s"] = sum(r["model_flops"] for r in recs) / sum(sum(r["step_s"]) for r in recs)
            peak = r0.get("peak_tflops")
            row["mfu"] = row["flops_per_s"] / key[2] / (peak * 1e12) if peak else None
        if "reconcile_s_per_step" in r0:
            row["split_ms"] = {k: 1000 * statistics.mean(r["reconcile_s_per_step"][k] for r in recs)
                               for k in r0["reconcile_s_per_step"]}
        rows.append(row)
    plain = {(r["run_id"], r["preset"], r["N"], r["zero"], r["K"]): r for r in rows if r["method"] == "plain"}
    for r in rows:
        p = plain.get((r["run_id"], r["preset"], r["N"], r["zero"], r["K"]))
        r["vs_plain"] = r["step_s"] / p["step_s"] if p else None
        r["extra_comm_bytes"] = r["comm_bytes"] - p["comm_bytes"] if p else None
    rows.sort(key=lambda r: (r["preset"], r["N"], r["zero"], r["K"], _method_order(r["method"]), r["run_id"]))
    return rows


def _method_order(method: str):
    """The order of `massive-mt bench --methods` names (plain, bare, the registered methods, cats,
    naive); granularities in order of coarseness."""
    from massive_mt.experiments.bench import method_names
    from massive_mt.reconcile.groups import GRANULARITIES

    name, _, gran = method.partition(":")
    names = method_names()
    return (names.index(name) if name in names else len(names),
            GRANULARITIES.index(gran) if gran in GRANULARITIES else -1, method)


def _mb(x) -> str:
    return "" if x is None else f"{x / 2**20:,.1f}"


def _f(x, fmt="{:.2f}") -> str:
    return "" if x is None else fmt.format(x)


def pivot(rows: list[dict]) -> str:
    """Step-time ratio to plain, one line per (preset, N, ZeRO, K), one column per method."""
    methods = sorted({r["method"] for r in rows} - {"plain"}, key=_method_order)
    cells = defaultdict(dict)
    for r in _one_per(rows, "preset", "N", "zero", "K", "method"):
        cells[(r["preset"], r["N"], r["zero"], r["K"])][r["method"]] = r
    out = ["## Step time relative to plain", "",
           "Median step time of each method / median of `plain` in the same run; plain's median in seconds.", "",
           "| preset | N | ZeRO | K | plain (s) | " + " | ".join(methods) + " |",
           "|---|---:|---:|---:|---:|" + "---:|" * len(methods)]
    for key in sorted(cells):
        c = cells[key]
        plain = c.get("plain")
        out.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {_f(plain and plain['step_s'], '{:.3f}')} | "
                   + " | ".join(_f(c[m]["vs_plain"]) if m in c else "" for m in methods) + " |")
    return "\n".join(out) + "\n\n"


def tables(rows: list[dict]) -> str:
    out = ["## Step time, throughput and overhead", "",
           "Median step time over all timed steps [quartiles]; `vs plain`: ratio of medians to the same run's "
           "`plain` at the same K; time split in ms per step (capture: copying the partition; gather: the "
           "naive baseline's all-gathers; weights: the reconciler's K x K math).", "",
           "| preset | N | ZeRO | K | method | step (s) | target tok/s | vs plain | capture | gather | Gram | "
           "all-reduce | weights | write-back |",
           "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        s = r.get("split_ms", {})
        split = [_f(s.get(k), "{:.1f}") for k in ("capture_s", "gather_s", "gram_s", "allreduce_s", "reconcile_s",
                                                    "write_back_s")]
        out.append(f"| {r['preset']} | {r['N']} | {r['zero']} | {r['K']} | {r['method']} | "
                   f"{r['step_s']:.3f} [{r['q1']:.3f}, {r['q3']:.3f}] | {r['tokens_per_s']:,.0f} | "
                   f"{_f(r['vs_plain'])} | " + " | ".join(split) + " |")
    out += ["", "## Memory per rank", "",
            "Snapshot: the per-task gradient buffers of one rank (ours: K x P/N fp32; naive: K x P). Peak: the "
            "largest per-rank peak during the timed steps (" + rows[0]["memory_measure"] + "); above start: that "
            "peak minus the memory in use before the configuration's trainer was built (model, optimizer "
            "state, gradients, activations and snapshots of this configuration).", "",
            "| preset | N | ZeRO | K | method | snapshot (MiB) | K·P/N·4 (MiB) | snapshot / K·P/N·4 | naive / ours snapshot "
            "| peak (MiB) | above start (MiB) | naive / ours above start |",
            "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    ours = {(r["run_id"], r["preset"], r["N"], r["zero"], r["K"], r["method"].split(":")[-1]): r
            for r in rows if r["method"].startswith("gradvac")}
    for r in rows:
        if "snapshot_bytes" not in r:
            continue
        ratio = peak_ratio = None
        if r["runner"] == "naive":
            gran = r["method"].split(":")[1] if ":" in r["method"] else "all_layer"
            o = ours.get((r["run_id"], r["preset"], r["N"], r["zero"], r["K"], gran))
            if o is not None:
                ratio, peak_ratio = r["snapshot_bytes"] / o["snapshot_bytes"], r["peak_above"] / o["peak_above"]
        out.append(f"| {r['preset']} | {r['N']} | {r['zero']} | {r['K']} | {r['method']} | {_mb(r['snapshot_bytes'])} | "
                   f"{_mb(r['kpn_bytes'])} | {r['snapshot_bytes'] / r['kpn_bytes']:.4f} | {_f(ratio)} | "
                   f"{_mb(r['peak_bytes'])} | {_mb(r['peak_above'])} | {_f(peak_ratio)} |")
    out += ["", "## Bytes communicated per step", "",
            "All collectives of one step as DeepSpeed's comms logger counts them (DeepSpeed's gradient "
            "reduction and parameter all-gather included); `extra vs plain`: the difference to the same run's "
            "`plain`; reconciler: the one all-reduce of the statistics as sent, against (n_groups·K² + 2K)·8 "
            "bytes; naive: the bytes its all-gathers deliver to each rank.", "",
            "| preset | N | ZeRO | K | method | bytes per step | extra vs plain | reconciler all-reduce | "
            "(n_groups·K²+2K)·8 | naive all-gather |",
            "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        expect = (r["n_groups"] * r["K"] ** 2 + 2 * r["K"]) * 8 if "n_groups" in r and r["runner"] != "naive" else None
        out.append(f"| {r['preset']} | {r['N']} | {r['zero']} | {r['K']} | {r['method']} | {r['comm_bytes']:,} | "
                   f"{_f(r['extra_comm_bytes'], '{:,}')} | {_f(r.get('allreduce_bytes') if r['runner'] != 'naive' else None, '{:,}')} | "
                   f"{_f(expect, '{:,}')} | {_f(r.get('gather_bytes') or None, '{:,}')} |")
    bare = {(r["run_id"], r["preset"], r["N"], r["zero"], r["K"]): r for r in rows if r["method"] == "bare"}
    pairs = [(r, bare[k]) for r in rows if r["method"] == "plain"
             for k in [(r["run_id"], r["preset"], r["N"], r["zero"], r["K"])] if k in bare]
    if pairs:
        out += ["", "## The trainer's plain path against a bare DeepSpeed loop", "",
                "| preset | N | ZeRO | K | plain tok/s | bare tok/s | plain / bare |", "|---|---:|---:|---:|---:|---:|---:|"]
        for p, b in pairs:
            out.append(f"| {p['preset']} | {p['N']} | {p['zero']} | {p['K']} | {p['tokens_per_s']:,.0f} | "
                       f"{b['tokens_per_s']:,.0f} | {p['tokens_per_s'] / b['tokens_per_s']:.3f} |")
    return "\n".join(out) + "\n"


def utilisation(rows: list[dict]) -> str:
    """Throughput per rank and model FLOPs utilisation (rows with model FLOPs recorded)."""
    sel = [r for r in rows if "flops_per_s" in r]
    if not sel:
        return ""
    out = ["", "## Throughput per rank and model FLOPs utilisation", "",
           "Target tokens/s and model TFLOP/s per rank over the timed steps; MFU: that rate over the "
           "accelerator's dense bf16 peak (`massive-mt bench --peak-tflops`, or the GPU's data-sheet value; "
           "empty where none is known, e.g. on CPU). Model FLOPs: `massive_mt.engine.model.train_flops`, 3 x the "
           "forward matrix products of the encoder on source tokens and of the decoder and output "
           "projection on target tokens, attention scores included, padding and recomputation excluded.", "",
           "| preset | N | ZeRO | K | method | target tok/s per rank | model TFLOP/s per rank | MFU |",
           "|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in sel:
        out.append(f"| {r['preset']} | {r['N']} | {r['zero']} | {r['K']} | {r['method']} | "
                   f"{r['tokens_per_s'] / r['N']:,.0f} | {r['flops_per_s'] / r['N'] / 1e12:.3g} | "
                   f"{_f(r['mfu'], '{:.1%}')} |")
    return "\n".join(out) + "\n"


def _one_per(rows: list[dict], *fields) -> list[dict]:
    """One row per value of `fields` (several runs of one configuration: the one with most timed steps)."""
    best = {}
    for r in rows:
        k = tuple(r[f] for f in fields)
        if k not in best or r["n_steps"] > best[k]["n_steps"]:
            best[k] = r
    return list(best.values())


def _panels(keys):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(keys), 1)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False, constrained_layout=True)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat)


def _colors(rows: list[dict]) -> dict:
    """One colour per method, the same in every panel and figure."""
    methods = sorted({r["method"] for r in rows}, key=_method_order)
    return {m: f"C{i % 10}" for i, m in enumerate(methods)}


def _n_axis(ax, rows: list[dict], title: str, ylabel: str) -> None:
    """x: ranks N on a log2 axis with the measured N as ticks; title, labels, legend."""
    ns = sorted({r["N"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("ranks N")
    ax.set_ylabel(ylabel)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def plot_overhead(rows: list[dict], out: Path) -> Path:
    from massive_mt.experiments.plots import _save

    keys = sorted({(r["preset"], r["N"], r["zero"]) for r in rows if r["vs_plain"] is not None})
    color = _colors(rows)
    fig, axes = _panels(keys)
    for ax, key in zip(axes, keys):
        sel = _one_per([r for r in rows if (r["preset"], r["N"], r["zero"]) == key and r["vs_plain"] is not None],
                       "K", "method")
        for m in sorted({r["method"] for r in sel} - {"plain"}, key=_method_order):
            pts = sorted((r["K"], r["vs_plain"]) for r in sel if r["method"] == m)
            ax.plot([k for k, _ in pts], [v for _, v in pts], marker="o", color=color[m], label=m)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{key[0]}, N={key[1]}, ZeRO-{key[2]}", fontsize=10)
        ax.set_xlabel("tasks per step K")
        ax.set_ylabel("step time / plain")
        ax.set_xticks(sorted({r["K"] for r in sel}))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("reconciliation overhead vs K (median step time ratio to plain)", fontsize=11)
    return _save(fig, out)


def plot_memory(rows: list[dict], out: Path) -> Path:
    from massive_mt.experiments.plots import _save

    sel = [r for r in rows if "snapshot_bytes" in r]
    keys = sorted({(r["preset"], r["K"]) for r in sel})
    fig, axes = _panels(keys)
    for ax, key in zip(axes, keys):
        rs = [r for r in sel if (r["preset"], r["K"]) == key]
        for label, pick, style in (("ours: snapshot", lambda r: r["runner"] != "naive", "-o"),
                                   ("naive: snapshot", lambda r: r["runner"] == "naive", "-s")):
            pts = sorted({r["N"]: r["snapshot_bytes"] for r in rs if pick(r)}.items())
            if pts:
                ax.plot([n for n, _ in pts], [b / 2**20 for _, b in pts], style, label=label)
        kpn = sorted({r["N"]: r["kpn_bytes"] for r in rs}.items())
        ax.plot([n for n, _ in kpn], [b / 2**20 for _, b in kpn], "k:", label="K·P/N·4")
        for label, pick, style in (("gradvac: peak above start", lambda r: r["method"].startswith("gradvac"), "--o"),
                                   ("naive: peak above start", lambda r: r["runner"] == "naive", "--s")):
            pts = sorted({r["N"]: r["peak_above"] for r in rs if pick(r)}.items())
            if pts:
                ax.plot([n for n, _ in pts], [b / 2**20 for _, b in pts], style, alpha=0.6, label=label)
        ax.set_yscale("log")
        _n_axis(ax, rs, f"{key[0]}, K={key[1]}", "MiB per rank")
    fig.suptitle("memory per rank vs N (snapshot buffers; peak: " + (sel[0]["memory_measure"] if sel else "") + ")",
                 fontsize=11)
    return _save(fig, out)


def plot_step_time(rows: list[dict], out: Path) -> Path:
    from massive_mt.experiments.plots import _save

    keys = sorted({(r["preset"], r["K"]) for r in rows})
    color = _colors(rows)
    fig, axes = _panels(keys)
    for ax, key in zip(axes, keys):
        rs = _one_per([r for r in rows if (r["preset"], r["K"]) == key], "N", "zero", "method")
        for m in sorted({r["method"] for r in rs}, key=_method_order):
            pts = sorted((r["N"], r["step_s"], r["q1"], r["q3"]) for r in rs if r["method"] == m)
            if len(pts) < 2:
                continue
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts],
                        yerr=[[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]], marker="o", capsize=2,
                        color=color[m], label=m)
        _n_axis(ax, rs, f"{key[0]}, K={key[1]}", "step time (s)")
    fig.suptitle("step time vs N (median, quartiles)", fontsize=11)
    return _save(fig, out)


def header(records: list[dict], paths) -> str:
    lines = ["# massive-mt benchmark report", "", f"From: {', '.join(map(str, paths))} ({len(records)} records)", ""]
    seen = set()
    for r in records:
        m, v = r["machine"], r["versions"]
        key = (r["run_id"], json.dumps(m, sort_keys=True))
        if key in seen:
            continue
        seen.add(key)
        gpu = f", {m['gpu']}" if m.get("gpu") else ""
        lines.append(f"- run {r['run_id']}: {m['node']} ({m['cpu_count']} CPUs, {m['accelerator']}{gpu}, "
                     f"{m['omp_threads']} OMP threads per rank), torch {v['torch']}, deepspeed {v['deepspeed']}; "
                     f"preset {r['preset']}, N={r['world_size']}, {r['ds_config']}, max_tokens {r.get('max_tokens')}, "
                     f"{r['steps']} timed steps after {r['warmup']} warm-up, overrides {r.get('overrides', [])}")
    return "\n".join(lines) + "\n\n"


def report(paths, out_dir) -> Path:
    records = load(paths)
    rows = summarise(records)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figs = [plot_overhead(rows, out_dir / "overhead_vs_k.png"), plot_memory(rows, out_dir / "memory_vs_n.png"),
            plot_step_time(rows, out_dir / "step_time_vs_n.png")]
    text = header(records, paths) + pivot(rows) + tables(rows) + utilisation(rows) + "\n## Figures\n\n" + "".join(
        f"![{f.stem}]({f.name})\n\n" for f in figs)
    path = out_dir / "report.md"
    tmp = path.with_name(".tmp-report.md")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
