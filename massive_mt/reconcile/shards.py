"""The contract between the ZeRO adapter (massive_mt/engine/zero_adapter.py, which implements it on
DeepSpeed's gradient partitions) and the reconcilers (which read and write through it): a rank's
flat share of one task's gradient and where each parameter's values sit in it. Types only: the
reconcilers never import DeepSpeed's internals."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import torch


@dataclass(frozen=True)
class Segment:
    """A contiguous run of ONE parameter's values inside this rank's flat snapshot.

    For any parameter, its ``gram_segments()`` of all data-parallel ranks, taken in rank order
    (and in list order within a rank), tile the flattened parameter from first to last value.
    """
    name: str       # parameter name from engine.module.named_parameters() (tied params appear once)
    start: int      # offset in the snapshot vector
    numel: int


class Shards(Protocol):
    """This rank's share of the data-parallel-averaged gradient, as a flat fp32 vector (the adapter's
    GradShards). ``numel``: the vector's length; ``dp_group``: the group of the Gram all-reduce (None:
    the world); ``partitioned``: False where every rank holds the whole gradient (ZeRO-0);
    ``clip_from_gram``: DeepSpeed cannot clip this layout, the reconciler clips from the Gram."""

    device: torch.device
    numel: int
    dp_group: object
    partitioned: bool
    clip_from_gram: bool

    def begin_step(self) -> None: ...

    def snapshot(self, out: Optional[torch.Tensor] = None) -> torch.Tensor: ...

    def reset(self) -> None: ...

    def write_back(self, flat: torch.Tensor) -> None: ...

    def segments(self) -> list[Segment]: ...

    def gram_segments(self) -> list[Segment]: ...
