"""`massive-mt demo`: sharded GradVac by default (all_layer, low-resource languages vaccinated),
`--method plain` one option away, and the language-similarity heatmap written next to the run."""
import json
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, TEST_LANGS, dist_env
from massive_mt.cli import DEMO_CONFIG, build_parser, demo_overrides
from massive_mt.engine.config import load_config
from massive_mt.data.tasks import resource_buckets
from massive_mt.reconcile.methods import vaccinate_ids


def demo_config(*argv):
    a = build_parser().parse_args(["demo", *argv])
    return load_config(a.config, demo_overrides(a))


def test_demo_trains_sharded_gradvac_on_the_low_resource_third():
    r = demo_config().reconcile
    assert (r.method, r.granularity, r.vaccinate) == ("gradvac", "all_layer", ["low_resource"])
    # the vaccinated languages are exactly the evaluation's `low` bucket of the demo's 18 languages
    langs = demo_config().data.langs
    assert len(langs) == 18
    sizes = {f"{lang}-en": 5000 - 250 * i for i, lang in enumerate(langs)}
    tasks = list(sizes)
    vaccinate_tasks = {tasks[i] for i in vaccinate_ids(r.vaccinate, tasks, sizes, r.low_resource_quantile)}
    assert vaccinate_tasks == {t for t, b in resource_buckets(sizes).items() if b == "low"}


@pytest.mark.parametrize("method", ["plain", "pcgrad", "cats"])
def test_demo_method_is_one_option_away(method):
    r = demo_config("--method", method).reconcile
    assert r.method == method and r.vaccinate is None
    assert demo_config("--method", method, "reconcile.method=sum").reconcile.method == "sum"    # overrides win


def test_demo_rejects_an_unknown_method_before_any_work(tmp_path, capsys):
    from massive_mt import cli
    assert cli.main(["demo", "--workdir", str(tmp_path / "w"), "--method", "gradvacc"]) == 2
    assert "reconcile.method" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


@pytest.mark.distributed
def test_demo_end_to_end_writes_the_similarity_heatmap(real_corpus, data_bin, tmp_path):
    work = tmp_path / "demo"
    work.mkdir()
    (work / "corpus").symlink_to(real_corpus)          # the demo reuses a corpus and data-bin it finds
    (work / "data-bin").symlink_to(data_bin)
    cmd = [sys.executable, "-m", "massive_mt.cli", "demo", "--workdir", str(work), "--launcher", "torchrun",
           "--beam", "1", "--eval-sentences", "4", f"data.langs={json.dumps(TEST_LANGS)}", "data.max_len=48",
           "model.preset=test", "sampling.max_tokens=256", "optim.warmup_steps=2", "train.max_steps=4",
           "train.log_interval=2", "train.valid_interval=2", "train.valid_max_sentences=8"]
    p = subprocess.run(cmd, env=dist_env(), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-6000:]
    run = work / "run"
    cfg = yaml.safe_load((run / "config.yaml").read_text())["reconcile"]
    assert (cfg["method"], cfg["granularity"], cfg["vaccinate"]) == ("gradvac", "all_layer", ["low_resource"])
    start = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert start["event"] == "start" and start["world_size"] == 2
    heatmap = run / "similarity_model.png"
    assert f"language-similarity heatmap: {heatmap}" in p.stdout.splitlines()
    assert heatmap.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and heatmap.stat().st_size > 10_000
    assert "| bucket | tasks | avg BLEU | avg chrF |" in p.stdout and "reconcile.method: gradvac;" in p.stdout
    summary = json.loads((run / "demo_summary.json").read_text())
    assert summary["method"] == "gradvac" and summary["heatmap"] == str(heatmap)
    best = summary["best"]
    assert best["step"] in (2, 4) and summary["evaluated_model"] == str(run / "model-best")
    assert f"evaluated: the best checkpoint, step {best['step']}" in p.stdout
    assert json.loads((run / "eval" / "results.json").read_text())["model"] == str(run / "model-best")
