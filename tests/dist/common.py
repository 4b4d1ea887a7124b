"""Shared by the scripts in tests/dist that the distributed tests launch."""
import os
import sys

import torch

from massive_mt.checkpoint import full_fp32_state_dict


def full_params(engine) -> torch.Tensor:
    """Collective: the full fp32 (master) parameters in named_parameters order, as one float64 vector."""
    return torch.cat([v.double().reshape(-1) for v in full_fp32_state_dict(engine).values()])


def exit_now(code: int) -> None:
    """Leave without running C++ static destructors. Call it after the result is printed and every
    rank has passed the final barrier: gloo/shm threads torn down at interpreter exit occasionally
    abort a rank ("terminate called without an active exception") after a successful check."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
