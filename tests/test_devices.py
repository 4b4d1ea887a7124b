"""Which GPU a rank drives (massive_mt/engine/distributed.py device_index, bind_device) under the variables
Slurm, torchrun and the deepspeed launcher set, and the refusal of a GPU job that sees no GPU."""
import os

import pytest

from massive_mt.engine.distributed import (check_requested_gpus, device_index, discover, local_world_size,
                                    _gpu_list)
from massive_mt.errors import ConfigError

SRUN = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "8", "SLURM_NODEID": "1",
        "SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_STEP_TASKS_PER_NODE": "4(x2)"}


def _srun_task(localid: int, **extra) -> dict:
    return {**SRUN, "SLURM_PROCID": str(4 + localid), "SLURM_LOCALID": str(localid), **extra}


def _bind(env: dict, visible: int) -> int:
    """The rule as bind_device applies it on a CUDA node with `visible` GPUs."""
    d = discover(env)
    check_requested_gpus(env, visible)
    return device_index(d.local_rank, visible, local_world_size(env, d.source), _gpu_list(env.get("SLURM_STEP_GPUS")))


@pytest.mark.parametrize("localid", [0, 1, 2, 3])
def test_slurm_per_task_binding_drives_the_only_visible_gpu(localid):
    # --gpus-per-task=1: Slurm gives each task CUDA_VISIBLE_DEVICES with its one GPU; the step holds 4
    env = _srun_task(localid, CUDA_VISIBLE_DEVICES=str(localid), SLURM_STEP_GPUS="0,1,2,3", SLURM_GPUS_ON_NODE="4")
    assert _bind(env, visible=1) == 0


@pytest.mark.parametrize("localid", [0, 1, 2, 3])
def test_slurm_all_gpus_visible_drives_the_local_rank(localid):
    env = _srun_task(localid, CUDA_VISIBLE_DEVICES="0,1,2,3", SLURM_STEP_GPUS="0,1,2,3", SLURM_GPUS_ON_NODE="4")
    assert _bind(env, visible=4) == localid


def test_slurm_more_tasks_than_gpus_is_refused_on_every_task():
    for localid in range(4):
        env = _srun_task(localid, CUDA_VISIBLE_DEVICES="0,1", SLURM_STEP_GPUS="0,1", SLURM_GPUS_ON_NODE="2")
        with pytest.raises(ConfigError, match="4 ranks on this node but only 2 GPUs visible"):
            _bind(env, visible=2)


def test_slurm_tasks_sharing_one_gpu_are_refused():
    env = _srun_task(1, CUDA_VISIBLE_DEVICES="0", SLURM_STEP_GPUS="0", SLURM_GPUS_ON_NODE="1")
    with pytest.raises(ConfigError, match="each sees the same single GPU"):
        _bind(env, visible=1)


@pytest.mark.parametrize("local_rank", [0, 1, 2, 3])
def test_torchrun_drives_the_local_rank(local_rank):
    env = {"RANK": str(4 + local_rank), "WORLD_SIZE": "8", "LOCAL_RANK": str(local_rank), "LOCAL_WORLD_SIZE": "4",
           "MASTER_ADDR": "n1", "MASTER_PORT": "29500"}
    assert _bind(env, visible=4) == local_rank


def test_torchrun_with_more_processes_than_gpus_is_refused():
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "n1", "MASTER_PORT": "29500"}
    with pytest.raises(ConfigError, match="each sees the same single GPU"):
        _bind(env, visible=1)


@pytest.mark.parametrize("local_rank", [0, 1])
def test_deepspeed_launcher_drives_the_local_rank(local_rank):
    # deepspeed/launcher/launch.py sets LOCAL_SIZE and CUDA_VISIBLE_DEVICES to the node's GPUs
    env = {"RANK": str(local_rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(local_rank), "LOCAL_SIZE": "2",
           "CUDA_VISIBLE_DEVICES": "0,1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
           "SLURM_JOB_ID": "7", "SLURM_GPUS_ON_NODE": "2"}
    assert _bind(env, visible=2) == local_rank


def test_deepspeed_launcher_inside_slurm_with_too_few_gpus_is_refused():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3", "LOCAL_SIZE": "4", "MASTER_ADDR": "n1",
           "MASTER_PORT": "29500"}
    with pytest.raises(ConfigError, match="4 ranks on this node but only 2 GPUs visible"):
        _bind(env, visible=2)


def test_a_gpu_job_that_sees_no_gpu_refuses_to_train_on_cpu():
    env = _srun_task(0, SLURM_GPUS_ON_NODE="4", SLURM_STEP_GPUS="0,1,2,3", DS_ACCELERATOR="cpu")
    with pytest.raises(ConfigError, match=r"asked for 4 GPU\(s\) on the node .* torch sees none"):
        _bind(env, visible=0)
    with pytest.raises(ConfigError, match="asked for 4 GPUs on the node .* sees 2"):
        check_requested_gpus(env, visible=2)
    check_requested_gpus({k: v for k, v in env.items() if k != "SLURM_GPUS_ON_NODE"}, visible=0)   # a CPU job


def test_slurm_tasks_per_node_lists():
    assert local_world_size({**_srun_task(0), "SLURM_STEP_TASKS_PER_NODE": "2(x3),1", "SLURM_NODEID": "3"},
                            "slurm") == 1
    assert local_world_size({**_srun_task(0), "SLURM_STEP_TASKS_PER_NODE": "3,2(x2)", "SLURM_NODEID": "2"},
                            "slurm") == 2
    with pytest.raises(ConfigError, match="tasks-per-node list"):
        local_world_size({**_srun_task(0), "SLURM_STEP_TASKS_PER_NODE": "2(x"}, "slurm")
    assert local_world_size({"LOCAL_WORLD_SIZE": "3"}, "env") == 3
    assert local_world_size({}, "env") is None


def test_bind_device_on_cpu_ranks_keeps_the_local_rank(monkeypatch):
    """On CPU ranks (DS_ACCELERATOR=cpu, no GPU request) the device is the CPU and LOCAL_RANK is kept."""
    import torch

    import massive_mt.engine.distributed as md
    monkeypatch.setenv("LOCAL_RANK", "1")
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    monkeypatch.setattr(md, "_DEVICE", None)
    assert md.bind_device(discover(env), env) == torch.device("cpu") == md.rank_device()
    assert os.environ["LOCAL_RANK"] == "1"
