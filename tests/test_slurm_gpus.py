"""The sbatch templates on GPU clusters, without Slurm: run as scripts they submit themselves with the
GPUs and cores GPUS_PER_NODE asks for (slurm/submit.sh); inside a job given GPUs they pick the bf16
GPU ds_config, and stop at start when torch sees no GPU. `sbatch`, `srun` and `deepspeed` are stand-ins
on PATH that record their arguments; the real submissions are in test_slurm.py."""
import os
import subprocess
import sys

import pytest

from conftest import REPO

TEMPLATES = {"train_multi_node_srun.sbatch": "per-gpu", "train_deepspeed_slurm.sbatch": "per-gpu",
             "bench_array.sbatch": "per-gpu", "train_single_node.sbatch": "launcher",
             "study_array.sbatch": "launcher"}


def _run(tmp_path, template, env, *args):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("sbatch", "srun", "deepspeed", "scontrol"):
        (bin_dir / tool).write_text(f'#!/bin/bash\necho "{tool} $*" >> {tmp_path}/calls\n')
        (bin_dir / tool).chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    full = {**base, "PATH": f"{bin_dir}:{base['PATH']}", "PYTHON": sys.executable, "PYTHONPATH": str(REPO),
            "DS_ACCELERATOR": "cpu", **env}
    p = subprocess.run(["bash", str(REPO / "slurm" / template), *args], env=full, cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    return p, calls


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_run_as_a_script_submits_itself_with_the_gpus_asked_for(tmp_path, template):
    p, calls = _run(tmp_path, template, {"GPUS_PER_NODE": "4", "CPUS_PER_GPU": "6"}, "data.max_len=64")
    assert p.returncode == 0, p.stderr
    [call] = calls
    if TEMPLATES[template] == "per-gpu":
        request = "--gpus-per-node=4 --ntasks-per-node=4 --cpus-per-task=6"
    else:
        request = "--gpus-per-node=4 --ntasks-per-node=1 --cpus-per-task=24"
    assert call == f"sbatch {request} {REPO / 'slurm' / template} data.max_len=64"


def test_gpus_per_node_0_submits_a_cpu_job(tmp_path):
    p, calls = _run(tmp_path, "train_multi_node_srun.sbatch", {"GPUS_PER_NODE": "0", "SBATCH_ARGS": "--nodes=1"})
    assert p.returncode == 0, p.stderr
    assert calls == [f"sbatch --nodes=1 {REPO / 'slurm' / 'train_multi_node_srun.sbatch'}"]


GPU_JOB = {"SLURM_JOB_ID": "42", "SLURM_JOB_NAME": "t", "SLURM_JOB_NODELIST": "gpu01", "SLURM_JOB_NUM_NODES": "1",
           "SLURM_NTASKS": "2", "SLURM_GPUS_ON_NODE": "2", "GPUS_PER_NODE": "2", "CONFIG": ""}


@pytest.mark.slow
@pytest.mark.parametrize("template", ["train_multi_node_srun.sbatch", "train_deepspeed_slurm.sbatch",
                                      "train_single_node.sbatch"])
def test_a_gpu_job_without_a_visible_gpu_stops_at_start(tmp_path, template):
    p, calls = _run(tmp_path, template, {**GPU_JOB, "OUTPUT": str(tmp_path / "run")})
    assert p.returncode == 2
    assert "asked for 2 GPU(s) on the node (SLURM_GPUS_ON_NODE=2) but torch sees none" in p.stderr
    assert calls == []                                   # no rank was started


@pytest.mark.parametrize("gpus, ds_config", [("2", "ds_configs/zero2_bf16_gpu.json"), (None, "ds_configs/zero2.json")])
def test_the_ds_config_follows_the_gpus_of_the_job(tmp_path, gpus, ds_config):
    env = {**GPU_JOB, "OUTPUT": str(tmp_path / "run"), "PYTHON": "true"}    # `true`: the start check passes
    if gpus is None:
        env.pop("SLURM_GPUS_ON_NODE")
    p, calls = _run(tmp_path, "train_multi_node_srun.sbatch", env)
    assert p.returncode == 0, p.stderr
    [call] = calls
    assert call.startswith("srun ") and f"--ds-config {ds_config} " in call
    assert (REPO / ds_config).is_file()
