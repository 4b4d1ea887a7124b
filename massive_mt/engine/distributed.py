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

Device binding (`bind_device`, before the process group exists): a rank drives the GPU
`device_index` picks from its local rank and the GPUs it can see, and that index is written to
LOCAL_RANK, where DeepSpeed reads it twice (the NCCL group's `device_id` in
deepspeed/comm/torch.py and the engine's `set_device`), and made the current device, so that
every collective, the ones before an engine exists included, runs on it. `rank_device()` is that
device (the CPU on CPU ranks). A job that asked Slurm for GPUs and sees none refuses to start.
"""
from __future__ import annotations

import os
import re
import socket
import sys
from dataclasses import dataclass
from typing import Mapping, Optional

from massive_mt.errors import ConfigError
from massive_mt.launch import free_port

MODES = ("auto", "env", "slurm", "mpi")
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
MPI_LAUNCHER_VARS = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK")
_JOINED = False         # set by init_distributed: this process joined a process group (see leave)


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


def _gpu_list(value: Optional[str]) -> Optional[int]:
    """How many GPUs a Slurm GPU list names ('0,1,3' -> 3); None when unset or empty."""
    return len([v for v in value.split(",") if v.strip()]) if value else None


def _tasks_on_node(spec: str, node: int) -> int:
    """This node's entry of Slurm's tasks-per-node list: '2(x3),1' -> [2, 2, 2, 1][node]."""
    counts = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if m is None:
            raise ConfigError(f"cannot read the Slurm tasks-per-node list {spec!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    if node >= len(counts):
        raise ConfigError(f"Slurm node {node} is not in the tasks-per-node list {spec!r}")
    return counts[node]


def local_world_size(env: Mapping[str, str], source: str) -> Optional[int]:
    """How many ranks share this node: torchrun's LOCAL_WORLD_SIZE or the deepspeed launcher's LOCAL_SIZE
    (`env` discovery), the srun step's tasks on this node (slurm, mpi); None when no launcher says."""
    if source == "env":
        for name in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE"):
            if name in env:
                return _int(env, name)
        return None
    if source in ("slurm", "mpi") and "SLURM_STEP_ID" in env:
        spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
        if spec:
            return _tasks_on_node(spec, _int(env, "SLURM_NODEID") if "SLURM_NODEID" in env else 0)
    return None


def device_index(local_rank: int, visible: int, local_size: Optional[int] = None,
                 node_gpus: Optional[int] = None) -> int:
    """The GPU (an index among the `visible` ones) that the rank of local rank `local_rank` drives.

    One visible GPU per task (Slurm's per-task binding, `--gpus-per-task=1`, cgroups): 0, whatever the
    local rank; every GPU of the node visible: the local rank. `local_size` ranks on the node (None:
    unknown) and `node_gpus`, the GPUs the Slurm step holds on the node (SLURM_STEP_GPUS; None: not
    a Slurm GPU step), tell per-task binding (one visible, as many on the node as ranks) from ranks
    that would share one GPU. Raises ConfigError when the ranks outnumber the GPUs."""
    if visible < 1:
        raise ConfigError(f"local rank {local_rank}: no GPU visible (torch.cuda.device_count() is 0)")
    if local_rank < 0 or (local_size is not None and local_rank >= local_size):
        raise ConfigError(f"local rank {local_rank} is not a rank of the {local_size} on this node")
    if visible == 1 and (local_size or 1) > 1:
        if node_gpus is not None and node_gpus >= local_size:
            return 0                                        # per-task binding: each task sees its own GPU
        held = "no per-task binding" if node_gpus is None else f"the Slurm step holds {node_gpus} on the node"
        raise ConfigError(f"{local_size} ranks on this node but each sees the same single GPU ({held}): start "
                          f"one rank per GPU (--ntasks-per-node or --nproc_per_node = GPUs per node)")
    if visible == 1:
        return 0
    if local_rank >= visible or (local_size is not None and local_size > visible):
        raise ConfigError(f"{local_size or local_rank + 1} ranks on this node but only {visible} GPUs visible: "
                          f"start at most one rank per GPU")
    return local_rank


def check_requested_gpus(env: Mapping[str, str], visible: int) -> None:
    """A Slurm job that asked for GPUs (SLURM_GPUS_ON_NODE) must see them: refuse CPU training otherwise."""
    asked = _int(env, "SLURM_GPUS_ON_NODE") if env.get("SLURM_GPUS_ON_NODE") else 0
    if asked == 0:
        return
    if visible == 0:
        raise ConfigError(
            f"this Slurm job asked for {asked} GPU(s) on the node (SLURM_GPUS_ON_NODE={asked}) but torch sees none "
            f"(torch {_torch_version()}, CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', 'unset')}, "
            f"DS_ACCELERATOR={env.get('DS_ACCELERATOR', 'unset')}): a CPU-only torch, a node without a driver or "
            f"DS_ACCELERATOR=cpu. Refusing to train on the CPU; set GPUS_PER_NODE=0 for a CPU job")
    if 1 < visible < asked:
        raise ConfigError(f"this Slurm job asked for {asked} GPUs on the node (SLURM_GPUS_ON_NODE) but torch "
                          f"sees {visible} (CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', 'unset')})")


def visible_gpus() -> int:
    """The GPUs this process can drive: torch's count where DeepSpeed's accelerator is CUDA, else 0."""
    import torch
    from deepspeed.accelerator import get_accelerator

    return torch.cuda.device_count() if get_accelerator().device_name() == "cuda" else 0


def _torch_version() -> str:
    import torch
    return torch.__version__


_DEVICE = None                       # set by bind_device


def bind_device(d: Discovery, env=None):
    """Pick this rank's device, write its index to LOCAL_RANK and make it the current device
    (before any collective); returns it. CPU ranks (no CUDA accelerator) keep their local rank."""
    global _DEVICE
    import torch
    from deepspeed.accelerator import get_accelerator

    env = os.environ if env is None else env
    accel = get_accelerator()
    visible = visible_gpus()
    check_requested_gpus(env, visible)
    index = d.local_rank
    if accel.device_name() == "cuda":
        index = device_index(d.local_rank, visible, local_world_size(env, d.source),
                             _gpu_list(env.get("SLURM_STEP_GPUS")))
    os.environ["LOCAL_RANK"] = str(index)
    accel.set_device(index)
    _DEVICE = torch.device(accel.device_name(index))          # cuda:<index>; the CPU on CPU ranks
    return _DEVICE


def rank_device():
    """This rank's device, where every tensor handed to a collective must live (bind_device sets it)."""
    if _DEVICE is None:
        raise RuntimeError("rank_device() before init_distributed(): no device is bound yet")
    return _DEVICE


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
    device = bind_device(d)                          # LOCAL_RANK := the device index, before the NCCL group
    timeout = timedelta(seconds=timeout_s)
    c10d.default_pg_timeout = timeout                # read by new_group(timeout=None) for gloo
    if c10d.default_pg_nccl_timeout is not None:     # and for NCCL where it is compiled in
        c10d.default_pg_nccl_timeout = timeout
    deepspeed.init_distributed(auto_mpi_discovery=False, timeout=timeout)
    global _JOINED
    _JOINED = True
    rank, world = dist.get_rank(), dist.get_world_size()
    if (rank, world) != (d.rank, d.world_size):
        raise ConfigError(f"{d.source} rank discovery gave rank {d.rank} of {d.world_size} but the process "
                          f"group has this process as rank {rank} of {world}")
    print(f"[massive_mt] rank {rank} of {world} joined ({d.source} discovery, local rank {d.local_rank}, "
          f"master {d.master_addr}:{d.master_port}, device {device})", file=sys.stderr, flush=True)
    return rank, world


def shutdown() -> None:
    """Destroy the process group if one exists (local, no collective): a rank leaving on an error must
    not leave gloo's or NCCL's threads to the interpreter's exit, which can abort the process
    ("terminate called without an active exception", SIGABRT) instead of returning its status."""
    import torch.distributed as tdist
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def leave(code: int) -> int:
    """The end of a command's process: `code` is its exit status. A process that joined a process group
    leaves with os._exit after destroying the group and flushing stdout and stderr, because DeepSpeed's
    module globals keep the group's backend alive past `destroy_process_group`, and tearing it down
    during interpreter finalisation occasionally aborts a rank that had finished cleanly (SIGABRT,
    "terminate called without an active exception"). Everything the commands write is closed before
    this (metrics, TensorBoard, checkpoints, reports). A process that never joined one (a refusal
    before start-up, an in-process caller) gets `code` back."""
    shutdown()
    if not _JOINED:
        return code
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":          # `python -m massive_mt.engine.distributed check-gpus`: the sbatch templates' start check
    if sys.argv[1:] != ["check-gpus"]:
        sys.exit("usage: python -m massive_mt.engine.distributed check-gpus")
    try:
        check_requested_gpus(os.environ, visible_gpus())
    except ConfigError as e:
        print(f"massive-mt: error: {e}", file=sys.stderr)
        sys.exit(2)
