"""Micro-batches onto the device without the host waiting for them.

A batch's token tensors leave the host from pinned memory with `non_blocking=True` (a copy from
pageable memory makes CUDA wait for it), and the step's next micro-batch is collated, pinned and
copied on a side stream while the current one computes; the compute stream waits for that copy
on the device, not on the host. Elsewhere (the CPU) the same calls are plain copies.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Optional

import torch

MODEL_INPUTS = ("input_ids", "attention_mask", "decoder_input_ids", "labels")   # the tensors the device needs


def to_device(batch: dict, device: torch.device) -> dict:
    """`batch` with its model inputs on `device`, copied without blocking (pinned first on CUDA);
    its other entries (counts) stay on the host."""
    cuda = device.type == "cuda"
    return {k: (v.pin_memory() if cuda else v).to(device, non_blocking=True) if k in MODEL_INPUTS else v
            for k, v in batch.items()}


class Prefetcher:
    """The micro-batches of one step, in the order the step runs them, each on the device one ahead.

    `start(order)` with the step's [(task, indices)] issues the first copy; `get(task, indices)`
    returns that micro-batch on the device and issues the next one's copy. A `get` out of the
    announced order (or without a `start`) collates and copies on the spot."""

    def __init__(self, device: torch.device, collate: Callable[[str, object], dict]):
        self.device, self.collate = device, collate
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.order: list = []
        self.pos = 0
        self.ready: Optional[tuple] = None

    def start(self, order: list) -> None:
        self.order, self.pos = list(order), 0
        self.ready = self._issue(0)

    def _issue(self, i: int) -> Optional[tuple]:
        if i >= len(self.order):
            return None
        task, indices = self.order[i]
        batch = self.collate(task, indices)
        with torch.cuda.stream(self.stream) if self.stream is not None else nullcontext():
            return task, indices, to_device(batch, self.device)

    def get(self, task: str, indices) -> dict:
        item, self.ready = self.ready, None
        if item is None or item[0] != task or item[1] is not indices:
            return to_device(self.collate(task, indices), self.device)
        batch = item[2]
        if self.stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.stream)                 # the device waits for the copy, the host does not
            for k in MODEL_INPUTS:
                batch[k].record_stream(current)              # its memory is not reused before compute is done
        self.pos += 1
        self.ready = self._issue(self.pos)
        return batch
