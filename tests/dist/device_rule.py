"""NCCL's device rule, checked on CPU ranks with gloo.

On GPUs with NCCL every tensor handed to a collective must live on the device the rank's
process group is bound to, and that device must be the current one before the first
collective (object collectives and barriers stage their bytes on the current device). Gloo on
CPU accepts anything, so this module pretends: each rank's accelerator device becomes a device
of its own, `cpu:<index>`, and every tensor carries a virtual device that follows the tensor the
way a real device would.

- The DeepSpeed CPU accelerator is patched so that `set_device(i)` makes `cpu:i` current,
  `current_device_name()` and `device_name()` name the current device (`cpu:0` before any
  `set_device`, as CUDA's default device) and `device_name(i)` is `cpu:i` (so the engine's device
  is `cpu:<LOCAL_RANK>`).
- A TorchFunctionMode tags tensors: a factory with `device=cpu:i` or `.to(cpu:i)` puts a tensor on
  device i; one with no device or `device="cpu"`, `.cpu()` and `.to("cpu")` put it on the host; any
  other op's result lives where its non-host inputs live (on the host only when all its inputs
  are). `tensor.device` answers `cpu:i` for a device tensor.
  Tensors made outside the mode (autograd's gradients, parameters) count as device tensors.
- Every tensor and object collective of torch.distributed (deepspeed.comm calls them) is
  recorded with its tensors' virtual devices and the current device; it raises `DeviceRuleError`
  when no device was set before it, when the current device is not the rank's (LOCAL_RANK at
  start), or when a tensor is not on the current device (a host tensor, or another rank's).

- Host synchronisations are counted: reading a device tensor on the host (`item`, `tolist`,
  `numpy`, `bool`/`float`/`int` of it, `.cpu()` / `.to(host)`) and a copy of a host tensor to the
  device without `non_blocking=True` (from pageable memory CUDA waits for it). Each is attributed to
  the innermost frame of massive_mt's own code on the stack, or to DeepSpeed when a DeepSpeed frame
  comes first (`Rule.syncs`: site -> count; `Rule.own_syncs`: massive_mt's total).

`install()` (from sitecustomize.py beside it when MASSIVE_MT_DEVICE_RULE names a directory) does
it all at interpreter start of every rank (RANK set); each rank keeps `rank<R>.json` there up to
date after every collective: its counts and the first collective's state; a violation is written
as `violation-rank<R>.json` before it raises.
"""
import json
import os
import traceback
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

HOST = -1
RULE = None                                  # the installed Rule of this process
READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.__bool__, torch.Tensor.__float__,
         torch.Tensor.__int__, torch.Tensor.__index__}
DEVICE_GETTER = torch.Tensor.device          # Tensor.device's descriptor: its __get__ reaches the mode
ENV = "MASSIVE_MT_DEVICE_RULE"
TENSOR_COLLECTIVES = ("all_reduce", "broadcast", "reduce", "all_gather", "all_gather_into_tensor",
                      "_all_gather_base", "reduce_scatter", "reduce_scatter_tensor", "_reduce_scatter_base",
                      "all_to_all", "all_to_all_single", "gather", "scatter", "send", "recv", "isend", "irecv",
                      "all_reduce_coalesced")
OBJECT_COLLECTIVES = ("broadcast_object_list", "all_gather_object", "gather_object", "scatter_object_list",
                      "barrier", "monitored_barrier")
FACTORIES = {torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.empty, torch.full, torch.arange,
             torch.rand, torch.randn, torch.randint, torch.linspace, torch.eye, torch.from_numpy,
             torch.frombuffer, torch.empty_strided, torch.randperm, torch.normal, torch.bernoulli}


class DeviceRuleError(AssertionError):
    pass


def _device_of(spec):
    """A device argument's virtual device: cpu:i -> i, cpu or None-like host spec -> HOST; None: not a device."""
    if isinstance(spec, str):
        if spec.isdigit():
            return int(spec)
        try:
            spec = torch.device(spec)
        except RuntimeError:
            return None
    if isinstance(spec, torch.device):
        return spec.index if spec.index is not None else HOST
    if isinstance(spec, int) and not isinstance(spec, bool):
        return spec
    return None


def vdev(t):
    return getattr(t, "_vdev", None)      # None: made outside the mode (gradients, parameters): a device tensor


def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _tensors(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _tensors(y)


def _tag(out, where) -> None:
    for t in _tensors(out):
        try:
            t._vdev = where
        except (AttributeError, RuntimeError):
            pass


class VirtualDevices(TorchFunctionMode):
    def __init__(self, rule):
        super().__init__()
        self.rule = rule

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__self__", None) is DEVICE_GETTER:
            real = func(*args)
            where = vdev(args[0])
            if real.type != "cpu" or where == HOST:
                return real
            return torch.device("cpu", self.rule.current if where is None else where)
        out = func(*args, **kwargs)
        inputs = list(_tensors(args)) + list(_tensors(kwargs))
        target = self._target(func, args, kwargs, inputs)
        if func in (torch.tensor, torch.as_tensor) and target not in (None, HOST) and not inputs:
            self._sync("blocking copy to device")        # Python data: a copy from pageable memory
        if inputs and args and isinstance(args[0], torch.Tensor):
            source = vdev(args[0])
            if func in READS and source != HOST:
                self._sync(func.__name__)
            elif func is torch.Tensor.copy_ and source == HOST and len(args) > 1 and vdev(args[1]) != HOST:
                if not (kwargs.get("non_blocking") or (len(args) > 2 and args[2])):
                    self._sync("blocking copy to host")
            elif func in (torch.Tensor.to, torch.Tensor.cpu) and source != target:
                if target == HOST:
                    self._sync("to host")
                elif source == HOST and not kwargs.get("non_blocking", False):
                    self._sync("blocking copy to device")
        if any(out is t for t in inputs):                     # in place, or a conversion that was a no-op on CPU
            if func in (torch.Tensor.to, torch.Tensor.cpu) and target != vdev(out):
                out = out.view_as(out)                        # a move between devices: a tensor of its own
                _tag(out, target)
            return out
        _tag(out, target)
        return out

    def _sync(self, what: str) -> None:
        if hasattr(self.rule, "sync"):                # (a stand-in rule of a unit test counts nothing)
            self.rule.sync(what)

    def _target(self, func, args, kwargs, inputs):
        if func is torch.Tensor.cpu:
            return HOST
        if func is torch.Tensor.to:
            for a in list(args[1:]) + [kwargs.get("device")]:
                d = vdev(a) if isinstance(a, torch.Tensor) else _device_of(a)
                if d is not None or isinstance(a, torch.Tensor):
                    return d
            return vdev(args[0])
        if "device" in kwargs and kwargs["device"] is not None:
            return _device_of(kwargs["device"])
        if func in FACTORIES and not (func is torch.as_tensor and inputs):
            return HOST
        places = [vdev(t) for t in inputs]
        device = [p for p in places if p != HOST]
        if places and not device:
            return HOST
        return next((p for p in device if p is not None), None)


class Rule:
    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
        self.expected = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
        self.current = None
        self.depth = 0
        self.counts = {"tensor": 0, "object": 0, "tensors": 0}
        self.first = None
        self.devices_seen = set()
        self.syncs = {}                       # "massive_mt/file.py:line function (what)" or "deepspeed (what)" -> count
        self.own_syncs = 0

    # -------------------------------------------------------------------- host synchronisations
    def sync(self, what: str) -> None:
        import sys
        frame = sys._getframe(2)
        site = "other"
        while frame is not None:
            f = frame.f_code.co_filename.replace(os.sep, "/")
            if "/deepspeed/" in f:
                site = "deepspeed"
                break
            if "/massive_mt/" in f and "/tests/" not in f:
                site = f"massive_mt/{f.rsplit('/massive_mt/', 1)[1]}:{frame.f_lineno} {frame.f_code.co_name}"
                self.own_syncs += 1
                break
            frame = frame.f_back
        key = f"{site} ({what})"
        self.syncs[key] = self.syncs.get(key, 0) + 1

    # -------------------------------------------------------------------- the accelerator
    def patch_accelerator(self) -> None:
        from deepspeed.accelerator import get_accelerator
        accel = get_accelerator()
        if accel.device_name() != "cpu":
            raise RuntimeError(f"{ENV} simulates devices on CPU ranks; the accelerator is {accel.device_name()}")
        rule = self

        def set_device(index):                    # an index, 'cpu:1' or torch.device('cpu', 1), as torch takes
            d = _device_of(index)
            if d is None or d == HOST:
                raise DeviceRuleError(f"set_device({index!r}): not a device of this rank")
            rule.current = d

        def current_device_name():
            return f"cpu:{0 if rule.current is None else rule.current}"

        def device_name(device_index=None):       # as CUDA's: without an index, the current device
            return current_device_name() if device_index is None else f"cpu:{device_index}"

        accel.set_device = set_device
        accel.current_device_name = current_device_name
        accel.device_name = device_name
        accel.device = lambda device_index=None: torch.device(device_name(device_index))

    # -------------------------------------------------------------------- the collectives
    def patch_collectives(self) -> None:
        import torch.distributed as td
        import torch.distributed.distributed_c10d as c10d
        for kind, names in (("tensor", TENSOR_COLLECTIVES), ("object", OBJECT_COLLECTIVES)):
            for name in names:
                if hasattr(c10d, name):
                    wrapped = self._wrap(getattr(c10d, name), name, kind)
                    setattr(c10d, name, wrapped)
                    if hasattr(td, name):
                        setattr(td, name, wrapped)

    def _wrap(self, fn, name, kind):
        rule = self

        def collective(*args, **kwargs):
            if rule.depth == 0:
                rule.check(name, kind, list(_tensors(args)) + list(_tensors(kwargs)) if kind == "tensor" else [])
            rule.depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                rule.depth -= 1
        collective.__wrapped__ = fn
        return collective

    def check(self, name, kind, tensors) -> None:
        places = [self.current if vdev(t) is None else vdev(t) for t in tensors]
        if self.first is None:
            self.first = {"op": name, "current": self.current}
        self.counts[kind] += 1
        self.counts["tensors"] += len(tensors)
        self.devices_seen.update(places)
        problem = None
        if self.current is None:
            problem = f"{name}: no device was set before this collective (NCCL would use cuda:0 on every rank)"
        elif self.current != self.expected:
            problem = f"{name}: the current device is {self.current}, this rank's is {self.expected}"
        else:
            bad = [p for p in places if p != self.current]
            if bad:
                where = ", ".join(sorted({"the host" if p == HOST else f"device {p}" for p in bad}))
                problem = (f"{name}: {len(bad)} of its {len(places)} tensors on {where} reach a tensor collective on device {self.current} "
                           f"(NCCL: 'Tensor found on device ... but backend constrained to ...' / no CPU tensors)")
        if problem:
            stack = "".join(traceback.format_stack(limit=12)[:-2])
            (self.out_dir / f"violation-rank{self.rank}.json").write_text(
                json.dumps({"rank": self.rank, "problem": problem, "stack": stack}))
            raise DeviceRuleError(f"rank {self.rank}: {problem}")
        self.dump()                 # after every collective: the tests/dist scripts leave with os._exit

    def dump(self) -> None:
        (self.out_dir / f"rank{self.rank}.json").write_text(json.dumps(
            {"rank": self.rank, "world_size": int(os.environ.get("WORLD_SIZE", "1")), "expected": self.expected,
             "current": self.current, "first": self.first, "counts": self.counts,
             "devices": sorted(self.devices_seen)}))


def install(out_dir) -> Rule:
    global RULE
    rule = RULE = Rule(Path(out_dir))
    rule.patch_accelerator()
    rule.patch_collectives()
    from_numpy = torch.from_numpy               # not overridable by a mode: its tensors are the host's

    def host_from_numpy(a):
        t = from_numpy(a)
        _tag(t, HOST)
        return t
    torch.from_numpy = host_from_numpy
    VirtualDevices(rule).__enter__()
    return rule
