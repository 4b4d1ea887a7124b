"""Process-group set-up for every launcher: rank discovery, in one place.

How a process learns its rank, world size, local rank and the master's address
(`MASSIVE_MT_DISCOVERY`, default `auto`):

  env    RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, as torchrun and the
         `deepspeed` launcher set them.
  slurm  one `srun` task per rank: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; the master is
         the first host of SLURM_STEP_NODELIST (SLURM_JOB_NODELIST outside a step) and the
         port is 10000 + SLURM_JOB_ID % 50000.
  mpi    mpi4py's COMM_WORLD (`mpiexec`, or `srun --mpi=pmi2` with MPICH / `--mpi=pmix` with
         Open MPI); rank 0's host name is the master; the port as for slurm inside a Slurm job,
         else a free port chosen by rank 0.
  auto   env when RANK or WORLD_SIZE is set; else slurm inside an `srun` step (SLURM_STEP_ID
         set); else mpi when an MPI launcher's variables are set (PMI_RANK, PMIX_RANK,
         OMPI_COMM_WORLD_RANK); else one process alone on a free local port.

MASTER_ADDR and MASTER_PORT, when set, replace the derived address and port (slurm, mpi).

Refused with a ConfigError rather than training alone: a world size that differs from the
number of tasks of the `srun` step (SLURM_NTASKS), which is what `srun` without MPI support
gives MPI discovery (every task a world of one); one process without a launcher inside a Slurm
allocation of several tasks; a process group whose size or rank differs from the discovered one.
"""
from __future__ import annotations

import os
import re
import socket
import sys
from dataclasses import dataclass
from typing import Mapping, Optional

from .errors import ConfigError

MODES = ("auto", "env", "slurm", "mpi")
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
MPI_LAUNCHER_VARS = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK")


@dataclass(frozen=True)
class Discovery:
    source: str             # env | slurm | mpi | single
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except KeyError:
        raise ConfigError(f"environment variable {name} is not set") from None
    except ValueError:
        raise ConfigError(f"environment variable {name}={env[name]!r} is not an integer") from None


def first_host(nodelist: str) -> str:
    """The first host of a Slurm host list: 'gpu[07-09,12],cpu1' -> 'gpu07', 'r[1-2]n[3-4]' -> 'r1n3'."""
    depth, end = 0, len(nodelist)
    for i, c in enumerate(nodelist):                 # the first entry: up to a comma outside brackets
        depth += (c == "[") - (c == "]")
        if c == "," and depth == 0:
            end = i
            break
    entry = nodelist[:end].strip()
    if not entry or entry.count("[") != entry.count("]"):
        raise ConfigError(f"cannot read the Slurm node list {nodelist!r}")
    return re.sub(r"\[([^\]]*)\]", lambda m: m.group(1).split(",")[0].split("-")[0], entry)


def slurm_port(env: Mapping[str, str]) -> int:
    """The master port of a Slurm job: MASTER_PORT if set, else 10000 + SLURM_JOB_ID % 50000."""
    if "MASTER_PORT" in env:
        return _int(env, "MASTER_PORT")
    return 10000 + _int(env, "SLURM_JOB_ID") % 50000


def discover(env: Optional[Mapping[str, str]] = None, mode: Optional[str] = None) -> Discovery:
    """This process's place in the world, from the launcher's variables (see the module doc)."""
    env = os.environ if env is None else env
    mode = mode or env.get("MASSIVE_MT_DISCOVERY", "auto")
    if mode not in MODES:
        raise ConfigError(f"MASSIVE_MT_DISCOVERY={mode!r}: must be one of {', '.join(MODES)}")
    if mode == "auto":
        if "RANK" in env or "WORLD_SIZE" in env:
            mode = "env"
        elif "SLURM_STEP_ID" in env and "SLURM_PROCID" in env:
            mode = "slurm"
        elif any(v in env for v in MPI_LAUNCHER_VARS):
            mode = "mpi"
        else:
            mode = "single"
    d = {"env": _from_env, "slurm": _from_slurm, "mpi": _from_mpi, "single": _single}[mode](env)
    _check_against_slurm(d, env)
    return d


def _from_env(env) -> Discovery:
    missing = [v for v in ENV_VARS if v not in env]
    if missing:
        raise ConfigError(f"rank discovery from the launcher's variables: {', '.join(missing)} not set "
                          f"(torchrun and the deepspeed launcher set all of {', '.join(ENV_VARS)})")
    return Discovery("env", _int(env, "RANK"), _int(env, "WORLD_SIZE"), _int(env, "LOCAL_RANK"),
                     env["MASTER_ADDR"], _int(env, "MASTER_PORT"))


def _from_slurm(env) -> Discovery:
    if "SLURM_PROCID" not in env or "SLURM_STEP_ID" not in env:
        raise ConfigError("MASSIVE_MT_DISCOVERY=slurm but this process is not a task of an `srun` step "
                          "(SLURM_PROCID / SLURM_STEP_ID not set): start one task per rank with srun")
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    if not nodes:
        raise ConfigError("rank discovery from Slurm: SLURM_STEP_NODELIST and SLURM_JOB_NODELIST are not set")
    return Discovery("slurm", _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS"), _int(env, "SLURM_LOCALID"),
                     env.get("MASTER_ADDR") or first_host(nodes), slurm_port(env))


def _from_mpi(env) -> Discovery:
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ConfigError(f"MASSIVE_MT_DISCOVERY=mpi needs mpi4py and an MPI library ({e}); "
                          f"`pip install mpi4py mpich`") from None
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    local_rank = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
    addr = env.get("MASTER_ADDR") or comm.bcast(socket.gethostname() if rank == 0 else None, root=0)
    if "MASTER_PORT" in env or "SLURM_JOB_ID" in env:
        port = slurm_port(env)
    else:
        port = comm.bcast(free_port() if rank == 0 else None, root=0)
    return Discovery("mpi", rank, world, local_rank, addr, port)


def _single(env) -> Discovery:
    return Discovery("single", 0, 1, 0, env.get("MASTER_ADDR", "127.0.0.1"),
                     _int(env, "MASTER_PORT") if "MASTER_PORT" in env else free_port())


def _check_against_slurm(d: Discovery, env) -> None:
    """Inside Slurm, ranks started by srun (slurm, mpi) must form exactly the step's tasks."""
    if "SLURM_JOB_ID" not in env or "SLURM_NTASKS" not in env:
        return
    tasks = _int(env, "SLURM_NTASKS")
    if d.source == "mpi" and "SLURM_STEP_ID" in env and d.world_size != tasks:
        raise ConfigError(
            f"MPI rank discovery found a world of {d.world_size} but this srun step started SLURM_NTASKS={tasks} "
            f"tasks: srun without MPI support gives every task a world of its own. Launch with "
            f"`srun --mpi=pmi2` (MPICH, the mpich wheel) or `srun --mpi=pmix` (Open MPI), "
            f"or use MASSIVE_MT_DISCOVERY=slurm")
    if d.source == "single" and tasks > 1:
        raise ConfigError(
            f"one process without a launcher inside a Slurm allocation of SLURM_NTASKS={tasks} tasks: it would "
            f"train alone. Start one process per task with `srun`, or a launcher (deepspeed, torchrun) "
            f"with --ntasks-per-node=1")


COLLECTIVE_TIMEOUT_S = 1800    # default of train.collective_timeout_s: torch.distributed's own default


def init_distributed(timeout_s: int = COLLECTIVE_TIMEOUT_S) -> tuple[int, int]:
    """Discover this rank, initialise torch.distributed through DeepSpeed; returns (rank, world_size).

    `timeout_s` bounds the rendezvous and every collective: a rank that waits longer for a
    stopped or wedged peer raises (gloo: "Timed out waiting ...ms"; NCCL: the watchdog aborts),
    exits non-zero, and the launcher ends the other ranks. It applies to every process group,
    the ones DeepSpeed creates for ZeRO (`new_group` without a timeout) included: torch's default
    group timeout is set to it before any group is created."""
    from datetime import timedelta

    import deepspeed
    import deepspeed.comm as dist
    import torch.distributed.distributed_c10d as c10d

    d = discover()
    os.environ.update(RANK=str(d.rank), WORLD_SIZE=str(d.world_size), LOCAL_RANK=str(d.local_rank),
                      MASTER_ADDR=d.master_addr, MASTER_PORT=str(d.master_port))
    timeout = timedelta(seconds=timeout_s)
    c10d.default_pg_timeout = timeout                # read by new_group(timeout=None) for gloo
    if c10d.default_pg_nccl_timeout is not None:     # and for NCCL where it is compiled in
        c10d.default_pg_nccl_timeout = timeout
    deepspeed.init_distributed(auto_mpi_discovery=False, timeout=timeout)
    rank, world = dist.get_rank(), dist.get_world_size()
    if (rank, world) != (d.rank, d.world_size):
        raise ConfigError(f"{d.source} rank discovery gave rank {d.rank} of {d.world_size} but the process "
                          f"group has this process as rank {rank} of {world}")
    print(f"[massive_mt] rank {rank} of {world} joined ({d.source} discovery, local rank {d.local_rank}, "
          f"master {d.master_addr}:{d.master_port})", file=sys.stderr, flush=True)
    return rank, world


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
