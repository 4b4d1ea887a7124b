"""Shared fixtures: a small REAL corpus (gettext catalogues of one PyPI wheel, built with the
project's own builder), its data-bin, and a runner for multi-rank DeepSpeed jobs on CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dist.common import format_rank_errors, parse_result, rank_errors   # tests/dist/common.py
from massive_mt.launch import free_port

REPO = Path(__file__).resolve().parents[1]
# one small permissively licensed wheel (BSD): ~40 languages of real UI strings
TEST_WHEEL = "django-allauth==65.21.1"
# languages the training tests use: a few sizes, several scripts
TEST_LANGS = ["de", "fr", "ru", "ja"]


@pytest.fixture(scope="session")
def real_corpus(tmp_path_factory) -> Path:
    from massive_mt.data.wheels import default_cache_dir
    from massive_mt.data.catalogs import build_catalog_corpus

    out = tmp_path_factory.mktemp("corpus") / "allauth"
    build_catalog_corpus(out, wheels=[TEST_WHEEL], cache_dir=default_cache_dir(), min_pairs=100, progress=False)
    return out


@pytest.fixture(scope="session")
def data_bin(real_corpus, tmp_path_factory) -> Path:
    from massive_mt.data.binarize import encode_corpus
    from massive_mt.data.spm import train_spm

    out = tmp_path_factory.mktemp("data-bin")
    model = train_spm(real_corpus, str(out / "spm"), vocab_size=4000, temperature=5.0, seed=1)
    encode_corpus(real_corpus, model, out, workers=2)
    return out


# ----------------------------------------------------------------------------- the tiers (docs/testing.md)

# The quick tier's representatives of the distributed families: one case each of the equivalence
# suite, training (and, on the same trained run, evaluation), the ZeRO adapter, the checkpoint
# layout of a 2-rank run, and non-finite steps.
QUICK = [
    "tests/test_reconcile_distributed.py::test_sharded_equals_unsharded_fp32[2-2]",
    "tests/test_train_distributed.py::test_zero2_two_ranks_trains_and_loss_falls",
    "tests/test_evaluate.py::test_evaluate_writes_reports",
    "tests/test_zero_adapter.py::test_grad_shards_match_reference[ws2-zero2-fp32-clip]",
    "tests/test_faults.py::test_complete_checkpoint_layout",
    "tests/test_nonfinite.py::test_nonfinite_task_is_dropped_with_a_reconciler[zero2.json-2]",
]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """The quick tier, `-m quick`: every test that is neither `slow` nor `distributed`, and the
    representatives in QUICK. A test that uses `trained_run` (2-rank training) is `distributed`.
    Runs before `-m` and `-k` select, so a representative that its file no longer has is an error."""
    ids = {item.nodeid for item in items}
    files = {i.split("::")[0] for i in ids}
    missing = [q for q in QUICK if q.split("::")[0] in files and q not in ids]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py QUICK names tests that do not exist: {', '.join(missing)}")
    for item in items:
        if "trained_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.distributed)
        if item.nodeid in QUICK or not (any(item.iter_markers(name="slow")) or
                                        any(item.iter_markers(name="distributed"))):
            item.add_marker(pytest.mark.quick)


def dist_env() -> dict:
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def run_ranks(nproc: int, target: list[str], timeout: int = 600, launcher: str = "torchrun",
              check: bool = True) -> subprocess.CompletedProcess:
    """Start `nproc` local ranks of `target` (["-m", "module", args...] or ["script.py", args...])."""
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(free_port())] + target
    elif launcher == "deepspeed":
        if target[0] == "-m":
            target = ["--module"] + target[1:]
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc),
               "--master_port", str(free_port())] + target
    else:
        raise ValueError(launcher)
    p = subprocess.run(cmd, env=dist_env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if check and p.returncode != 0:
        errors = rank_errors(p.stdout)
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}\n" + (format_rank_errors(errors) if errors else
                             f"--- stdout\n{p.stdout[-6000:]}\n--- stderr\n{p.stderr[-8000:]}"))
    return p


def dist_result(p: subprocess.CompletedProcess) -> dict:
    """The RESULT payload of a tests/dist script's run (see tests/dist/common.py)."""
    return parse_result(p.stdout, p.stderr, p.returncode)


@pytest.fixture(scope="module")
def launches() -> dict:
    """The results of the shared launches of `one_launch`, per (test, world size)."""
    return {}


def one_launch(request, launches: dict, world: int, case_of, launch) -> dict:
    """{case: result} of the one launch that runs, for world size `world`, every case of the calling
    test that this session selected: `case_of(params)` names a test item's case from its parameters
    (items with another `world` parameter are left to their own launch), `launch(world, cases)` runs
    them and returns {case: result}. A failed launch fails each of its cases."""
    node = request.node
    key = (node.originalname, world)
    if key not in launches:
        cases = sorted({case_of(it.callspec.params) for it in request.session.items
                        if getattr(it, "originalname", None) == node.originalname
                        and it.callspec.params.get("world", world) == world})
        try:
            launches[key] = launch(world, cases)
        except AssertionError as e:
            launches[key] = e
    if isinstance(launches[key], AssertionError):
        pytest.fail(f"the one launch of {node.originalname} for world size {world} failed:\n{launches[key]}")
    return launches[key]


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def train_args(data_bin: Path, out: Path, ds_config: str = "zero2.json", *overrides: str) -> list[str]:
    """Arguments of massive_mt.train for the tests: tiny model, a handful of steps."""
    return ["-m", "massive_mt.train", "--ds-config", str(REPO / "ds_configs" / ds_config),
            f"data.data_bin={data_bin}", f"data.langs={json.dumps(TEST_LANGS)}", "data.max_len=48",
            "model.preset=test", "model.dropout=0.0", "sampling.tasks_per_step=2", "sampling.max_tokens=256",
            "optim.lr=3e-3", "optim.warmup_steps=5", "train.log_interval=2", "train.tensorboard=true",
            f"train.output_dir={out}", *overrides]


@pytest.fixture(scope="session")
def trained_run(data_bin, tmp_path_factory) -> Path:
    """40 steps of 2-rank ZeRO-2 training on the real corpus (shared by the training and evaluation tests)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    run_ranks(2, train_args(data_bin, out, "zero2.json", "train.max_steps=40", "train.save_interval=20",
                            "optim.lr=5e-3"))
    return out
