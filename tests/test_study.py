"""`massive-mt study`: grid validation, and a real 1-rank study that skips finished cells,
resumes an interrupted one from its checkpoint and evaluates every cell through the launcher."""
import json
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, dist_env, read_metrics, train_args
from massive_mt import cli
from massive_mt.experiments import study as study_mod
from massive_mt.engine.config import load_config


def write_grid(path, corpus="corpus", **changes):
    grid = {"seeds": [1, 2], "nproc": 1, "launcher": "torchrun", "ds_config": str(REPO / "ds_configs" / "zero2.json"),
            "corpus": str(corpus), "baseline": "plain", "eval": {"beam": 1, "max_sentences": 4, "max_new_tokens": 8},
            "common": {"train": {"max_steps": 4, "save_interval": 2, "keep_last": 2, "log_interval": 2}},
            "configs": {"plain": {}}}
    grid.update(changes)
    path.write_text(yaml.safe_dump(grid))
    return path


def study(grid, out, *args, overrides=()):
    return subprocess.run([sys.executable, "-m", "massive_mt.cli", "study", "--grid", str(grid), "--out", str(out),
                           *args, *overrides], env=dist_env(), cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.mark.distributed
def test_study_skips_finished_cells_and_resumes_an_interrupted_one(data_bin, real_corpus, tmp_path):
    out = tmp_path / "study"
    grid = write_grid(tmp_path / "grid.yaml", real_corpus)
    # the training settings of the test fixtures, as overrides of the grid's common config
    over = [o for o in train_args(data_bin, out)[4:] if not o.startswith("train.output_dir=")]
    over.append("train.tensorboard=false")
    p = study(grid, out, "--cell", "1", overrides=over)
    assert p.returncode == 0, p.stderr[-4000:]
    cell = out / "plain" / "seed2"
    assert (cell / "cell.json").is_file() and (cell / "eval" / "results.json").is_file()
    # evaluated by the launcher's ranks with the grid's eval options
    assert "--nproc_per_node 1" in p.stderr and "-m massive_mt.evaluation.evaluate" in p.stderr
    report = json.loads((cell / "eval" / "results.json").read_text())
    assert report["speed"]["world_size"] == 1 and report["beam"] == 1 and report["max_sentences"] == 4
    assert all(t["test_set"]["sentences"] == 4 for t in report["tasks"])
    assert json.loads((cell / "cell.json").read_text()) == {
        "config": "plain", "seed": 2, "grid": str(grid),
        "eval": {"split": "test", "beam": 1, "batch_size": 64, "max_tokens": 4096, "max_sentences": 4,
                 "max_new_tokens": 8, "metrics": "all"}, "checkpoint": "last"}
    assert sorted(x.name for x in (cell / "checkpoints").iterdir() if x.is_dir()) == ["step2", "step4"]
    assert not (out / "plain" / "seed1").exists()
    # interrupted after the step-2 checkpoint: what a kill during steps 3-4 leaves
    for x in ("cell.json", "eval", "model", "checkpoints/step4"):
        shutil.rmtree(cell / x) if (cell / x).is_dir() else (cell / x).unlink()
    (cell / "checkpoints" / "latest").write_text("step2")
    assert study(grid, out, "--list", overrides=over).stdout.split("\n")[1].split("\t")[3] == "interrupted"

    p = study(grid, out, "--samples", "200", overrides=over)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "cell 0 plain seed 1: new" in p.stderr and "cell 1 plain seed 2: interrupted" in p.stderr
    starts = [r for r in read_metrics(cell) if r.get("event") == "start"]
    assert [s["resumed_from_step"] for s in starts] == [0, 2] and starts[-1]["world_size"] == 1
    assert json.loads((cell / "model" / "massive_mt.json").read_text())["steps"] == 4
    cfg = yaml.safe_load((cell / "config.yaml").read_text())
    assert cfg["train"]["seed"] == cfg["sampling"]["seed"] == 2 and "name" not in cfg
    res = json.loads((out / "compare" / "compare.json").read_text())
    assert res["configs"]["plain"]["seeds"] == ["1", "2"] and (out / "compare" / "compare.md").is_file()

    before = {c: (c / "metrics.jsonl").read_text() for c in (out / "plain" / "seed1", cell)}
    p = study(grid, out, "--samples", "200", overrides=over)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "seed 1: done" in p.stderr and "seed 2: done" in p.stderr and "+ " not in p.stderr
    assert before == {c: (c / "metrics.jsonl").read_text() for c in before}


@pytest.mark.parametrize("changes, message", [
    ({"configs": {"plain": {}, "a": {"data.langs": ["de"]}}}, "configs.a: key 'data.langs' may not differ"),
    ({"configs": {"plain": {}, "a": {"model.preset": "tiny"}}}, "key 'model.preset' may not differ"),
    ({"configs": {"plain": {}, "a": {"train.max_steps": 8}}}, "key 'train.max_steps' may not differ"),
    ({"configs": {"plain": {}, "a": {"eval.beam": 4}}}, "key 'eval.beam' may not differ"),
    ({"common": {"eval": {"beam": 4}}}, "key 'common.eval': the evaluation options are the grid's top-level 'eval'"),
    ({"eval": {"beem": 4}}, "key 'eval.beem' is not an evaluation option"),
    ({"eval": {"beam": 0}}, "key 'eval': --beam must be an integer >= 1"),
    ({"eval": {"split": 3}}, "key 'eval.split' must be a split name"),
    ({"eval": {"metrics": "bleu"}}, "key 'eval.metrics' must be one of all, nll"),
    ({"checkpoint": "latest"}, "key 'checkpoint' must be last, best or avg:N (N >= 1), got 'latest'"),
    ({"checkpoint": "avg:0"}, "key 'checkpoint' must be last, best or avg:N"),
    ({"checkpoint": "best"}, "configuration 'plain': key 'checkpoint' = best needs validation: set train.valid_interval"),
    ({"configs": {"plain": {}, "a": {"name": "a"}}}, "field 'name': unknown field"),
    ({"configs": {"plain": {}, "a": {"reconcile.beta": 0.1}}}, "renamed to 'reconcile.ema_rate'"),
    ({"configs": {"plain": {}, "a": {"sampling.seed": 4}}}, "key 'sampling.seed' may not differ"),
    ({"configs": {"plain": {}, "a": {"optim.lr": -1.0}}}, "field 'optim.lr': input should be greater than 0"),
    ({"configs": {"plain": {}, "a/b": {}}}, "configuration name 'a/b'"),
    ({"seeds": [1]}, "key 'seeds' must list at least 2"),
    ({"baseline": "nope"}, "key 'baseline' = 'nope'"),
    ({"steps": 3}, "unknown key(s) 'steps'"),
])
def test_grid_validation_names_the_key(tmp_path, capsys, changes, message):
    grid = write_grid(tmp_path / "grid.yaml", **changes)
    rc = cli.main(["study", "--grid", str(grid), "--out", str(tmp_path / "out"), "--count"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and str(grid) in err, err


def test_study_refuses_foreign_runs_unfinished_merges_and_bad_cells(tmp_path, capsys):
    grid = write_grid(tmp_path / "grid.yaml")
    out = tmp_path / "out"
    assert cli.main(["study", "--grid", str(grid), "--out", str(out), "--count"]) == 0
    assert capsys.readouterr().out.strip() == "2"
    assert cli.main(["study", "--grid", str(grid), "--out", str(out), "--cell", "2"]) == 2
    assert "--cell 2: the grid has cells 0..1" in capsys.readouterr().err
    assert cli.main(["study", "--grid", str(grid), "--out", str(out), "--merge"]) == 2
    assert "cells not finished: 0 (plain seed 1: new), 1 (plain seed 2: new)" in capsys.readouterr().err
    run = out / "plain" / "seed1"
    run.mkdir(parents=True)
    foreign = load_config(None, [f"train.output_dir={run}", "optim.lr=0.1"]).to_dict()
    (run / "config.yaml").write_text(yaml.safe_dump(foreign))
    assert cli.main(["study", "--grid", str(grid), "--out", str(out), "--list"]) == 2
    err = capsys.readouterr().err
    assert f"{run}: holds a run of another configuration" in err


def test_finished_cell_is_evaluated_again_when_the_grid_changes_its_eval_options(tmp_path, capsys):
    """cell.json records the evaluation options; another `eval` in the grid makes the cell `trained`."""
    out = tmp_path / "out"
    run = out / "plain" / "seed1"
    grid = write_grid(tmp_path / "grid.yaml")
    assert cli.main(["study", "--grid", str(grid), "--out", str(out), "--count"]) == 0
    cfg = load_config(str(out / "configs" / "plain.yaml"), study_mod.cell_overrides(1, run))
    (run / "model").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    (run / "model" / "massive_mt.json").write_text(json.dumps({"steps": 4}))
    evaluated = study_mod.load_grid(grid).eval
    (run / "cell.json").write_text(json.dumps({"config": "plain", "seed": 1, "eval": evaluated}))
    capsys.readouterr()

    def listed(g):
        assert cli.main(["study", "--grid", str(g), "--out", str(out), "--list"]) == 0
        return capsys.readouterr().out.split("\n")[0].split("\t")[3]

    assert listed(grid) == "done"
    assert listed(write_grid(tmp_path / "beam4.yaml", eval={"beam": 4, "max_sentences": 4, "max_new_tokens": 8})) \
        == "trained"


def test_a_cell_evaluates_the_grids_checkpoint_and_compare_says_which(trained_run, real_corpus, tmp_path):
    """checkpoint: avg:2 exports the mean of the last two tags once (RUN/model-avg2), the cell is
    evaluated on it, and compare reports the checkpoint each run used."""
    from massive_mt.experiments.compare import load_run

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    grid = study_mod.load_grid(write_grid(tmp_path / "grid.yaml", real_corpus, checkpoint="avg:2"))
    cell = study_mod.Cell(0, "plain", 1, run, load_config(str(run / "config.yaml")))
    model = study_mod.cell_model(cell, grid)
    assert model == run / "model-avg2"
    meta = json.loads((model / "massive_mt.json").read_text())["checkpoint"]
    assert meta["select"] == "avg:2" and meta["steps"] == [20, 40]
    assert study_mod.cell_model(cell, grid) == model                 # exported once
    assert cli.main(["evaluate", "--model", str(model), "--corpus", str(real_corpus), "--out", str(run / "eval"),
                     "--max-sentences", "2", "--beam", "1", "--max-new-tokens", "4", "--no-progress"]) == 0
    assert load_run(run).checkpoint == "avg:2 (steps 20, 40)"
