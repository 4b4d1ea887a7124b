"""Study runner: a grid of configurations x seeds, trained and evaluated one cell after another
on this machine through the real launchers, resumable, then `massive-mt compare`.

    massive-mt study --grid massive_mt/configs/study.yaml --out studies/methods
    massive-mt study --grid G --out D --cell 3      # one cell (a Slurm array element)
    massive-mt study --grid G --out D --merge       # compare the finished cells

The grid file (massive_mt/configs/study.yaml is the example) gives the experiment config every
cell shares once (`common`, sections as in an experiment YAML), per configuration a mapping of
dotted overrides (`configs`), and the options of `massive-mt evaluate` every cell is evaluated
with (`eval`); an override may not touch what must be the same in every cell (FIXED: the data and
tokenizer, the model, the number of steps, the seeds and paths). Cell (config, seed) trains with
train.seed = sampling.seed = seed into OUT/CONFIG/seedS and is evaluated data-parallel over the
same `nproc` ranks, through the same launcher, into OUT/CONFIG/seedS/eval; OUT/CONFIG/seedS/
cell.json (configuration name, seed, evaluation options) then marks it finished, and gives
`massive-mt compare` the configuration's name. Run again, the runner skips finished cells,
evaluates trained ones (and finished ones whose evaluation options the grid changed), and resumes
an interrupted one from its last checkpoint (train.resume=auto; set train.save_interval in
`common` to lose little on an interruption).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from massive_mt.engine.config import ExperimentConfig, load_config, parse_overrides
from massive_mt.errors import ConfigError
from massive_mt.experiments.compare import CELL_FILE

GRID_KEYS = ("name", "seeds", "nproc", "launcher", "ds_config", "corpus", "baseline", "eval", "common", "configs",
             "checkpoint")
FIXED = ("data.", "model.", "train.max_steps", "train.seed", "sampling.seed", "train.output_dir", "train.resume")
EVAL_KEYS = ("split", "beam", "batch_size", "max_tokens", "max_sentences", "max_new_tokens",
             "metrics")           # evaluate's options (metrics: all, or nll without decoding)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class StudyError(ConfigError):
    """A grid file that is malformed, or a study directory that does not belong to it."""


@dataclass
class Cell:
    index: int
    config: str
    seed: int
    run: Path                    # the cell's training output_dir
    cfg: ExperimentConfig


@dataclass
class Grid:
    path: Path
    seeds: list
    nproc: int
    launcher: str
    ds_config: str
    corpus: str
    baseline: Optional[str]
    eval: dict                   # EVAL_KEYS -> value, `massive-mt evaluate`'s defaults filled in
    common: dict
    configs: dict                # name -> {dotted key: value}
    checkpoint: str = "last"     # what each cell evaluates: last | best | avg:N (massive-mt export --step)


def _set(d: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[last] = value


def load_grid(path, overrides: list[str] = ()) -> Grid:
    """Read and validate a grid file; `overrides` (section.field=value) change `common`."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path}: grid file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise StudyError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise StudyError(f"{path}: top level must be a mapping")
    unknown = sorted(set(raw) - set(GRID_KEYS))
    if unknown:
        raise StudyError(f"{path}: unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(GRID_KEYS)}")
    seeds = raw.get("seeds")
    if (not isinstance(seeds, list) or len(seeds) < 2 or len(set(seeds)) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise StudyError(f"{path}: key 'seeds' must list at least 2 distinct integers (compare needs 2), got {seeds!r}")
    common = raw.get("common") or {}
    if not isinstance(common, dict):
        raise StudyError(f"{path}: key 'common' must be a mapping of config sections")
    if "eval" in common:
        raise StudyError(f"{path}: key 'common.eval': the evaluation options are the grid's top-level 'eval' "
                         f"(keys {', '.join(EVAL_KEYS)})")
    eval_opts = load_eval(path, raw.get("eval"))
    for k, v in parse_overrides(list(overrides)):
        _set(common, k, v)
    configs = raw.get("configs")
    if not isinstance(configs, dict) or not configs:
        raise StudyError(f"{path}: key 'configs' must map configuration names to their overrides")
    for name, over in configs.items():
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise StudyError(f"{path}: configuration name {name!r} must be letters, digits, '_', '.', '-'")
        if over is None:
            configs[name] = over = {}
        if not isinstance(over, dict):
            raise StudyError(f"{path}: configs.{name} must be a mapping of section.field: value")
        for key in over:
            if key.startswith("eval."):
                raise StudyError(f"{path}: configs.{name}: key '{key}' may not differ between configurations "
                                 f"(the evaluation options are the grid's top-level 'eval')")
            if any(key == f or (f.endswith(".") and key.startswith(f)) for f in FIXED):
                raise StudyError(f"{path}: configs.{name}: key '{key}' may not differ between configurations "
                                 f"(data, tokenizer, model, steps, seeds and paths are the grid's "
                                 f"'common' settings and 'seeds')")
    baseline = raw.get("baseline")
    if baseline is not None and baseline not in configs:
        raise StudyError(f"{path}: key 'baseline' = {baseline!r} is none of the configs ({', '.join(configs)})")
    for key in ("ds_config", "corpus"):
        if not isinstance(raw.get(key), str):
            raise StudyError(f"{path}: key '{key}' must be a path, got {raw.get(key)!r}")
    nproc = raw.get("nproc", 1)
    if not isinstance(nproc, int) or nproc < 1:
        raise StudyError(f"{path}: key 'nproc' must be a positive integer, got {nproc!r}")
    checkpoint = raw.get("checkpoint", "last")
    from massive_mt.engine.export import STEP_RE
    if not isinstance(checkpoint, str) or not STEP_RE.match(checkpoint) or checkpoint.isdigit() or checkpoint == "avg:0":
        raise StudyError(f"{path}: key 'checkpoint' must be last, best or avg:N (N >= 1), got {checkpoint!r}")
    return Grid(path, seeds, nproc, raw.get("launcher", "torchrun"), raw["ds_config"], raw["corpus"], baseline,
                eval_opts, common, configs, checkpoint)


def load_eval(path: Path, raw) -> dict:
    """The grid's `eval` mapping over `massive-mt evaluate`'s defaults, checked as evaluate checks them."""
    from massive_mt.evaluation.decoding import check_options
    from massive_mt.evaluation.evaluate import METRICS, build_parser

    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise StudyError(f"{path}: key 'eval' must be a mapping of evaluation options ({', '.join(EVAL_KEYS)})")
    unknown = sorted(set(raw) - set(EVAL_KEYS))
    if unknown:
        raise StudyError(f"{path}: key 'eval.{unknown[0]}' is not an evaluation option; known: {', '.join(EVAL_KEYS)}")
    parser = build_parser()
    opts = {k: raw.get(k, parser.get_default(k)) for k in EVAL_KEYS}
    opts["split"] = raw.get("split", "test")
    if opts["metrics"] not in METRICS:
        raise StudyError(f"{path}: key 'eval.metrics' must be one of {', '.join(METRICS)}, got {opts['metrics']!r}")
    if not isinstance(opts["split"], str) or not opts["split"]:
        raise StudyError(f"{path}: key 'eval.split' must be a split name such as test, got {opts['split']!r}")
    try:
        check_options(**{k: v for k, v in opts.items() if k not in ("split", "metrics")})
    except ConfigError as e:
        raise StudyError(f"{path}: key 'eval': {e}") from None
    return opts


def config_file(grid: Grid, name: str, out: Path) -> Path:
    """OUT/configs/NAME.yaml: the grid's common config with the configuration's overrides."""
    d = json.loads(json.dumps(grid.common))
    for k, v in grid.configs[name].items():
        _set(d, k, v)
    path = out / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")      # array elements write it at once
    tmp.write_text(yaml.safe_dump(d, sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


def cell_overrides(seed: int, run: Path) -> list[str]:
    return [f"train.seed={seed}", f"sampling.seed={seed}", f"train.output_dir={run}", "train.resume=auto"]


def cells(grid: Grid, out: Path) -> list[Cell]:
    """Every (configuration, seed), configuration-major; each config validated (errors name the cell)."""
    out_cells = []
    for name in grid.configs:
        path = config_file(grid, name, out)
        for seed in grid.seeds:
            run = out / name / f"seed{seed}"
            try:
                cfg = load_config(str(path), cell_overrides(seed, run))
            except ConfigError as e:
                raise StudyError(f"{grid.path}: configuration {name!r}: {e}") from None
            if grid.checkpoint == "best" and not cfg.train.valid_interval:
                raise StudyError(f"{grid.path}: configuration {name!r}: key 'checkpoint' = best needs validation: "
                                 f"set train.valid_interval (in common or the configuration)")
            out_cells.append(Cell(len(out_cells), name, seed, run, cfg))
    return out_cells


def state(cell: Cell, grid: Grid) -> str:
    """done | trained (to evaluate, or evaluate again with the grid's options) | interrupted (to
    resume) | new; StudyError when the directory holds a run of another configuration."""
    run = cell.run
    if (run / "config.yaml").is_file():
        have = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
        want = json.loads(json.dumps(cell.cfg.to_dict()))
        if have != want:
            from massive_mt.engine.config import flatten
            h, w = flatten(have), flatten(want)
            diff = sorted(k for k in set(h) | set(w) if h.get(k) != w.get(k))
            raise StudyError(f"{run}: holds a run of another configuration (field '{diff[0]}': {h.get(diff[0])!r}, "
                             f"the grid says {w.get(diff[0])!r}); remove it or use another --out")
    if (run / CELL_FILE).is_file():
        done = json.loads((run / CELL_FILE).read_text(encoding="utf-8"))
        if done.get("eval") == grid.eval and done.get("checkpoint", "last") == grid.checkpoint:
            return "done"
    meta = run / "model" / "massive_mt.json"
    if meta.is_file():
        m = json.loads(meta.read_text(encoding="utf-8"))
        if m.get("steps") == cell.cfg.train.max_steps or m.get("early_stopped"):
            return "trained"
    return "interrupted" if (run / "checkpoints" / "latest").is_file() else "new"


def launch(module: str, args: list[str], nproc: int, launcher: str) -> int:
    """Run `module` (massive_mt.train, massive_mt.evaluation.evaluate) on `nproc` local ranks; its exit status."""
    from massive_mt.launch import launch_command, launch_env

    cmd = launch_command(launcher, nproc, args, module=module)
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.call(cmd, env=launch_env(nproc))


def train(cell: Cell, grid: Grid, out: Path, nproc: int, launcher: str) -> int:
    args = ["--config", str(out / "configs" / f"{cell.config}.yaml"), "--ds-config", grid.ds_config,
            *cell_overrides(cell.seed, cell.run)]
    return launch("massive_mt.train", args, nproc, launcher)


def cell_model(cell: Cell, grid: Grid) -> Path:
    """The model the cell evaluates: the end-of-run export (`last`), or the grid's checkpoint
    exported once into RUN/model-best, RUN/model-avgN (massive-mt export)."""
    if grid.checkpoint == "last":
        return cell.run / "model"
    out = cell.run / f"model-{grid.checkpoint.replace(':', '')}"
    if not (out / "massive_mt.json").is_file():           # the export is written atomically (staged, renamed)
        from massive_mt.engine.export import export_run

        export_run(cell.run, grid.checkpoint, out)
    return out


def evaluate_cell(cell: Cell, grid: Grid, nproc: int, launcher: str) -> int:
    """Evaluate the cell's model (`cell_model`) data-parallel on `nproc` ranks, then write its cell.json."""
    args = ["--model", str(cell_model(cell, grid)), "--corpus", grid.corpus, "--out", str(cell.run / "eval")]
    for k, v in grid.eval.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    rc = launch("massive_mt.evaluation.evaluate", args, nproc, launcher)
    if rc == 0:
        tmp = cell.run / f".{CELL_FILE}.tmp"
        tmp.write_text(json.dumps({"config": cell.config, "seed": cell.seed, "grid": str(grid.path),
                                   "eval": grid.eval, "checkpoint": grid.checkpoint}), encoding="utf-8")
        os.replace(tmp, cell.run / CELL_FILE)
    return rc


def run_cell(cell: Cell, grid: Grid, out: Path, nproc: int, launcher: str) -> int:
    """Bring one cell to `done`; returns the exit status of the training or the evaluation when it
    failed (75: training stopped by a signal after a checkpoint, run again to resume)."""
    s = state(cell, grid)
    print(f"[study] cell {cell.index} {cell.config} seed {cell.seed}: {s}", file=sys.stderr, flush=True)
    if s == "done":
        return 0
    if s in ("new", "interrupted"):
        rc = train(cell, grid, out, nproc, launcher)
        if rc != 0:
            print(f"[study] cell {cell.index} {cell.config} seed {cell.seed}: training exited {rc}",
                  file=sys.stderr, flush=True)
            return rc
        if state(cell, grid) != "trained":
            raise StudyError(f"{cell.run}: training exited 0 but left no model of {cell.cfg.train.max_steps} steps")
    rc = evaluate_cell(cell, grid, nproc, launcher)
    if rc != 0:
        print(f"[study] cell {cell.index} {cell.config} seed {cell.seed}: evaluation exited {rc}",
              file=sys.stderr, flush=True)
    return rc


def merge(grid: Grid, all_cells: list[Cell], out: Path, samples: int) -> dict:
    from massive_mt.experiments.compare import run_compare

    unfinished = [f"{c.index} ({c.config} seed {c.seed}: {st})" for c in all_cells if (st := state(c, grid)) != "done"]
    if unfinished:
        raise StudyError(f"{out}: cells not finished: {', '.join(unfinished)}; run them first")
    res = run_compare([c.run for c in all_cells], out / "compare", baseline=grid.baseline, samples=samples)
    print(f"[study] {out / 'compare'}: compare.md, compare.json, compare.png", file=sys.stderr, flush=True)
    return res


def main(a) -> int:
    """`massive-mt study` (arguments from massive_mt/cli.py)."""
    grid = load_grid(a.grid, a.overrides)
    out = Path(a.out)
    all_cells = cells(grid, out)
    if a.count:
        print(len(all_cells))
        return 0
    if a.list:
        for c in all_cells:
            print(f"{c.index}\t{c.config}\tseed {c.seed}\t{state(c, grid)}\t{c.run}")
        return 0
    nproc, launcher = a.nproc or grid.nproc, a.launcher or grid.launcher
    if a.cell is not None:
        if not 0 <= a.cell < len(all_cells):
            raise StudyError(f"--cell {a.cell}: the grid has cells 0..{len(all_cells) - 1}")
        return run_cell(all_cells[a.cell], grid, out, nproc, launcher)
    if not a.merge:
        for c in all_cells:
            rc = run_cell(c, grid, out, nproc, launcher)
            if rc != 0:
                return rc
    merge(grid, all_cells, out, a.samples)
    return 0
