"""`massive-mt bench` with host synchronisations counted per timed step, for scripts/gpu_check.sh.

Runs massive_mt.experiments.bench's `main` with the same arguments. On CUDA, each configuration's
timed steps (from the peak-memory reset just before them to the peak read just after them) run
under `torch.cuda.set_sync_debug_mode("warn")`, and every "synchronizing CUDA operation" warning
is counted: synchronous copies and stream synchronisations, `.item()` and `.cpu()` of device
tensors included (warnings raised in the autograd engine's threads are replayed to the calling
thread at the end of backward, so they are counted too). Explicit `torch.cuda.synchronize()`
calls are counted apart, with the debug mode off around them: the benchmark's own waits at the
reconciler's timing split points (`sync_timings`) are among them. Each JSON line gets
`host_syncs_per_step` and `device_synchronize_per_step`, the counts over the timed steps divided
by their number. The barriers around each timed step count for every method alike, so the
reconciled step's own synchronisations are its figure minus the `bare` loop's (scripts/gpu_check.sh
reports that difference). Off CUDA there is nothing to count and both fields are null.

usage: bench_syncs.py BENCH_ARGUMENTS...   (under torchrun, as massive_mt.experiments.bench)
"""
import sys
import warnings

import torch

from massive_mt.experiments import bench

SYNC_WARNING = "synchronizing CUDA operation"


class SyncCounter:
    """Counts sync-debug warnings and explicit `torch.cuda.synchronize()` calls between `start()`
    and `stop()`; both counts are None off CUDA."""

    def __init__(self, cuda: bool):
        self.cuda, self.count, self.device_syncs = cuda, None, None
        self._catcher = self._log = self._synchronize = None

    def start(self) -> None:
        self.count = self.device_syncs = None
        if not self.cuda:
            return
        self._catcher = warnings.catch_warnings(record=True)
        self._log = self._catcher.__enter__()
        warnings.simplefilter("always")
        self._synchronize, self.device_syncs = torch.cuda.synchronize, 0

        def synchronize(*args, **kwargs):         # counted apart, not as a warning
            self.device_syncs += 1
            torch.cuda.set_sync_debug_mode("default")
            try:
                return self._synchronize(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("warn")
        torch.cuda.synchronize = synchronize
        torch.cuda.set_sync_debug_mode("warn")

    def stop(self) -> None:
        if self._catcher is None:
            return
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize = self._synchronize
        self._catcher.__exit__(None, None, None)
        self.count = sum(SYNC_WARNING in str(w.message) for w in self._log)
        self._catcher = self._log = self._synchronize = None


def install(counter: SyncCounter) -> None:
    """Count over each configuration's timed steps and add the counts per step to its record."""
    reset, peak, run_config = bench.PeakMemory.reset, bench.PeakMemory.peak, bench.run_config

    def reset_and_count(self):
        reset(self)
        counter.start()

    def stop_and_peak(self):
        counter.stop()
        return peak(self)

    def counted_run_config(cfg, ds, rank, world, runner, steps, warmup, memory):
        out = run_config(cfg, ds, rank, world, runner, steps, warmup, memory)
        per_step = lambda n: None if n is None else n / steps
        out.update(host_syncs_per_step=per_step(counter.count), device_synchronize_per_step=per_step(counter.device_syncs))
        return out

    bench.PeakMemory.reset, bench.PeakMemory.peak, bench.run_config = reset_and_count, stop_and_peak, counted_run_config


if __name__ == "__main__":
    install(SyncCounter(torch.cuda.is_available()))
    sys.exit(bench.main(sys.argv[1:]))
