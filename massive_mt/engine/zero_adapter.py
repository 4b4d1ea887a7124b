"""Per-task gradient shards under DeepSpeed: snapshot, reset and write back a rank's gradient.

This is the only module of massive_mt that reads or writes DeepSpeed's semi-private gradient
buffers (Length: the four layouts sit together, to be re-verified together when the pin moves). It is
written against deepspeed==0.19.8 (pinned in pyproject.toml); `GradShards` warns when another
version is installed, and tests/test_zero_adapter.py checks every supported layout against a
single-process PyTorch reference. Re-run it whenever the pin moves.

Usage, per optimizer step (every rank runs the same task at the same micro-step)::

    shards = GradShards(engine)                     # once, after deepspeed.initialize
    shards.begin_step()
    snaps = []
    for k, micro_batches in enumerate(tasks):
        for m, batch in enumerate(micro_batches):
            engine.set_gradient_accumulation_boundary(m == len(micro_batches) - 1)
            engine.backward(loss(engine, batch))
        snaps.append(shards.snapshot())             # this rank's reduced, dp-averaged gradient
        if k < len(tasks) - 1:
            shards.reset()
    S = torch.stack(snaps)                          # [K, shards.numel]
    # Gram over shards.gram_segments(), ONE all_reduce over shards.dp_group, weights from it
    shards.write_back(combined)                     # [shards.numel], same layout as S's rows
    engine.set_gradient_accumulation_boundary(True)
    engine.step()

Where the rank's gradient lives: its layout, one class per layout (``name`` is its label in logs
and tests), chosen once per engine by ``layout_of(engine)`` from DeepSpeed's optimizer wrapper
(the class DeepSpeed wraps the torch optimizer in for a ZeRO stage), which must be the one the
ds_config's (ZeRO stage, bf16) gives (``layout_for``). Each layout answers for itself: the local
gradient, reset, dropping a step (``skip_step``), writing back, and the facts ``clip_from_gram``
(read by resolve_ds_config and the reconciler), ``weights_partitioned`` and ``master_weights``
(read by checkpoint.py). Nothing else in massive_mt branches on an
engine's optimizer wrapper or ZeRO stage:

- ``"z0"``: ZeRO stage 0, fp32, torch's own optimizer. After a boundary backward DeepSpeed has
  all-reduced and averaged every ``p.grad``; each rank holds the full gradient.
- ``"z12"``: ``DeepSpeedZeroOptimizer`` (ZeRO-1/2). ``optimizer.averaged_gradients[i]`` holds
  the partition of ``param_groups[i]``, either as a list of pieces plus zero pads (``_zero_padding``)
  exactly ``partition_size[i]`` long, or (bf16 with fp32 accumulation) as a buffer object whose
  ``.flat_partition`` is the whole partition. Parameter offsets come from ``p._hp_mapping``.
- ``"z3"``: ``DeepSpeedZeroOptimizer_Stage3``. One contiguous ``grad_partitions_flat_buffer`` in
  the order of ``fp16_groups``, ``p.partition_numel()`` values per parameter (the last ranks'
  share of a parameter may be padding).
- ``"bf16"``: ``BF16_Optimizer`` (ZeRO-1 + bf16 + fp32 accumulation). Every rank holds the full
  averaged fp32 gradient; its partition is ``fp32_groups_gradient_flat_partition[i]``.

Frozen parameters (``requires_grad`` False, ``model.freeze``) are in no layout: deepspeed 0.19.8
leaves them out of its ``param_groups`` at every stage (``is_optimized_parameter``), so no
layout holds a gradient for them (ZeRO-3 still partitions their weights); stage 0 skips them
here. ``GradShards`` checks that no segment belongs to one.

Not supported (``ConfigError``): fp16 / loss scaling, optimizer or parameter offload,
``managed_gradient_accumulation: false`` (step() rebuilds the gradient and would overwrite a
write-back), DeepSpeed clipping with ``BF16_Optimizer`` (its norm covers the full local buffer,
which is wrong after a partition-only write-back: clip from the Gram instead, see
``clip_from_gram``), expert-parallel (MoE) ``param_groups`` and any other optimizer wrapper.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch

import deepspeed
import deepspeed.comm as dist
from deepspeed.accelerator import get_accelerator
from deepspeed.runtime.base_optimizer import DeepSpeedOptimizer
from deepspeed.runtime.bf16_optimizer import BF16_Optimizer
from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
from deepspeed.runtime.zero.stage_1_and_2 import INITIAL_MICRO_STEP_ID, DeepSpeedZeroOptimizer

from massive_mt.errors import ConfigError
from massive_mt.reconcile.shards import Segment

SUPPORTED_DEEPSPEED = "0.19.8"


def _offloaded(offload_cfg) -> bool:
    device = getattr(offload_cfg, "device", None)
    return device is not None and str(getattr(device, "value", device)) != "none"


def _check_engine_config(engine) -> None:
    """The engine's own settings. resolve_ds_config (massive_mt/engine/config.py) refuses fp16 and offload in
    a ds_config first, with the file's name; this guard covers engines built any other way
    (GradShards is used on any DeepSpeed engine, e.g. by tests/dist/adapter_check.py)."""
    if engine.fp16_enabled():
        raise ConfigError("ds_config field 'fp16.enabled': fp16 with loss scaling is not supported by the "
                          "per-task gradient adapter; use bf16 with data_types.grad_accum_dtype = \"fp32\"")
    if getattr(engine, "torch_autocast_z0_gradscaler", None) is not None:
        raise ConfigError("ds_config field 'torch_autocast': fp16 autocast with a gradient scaler is not "
                          "supported by the per-task gradient adapter")
    if _offloaded(engine.zero_offload_optimizer()):
        raise ConfigError("ds_config field 'zero_optimization.offload_optimizer': optimizer offload (CPU/NVMe) "
                          "is not supported by the per-task gradient adapter; remove it or set device to \"none\"")
    if _offloaded(engine.zero_offload_param()):
        raise ConfigError("ds_config field 'zero_optimization.offload_param': parameter offload (CPU/NVMe) "
                          "is not supported by the per-task gradient adapter; remove it or set device to \"none\"")
    if not engine.managed_gradient_accumulation():
        raise ConfigError("ds_config field 'managed_gradient_accumulation' = false: step() rebuilds the "
                          "gradient and would overwrite the reconciled one; keep it true (the default)")


def _clear_z12(opt) -> None:
    # What DeepSpeedZeroOptimizer.step() does on overflow. The dicts stay the same objects:
    # _hp_mapping and the norm code hold references to them.
    opt.zero_grad(set_to_none=True)             # p.grad = p.grad_accum = None
    opt._release_preflattened_grad_buffers()
    for k in list(opt.averaged_gradients.keys()):
        opt.averaged_gradients[k] = None
    for k in list(opt.all_grad_tensors.keys()):
        opt.all_grad_tensors[k] = None


def _param_names(engine) -> dict:
    return {id(p): n for n, p in engine.module.named_parameters()}


class _Layout:
    """One gradient layout: where a rank's reduced gradient lives and how to read, clear, replace or
    drop it. The class attributes are the layout's facts; the defaults hold for the partitioned ZeRO
    optimizers."""

    name: str
    wrapper: Optional[type] = None   # DeepSpeed's optimizer wrapper class holding this layout (None: torch's own)
    ds_settings: frozenset = frozenset()  # the (ZeRO stage, bf16) pairs of a ds_config that give this layout
    partitioned = True       # each rank holds only its partition of the gradient (stage 0: the full one)
    clip_from_gram = False   # DeepSpeed's clipping is wrong after a write-back: the caller clips from the Gram
    weights_partitioned = False   # each rank holds only its partition of the fp32 weights (ZeRO-3)
    master_weights = True    # the optimizer keeps fp32 master copies apart from the module's weights

    @classmethod
    def wraps(cls, opt) -> bool:
        return type(opt) is cls.wrapper

    def begin_step(self) -> None:
        pass

    def gram_segments(self) -> list:
        return self.segments()

    def skip(self) -> None:
        """Drop the step's gradient as DeepSpeed's own overflow path does, leaving the optimizer
        ready for the next step's first backward."""
        self.reset()


class _ZeRO0(_Layout):
    """Stage 0: after a boundary backward every p.grad is all-reduced and averaged."""

    name = "z0"
    ds_settings = frozenset({(0, False)})
    partitioned = False
    master_weights = False

    @classmethod
    def wraps(cls, opt) -> bool:
        return isinstance(opt, torch.optim.Optimizer) and not isinstance(opt, DeepSpeedOptimizer)

    def __init__(self, engine):
        named = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
        self.opt = engine.optimizer
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.numel = sum(p.numel() for p in self.params)
        self.dp_group = engine.seq_data_parallel_group      # the group DeepSpeed all-reduces over

    def snapshot(self, out):
        off = 0
        for p in self.params:
            n = p.numel()
            if p.grad is None:
                out[off:off + n].zero_()
            else:
                out[off:off + n].copy_(p.grad.reshape(-1))
            off += n

    def local_grads(self):
        return [p.grad for p in self.params if p.grad is not None]

    def reset(self):
        for p in self.params:
            p.grad = None

    def skip(self):
        self.opt.zero_grad(set_to_none=True)

    def write_back(self, flat):
        off = 0
        for p in self.params:
            n = p.numel()
            src = flat[off:off + n].view_as(p)
            if p.grad is None:
                p.grad = src.to(p.dtype, copy=True)
            else:
                p.grad.copy_(src)
            off += n

    def segments(self):
        out, off = [], 0
        for n, p in zip(self.names, self.params):
            out.append(Segment(n, off, p.numel()))
            off += p.numel()
        return out

    def gram_segments(self):
        """Rank r of N takes values [r*P//N, (r+1)*P//N) of the full vector, cut by parameter."""
        rank, world = dist.get_rank(group=self.dp_group), dist.get_world_size(group=self.dp_group)
        lo, hi = rank * self.numel // world, (rank + 1) * self.numel // world
        out = []
        for s in self.segments():
            a, b = max(lo, s.start), min(hi, s.start + s.numel)
            if a < b:
                out.append(Segment(s.name, a, b - a))
        return out


class _ZeRO12(_Layout):
    """DeepSpeedZeroOptimizer: partitions in averaged_gradients[i] (pieces + pads, or .flat_partition)."""

    name = "z12"
    wrapper = DeepSpeedZeroOptimizer
    ds_settings = frozenset({(1, False), (2, False), (2, True)})

    def __init__(self, engine):
        self.opt = opt = engine.optimizer
        self.names = _param_names(engine)
        self.sizes = [int(s) for s in opt.partition_size]
        self.numel = sum(self.sizes)
        self.dp_group = opt.dp_process_group

    def snapshot(self, out):
        off = 0
        for i, size in enumerate(self.sizes):
            dst = out[off:off + size]
            off += size
            ag = self.opt.averaged_gradients.get(i)
            flat = getattr(ag, "flat_partition", None)
            if ag is None:
                dst.zero_()
            elif flat is not None:
                dst.copy_(flat.view(-1))
            else:                                   # the pieces, zero pads included
                o = 0
                for t in ag:
                    dst[o:o + t.numel()].copy_(t.reshape(-1))
                    o += t.numel()
                assert o == size, (i, o, size)

    def local_grads(self):
        out = []
        for ag in self.opt.averaged_gradients.values():
            flat = getattr(ag, "flat_partition", None)
            out += [flat] if flat is not None else list(ag or [])
        return out

    def reset(self):
        _clear_z12(self.opt)

    def skip(self):
        _clear_z12(self.opt)
        self.opt.micro_step_id = INITIAL_MICRO_STEP_ID      # what its step() sets

    def write_back(self, flat):
        # In place, keeping the pieces: step(), the norm and the overflow check read them.
        off = 0
        for i, size in enumerate(self.sizes):
            src = flat[off:off + size]
            off += size
            ag = self.opt.averaged_gradients.get(i)
            if ag is None:
                raise RuntimeError("GradShards.write_back: no gradient partition for "
                                   f"param_groups[{i}]; call it after the last task's boundary backward, without reset()")
            dst = getattr(ag, "flat_partition", None)
            if dst is not None:
                dst.view(-1).copy_(src)
                continue
            o = 0
            for t in ag:
                t.copy_(src[o:o + t.numel()].view_as(t))
                o += t.numel()
            assert o == size, (i, o, size)

    def _param_groups(self):
        return self.opt.bit16_groups

    def segments(self):
        out, base = [], 0
        for params, size in zip(self._param_groups(), self.sizes):
            for p in params:
                mapping = getattr(p, "_hp_mapping", None)       # None: no values on this rank
                if mapping is not None:
                    addr = mapping.get_hp_fragment_address()   # relative to this rank's partition
                    if addr.numel > 0:
                        out.append(Segment(self.names[id(p)], base + int(addr.start), int(addr.numel)))
            base += size
        return sorted(out, key=lambda s: s.start)


class _BF16(_ZeRO12):
    """BF16_Optimizer: full averaged fp32 buffer per rank; the partition is a view into it."""

    name = "bf16"
    wrapper = BF16_Optimizer
    ds_settings = frozenset({(1, True)})     # deepspeed 0.19.8: ZeRO-1 + bf16 + fp32 gradient accumulation
    clip_from_gram = True    # its clipping norm covers the full local buffer, not what was written back

    def __init__(self, engine):
        self.opt = opt = engine.optimizer
        self.names = _param_names(engine)
        self.sizes = [t.numel() for t in opt.fp32_groups_gradient_flat_partition]
        self.numel = sum(self.sizes)
        self.dp_group = opt.dp_process_group

    def snapshot(self, out):
        off = 0
        for t in self.opt.fp32_groups_gradient_flat_partition:
            out[off:off + t.numel()].copy_(t.view(-1))
            off += t.numel()

    def local_grads(self):
        return list(self.opt.fp32_groups_gradient_flat_partition)

    def reset(self):
        self.opt.clear_hp_grads()
        self.opt.clear_lp_grads(set_to_none=True)

    skip = _Layout.skip      # its reset is DeepSpeed's overflow path; no micro-step count to reset

    def write_back(self, flat):
        # Values outside this rank's partition are zeroed and every parameter is flagged as
        # having a gradient, so step()'s (per-rank) overflow check reads exactly what was written.
        opt, off = self.opt, 0
        for i, (full, part) in enumerate(zip(opt.fp32_groups_gradients_flat, opt.fp32_groups_gradient_flat_partition)):
            n = part.numel()
            full.zero_()
            part.view(-1).copy_(flat[off:off + n])
            opt.fp32_groups_has_gradients[i] = [True] * len(opt.fp32_groups_has_gradients[i])
            off += n

    def _param_groups(self):
        return self.opt.bf16_groups


class _ZeRO3(_Layout):
    """DeepSpeedZeroOptimizer_Stage3: partitions of all params in grad_partitions_flat_buffer."""

    name = "z3"
    wrapper = DeepSpeedZeroOptimizer_Stage3
    ds_settings = frozenset({(3, False), (3, True)})
    weights_partitioned = True

    def __init__(self, engine):
        self.opt = opt = engine.optimizer
        self.names = _param_names(engine)
        self.numel = opt.grad_partitions_flat_buffer.numel()
        self.dp_group = opt.dp_process_group

    def _buffer(self):
        # Reductions may still be running on the reduce stream (GPU, overlap_comm): the current
        # stream waits for them on the device; the host does not wait.
        stream = self.opt.reduce_and_partition_stream
        if stream is not None and not get_accelerator().resolves_data_dependency():
            get_accelerator().current_stream().wait_stream(stream)
        return self.opt.grad_partitions_flat_buffer.view(-1)

    def begin_step(self):
        # deepspeed 0.19.8 never zeroes this buffer: a parameter unused in a step's first
        # micro-batch would otherwise add its later gradients onto the previous step's.
        self._buffer().zero_()

    def snapshot(self, out):
        out.copy_(self._buffer())

    def local_grads(self):
        return [self.opt.grad_partitions_flat_buffer]

    def reset(self):
        # The next micro-batch copies (micro_step_id == 0) or adds (> 0) into zeros: both exact.
        self._buffer().zero_()

    def skip(self):
        self.opt.grad_partitions_flat_buffer.zero_()
        self.opt.zero_grad(set_to_none=True)  # also micro_step_id = 0, as after engine.step()

    def write_back(self, flat):
        self._buffer().copy_(flat)

    def segments(self):
        rank = dist.get_rank(group=self.dp_group)
        out, off = [], 0
        for params in self.opt.fp16_groups:
            for p in params:
                n = p.partition_numel()
                valid = min(n, max(0, p.ds_numel - rank * n))   # the rest is padding
                if valid > 0:
                    out.append(Segment(self.names[id(p)], off, valid))
                off += n
        return out


LAYOUTS = (_ZeRO0, _ZeRO12, _BF16, _ZeRO3)
_CACHE = "_massive_mt_layout"


def layout_for(stage: int, bf16: bool) -> type:
    """The layout class of an engine built from a ds_config with ZeRO ``stage`` and ``bf16``
    (with fp32 gradient accumulation, as resolve_ds_config requires); ConfigError when none."""
    found = [c for c in LAYOUTS if (stage, bool(bf16)) in c.ds_settings]
    if len(found) != 1:
        raise ConfigError(f"ds_config 'zero_optimization.stage' = {stage} with bf16 = {bool(bf16)} has no gradient "
                          "layout in the per-task gradient adapter: use stage 0 with fp32 parameters, or stages 1-3 "
                          "(with bf16: data_types.grad_accum_dtype = \"fp32\")")
    return found[0]


def layout_of(engine) -> _Layout:
    """The engine's gradient layout (a `_Layout` object), chosen once from its optimizer wrapper and
    cached on the engine; ConfigError when the wrapper is not the one its ds_config should give."""
    layout = engine.__dict__.get(_CACHE)
    if layout is None:
        opt, stage, bf16 = engine.optimizer, engine.zero_optimization_stage(), engine.bfloat16_enabled()
        found = [c for c in LAYOUTS if c.wraps(opt)]
        if len(found) != 1 or (stage, bf16) not in found[0].ds_settings:
            raise ConfigError(f"optimizer wrapper {type(opt).__name__} (ds_config 'zero_optimization.stage' = "
                              f"{stage}, bf16 = {bf16}) is not supported by the per-task gradient adapter: use "
                              "stage 0 with fp32 parameters, or stages 1-3 (with bf16: "
                              "data_types.grad_accum_dtype = \"fp32\")")
        layout = found[0](engine)
        setattr(engine, _CACHE, layout)
    return layout


class GradShards:
    """This rank's share of the data-parallel-averaged gradient of one task, as a flat fp32 vector.

    Attributes: ``layout`` (the layout's name: "z0", "z12", "z3", "bf16"), ``numel`` (length of ``snapshot()``),
    ``dp_group`` (group for the Gram all_reduce; None means the world), ``partitioned`` (False
    where every rank holds the full gradient: stage 0), ``clip_from_gram`` (True where DeepSpeed's
    clipping must stay off and the caller scales the update by ``min(1, clip / ||u||)`` with
    ``||u||^2 = w^T G w``).

    A non-finite Gram must make every rank skip the step (BF16_Optimizer decides overflow from
    its own rank's values only).
    """

    def __init__(self, engine):
        if deepspeed.__version__ != SUPPORTED_DEEPSPEED:
            warnings.warn(f"massive_mt.engine.zero_adapter was verified with deepspeed=={SUPPORTED_DEEPSPEED}, found "
                          f"{deepspeed.__version__}: run tests/test_zero_adapter.py before trusting it",
                          RuntimeWarning, stacklevel=2)
        _check_engine_config(engine)
        impl = layout_of(engine)
        if impl.clip_from_gram and engine.gradient_clipping() > 0:
            raise ConfigError(f"ds_config field 'gradient_clipping' = {engine.gradient_clipping()}: with "
                              f"{type(engine.optimizer).__name__} DeepSpeed's clipping norm is wrong after a "
                              "partition write-back; set it to 0 and clip from the Gram (GradShards.clip_from_gram)")
        opt = engine.optimizer
        dp_groups = getattr(opt, "real_dp_process_group", None)     # one process group per param_groups entry
        if dp_groups is not None and any(g is not impl.dp_group for g in dp_groups):
            raise ConfigError("expert-parallel (MoE) param_groups are not supported by the per-task "
                              "gradient adapter: the Gram needs one data-parallel group")
        self._impl = impl
        self.device = engine.device
        self.layout: str = impl.name
        self.dp_group = impl.dp_group
        self.partitioned: bool = impl.partitioned
        self.clip_from_gram: bool = impl.clip_from_gram
        segments = impl.segments()
        frozen = {n for n, p in engine.module.named_parameters() if not p.requires_grad}
        held = sorted(frozen & {s.name for s in segments})
        if held:
            raise RuntimeError(f"GradShards: frozen parameters in the {impl.name} gradient partition ({held[:3]}): "
                               f"this DeepSpeed ({deepspeed.__version__}) partitions what 0.19.8 left out")
        self._segments = segments
        self._gram_segments = impl.gram_segments()
        self.numel: int = impl.numel
        covered = torch.zeros(self.numel, dtype=torch.bool)
        for s in segments:
            covered[s.start:s.start + s.numel] = True
        self._padding = torch.nonzero(~covered).flatten()

    def begin_step(self) -> None:
        """Call before the first backward of every optimizer step."""
        self._impl.begin_step()

    def snapshot(self, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """fp32 copy of this rank's reduced, dp-averaged gradient; call right after a boundary backward.

        ``out``: an fp32 vector of ``numel`` values to copy into (one pass over the partition, no
        temporary); a new one when omitted."""
        if out is None:
            out = torch.empty(self.numel, dtype=torch.float32, device=self.device)
        elif out.shape != (self.numel,) or out.dtype != torch.float32:
            raise ValueError(f"snapshot: out must be a float32 vector of {self.numel} values, got "
                             f"{out.dtype} {tuple(out.shape)}")
        self._impl.snapshot(out)
        return out

    def reset(self) -> None:
        """Clear the gradient buffers so the next task starts from zero (not after the last task)."""
        self._impl.reset()

    @torch.no_grad()
    def write_back(self, flat: torch.Tensor) -> None:
        """Write ``flat`` (snapshot layout) in place into the live buffers that engine.step() reads.

        Padding positions (values not in ``segments()``) are written as zeros.
        """
        if flat.shape != (self.numel,):
            raise ValueError(f"write_back expects a flat vector of {self.numel} values, got {tuple(flat.shape)}")
        flat = flat.detach().to(torch.float32)
        if self._padding.numel():
            flat = flat.clone()
            flat[self._padding.to(flat.device)] = 0.0
        self._impl.write_back(flat)

    def segments(self) -> list[Segment]:
        """Layout of ``snapshot()`` by parameter, padding excluded, in increasing ``start`` order."""
        return list(self._segments)

    def gram_segments(self) -> list[Segment]:
        """The part of ``snapshot()`` this rank adds to Gram matrices: disjoint across ranks, and
        together every parameter value exactly once. Equal to ``segments()`` except for z0."""
        return list(self._gram_segments)


# ------------------------------------------------------------------ non-finite steps (any layout, plain included)

def local_grads_nonfinite(engine) -> torch.Tensor:
    """0-d bool tensor on the device, True when this rank's reduced gradient (its partition; stage 0:
    the full gradient) has a NaN/inf; no host synchronisation (a local verdict: all-reduce it)."""
    grads = layout_of(engine).local_grads()
    if not grads:
        return torch.zeros((), dtype=torch.bool, device=engine.device)
    return ~torch.stack([torch.isfinite(t).all() for t in grads]).all()


def skip_step(engine) -> None:
    """Drop the step's gradient instead of calling engine.step(): the buffers cleared as on
    DeepSpeed's own overflow path and the optimizer's micro-step count reset as its step() does;
    parameters, optimizer state and the learning-rate scheduler untouched. Call it on every rank."""
    layout_of(engine).skip()
