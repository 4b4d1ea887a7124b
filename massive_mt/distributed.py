"""Process-group set-up for every launcher.

`deepspeed`, `torchrun` and `srun`-with-env all end up in `deepspeed.init_distributed()`;
the world it forms is checked against what the launcher announced, so a misconfigured
launch fails loudly instead of training alone.
"""
from __future__ import annotations

import os

from .errors import ConfigError


def init_distributed(timeout_minutes: int = 30) -> tuple[int, int]:
    """Initialise torch.distributed through DeepSpeed; returns (rank, world_size)."""
    from datetime import timedelta

    import deepspeed
    import deepspeed.comm as dist

    if "RANK" not in os.environ and "OMPI_COMM_WORLD_RANK" not in os.environ \
            and "PMI_RANK" not in os.environ:
        # a single process started by hand: a world of one on a free local port
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    expected = os.environ.get("WORLD_SIZE")
    deepspeed.init_distributed(timeout=timedelta(minutes=timeout_minutes))
    rank, world = dist.get_rank(), dist.get_world_size()
    if expected is not None and int(expected) != world:
        raise ConfigError(f"environment WORLD_SIZE={expected} but the process group has {world} ranks")
    return rank, world


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
