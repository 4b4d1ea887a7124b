"""Rank discovery rules (massive_mt/engine/distributed.py) on the variables each launcher sets, and a
real `mpiexec` launch. The Slurm launches (srun, the sbatch templates, srun without MPI support)
are in test_slurm.py."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from massive_mt.engine.distributed import discover, first_host
from massive_mt.errors import ConfigError
from massive_mt.engine.preemption import parse_signals

from conftest import REPO, dist_env, read_metrics, train_args

TORCHRUN = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "29500"}
SRUN_TASK = {"SLURM_JOB_ID": "123456", "SLURM_STEP_ID": "0", "SLURM_PROCID": "5", "SLURM_NTASKS": "8",
             "SLURM_LOCALID": "1", "SLURM_STEP_NODELIST": "gpu[07-09,12]", "SLURM_JOB_NODELIST": "gpu[01-12]"}
BATCH_SHELL = {"SLURM_JOB_ID": "123456", "SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0",
               "SLURM_JOB_NODELIST": "gpu[07-09,12]"}


@pytest.mark.parametrize("nodelist, host", [
    ("vm", "vm"), ("gpu[07-09,12]", "gpu07"), ("gpu[12,07-09]", "gpu12"), ("a1,b[1-2]", "a1"),
    ("b[3-4],a1", "b3"), ("rack[2-3]-n[010-011]", "rack2-n010"), ("node-1.cluster", "node-1.cluster")])
def test_first_host_of_a_slurm_node_list(nodelist, host):
    assert first_host(nodelist) == host


def test_first_host_refuses_an_unreadable_list():
    with pytest.raises(ConfigError, match="node list"):
        first_host("gpu[01-02")


def test_launcher_variables_win_even_inside_slurm():
    d = discover({**SRUN_TASK, **TORCHRUN})
    assert (d.source, d.rank, d.world_size, d.local_rank, d.master_addr, d.master_port) == \
        ("env", 3, 4, 1, "n1", 29500)


def test_srun_task_ranks_come_from_slurm():
    d = discover(SRUN_TASK)
    assert (d.source, d.rank, d.world_size, d.local_rank) == ("slurm", 5, 8, 1)
    assert d.master_addr == "gpu07" and d.master_port == 10000 + 123456 % 50000
    d = discover({**SRUN_TASK, "MASTER_ADDR": "head-node", "MASTER_PORT": "12345"})
    assert (d.master_addr, d.master_port) == ("head-node", 12345)


def test_no_launcher_is_one_process():
    d = discover({})
    assert (d.source, d.rank, d.world_size) == ("single", 0, 1)


LEAVE = """
import atexit, sys
from massive_mt.engine.distributed import init_distributed, leave
atexit.register(print, "interpreter exit ran")
rank, world = init_distributed()
import torch.distributed as tdist
print(f"joined {rank} of {world}", end="")      # buffered: leave flushes it
sys.exit(leave(7))
"""


def test_a_joined_process_leaves_without_interpreter_finalisation():
    """leave(): the group destroyed, stdout flushed, the status returned by os._exit (atexit handlers,
    where finalisation would tear down gloo's threads, do not run)."""
    env = {k: v for k, v in dist_env().items() if k != "PYTHONUNBUFFERED"}
    p = subprocess.run([sys.executable, "-c", LEAVE], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert p.returncode == 7, p.stderr[-3000:]
    assert p.stdout.endswith("joined 0 of 1")       # DeepSpeed may print its CPU build line before it
    assert "interpreter exit ran" not in p.stdout
    assert "(single discovery" in p.stderr


def test_a_process_that_never_joined_gets_its_status_back():
    from massive_mt.engine.distributed import leave
    assert leave(5) == 5


def test_one_process_in_a_many_task_allocation_is_refused():
    with pytest.raises(ConfigError, match=r"SLURM_NTASKS=8 tasks: it would train alone"):
        discover(BATCH_SHELL)
    assert discover({**BATCH_SHELL, "SLURM_NTASKS": "1"}).world_size == 1


def test_explicit_modes_name_what_is_missing():
    with pytest.raises(ConfigError, match="MASTER_ADDR, MASTER_PORT not set"):
        discover({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(ConfigError, match="not a task of an `srun` step"):
        discover(BATCH_SHELL, mode="slurm")
    with pytest.raises(ConfigError, match="MASSIVE_MT_DISCOVERY='pmi'"):
        discover({"MASSIVE_MT_DISCOVERY": "pmi"})
    with pytest.raises(ConfigError, match="SLURM_NTASKS='many' is not an integer"):
        discover({**SRUN_TASK, "SLURM_NTASKS": "many"})


def test_stop_signal_names():
    assert [s.name for s in parse_signals(["USR1", "sigterm", 12])] == ["SIGUSR1", "SIGTERM", "SIGUSR2"]
    with pytest.raises(ConfigError, match="'train.stop_signals': 'USR9'"):
        parse_signals(["USR9"])
    with pytest.raises(ConfigError, match="SIGKILL cannot be caught"):
        parse_signals(["KILL"])


@pytest.mark.distributed
def test_mpiexec_ranks_join_through_mpi4py(data_bin, tmp_path):
    """`mpiexec -n 2` (MPICH from the mpich wheel) sets no torch variables: auto mode finds MPI."""
    mpiexec = Path(sys.executable).parent / "mpiexec"
    if not mpiexec.exists():
        mpiexec = shutil.which("mpiexec")
    assert mpiexec, "mpiexec not found: the test extra installs the mpich wheel"
    out = tmp_path / "run"
    cmd = [str(mpiexec), "-n", "2", sys.executable, *train_args(data_bin, out, "zero2.json", "train.max_steps=2")]
    p = subprocess.run(cmd, env=dist_env(), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert p.returncode == 0, p.stderr[-6000:]
    joined = re.findall(r"rank (\d) of (\d) joined \((\w+) discovery", p.stderr)
    assert sorted(joined) == [("0", "2", "mpi"), ("1", "2", "mpi")], p.stderr[-3000:]
    assert read_metrics(out)[0]["world_size"] == 2
