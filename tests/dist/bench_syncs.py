"""`massive-mt bench` with host synchronisations counted per timed step, for scripts/gpu_check.sh.

Runs massive_mt.experiments.bench's `main` with the same arguments. On CUDA, each configuration's
timed steps (from the peak-memory reset just before them to the peak read just after them) run
under `torch.cuda.set_sync_debug_mode("warn")`, and every "synchronizing CUDA operation" warning
is counted (warnings raised in the autograd engine's threads are replayed to the calling thread
at the end of backward, so they are counted too; `torch.cuda.synchronize()` itself raises none).
Each JSON line gets `host_syncs_per_step`: the count over the timed steps divided by their
number; the barriers around each timed step are counted for every method alike, so the reconciled
step's own synchronisations are its figure minus the `bare` loop's (scripts/gpu_check.sh reports
that difference). Off CUDA there is nothing to count and the field is null.

usage: bench_syncs.py BENCH_ARGUMENTS...   (under torchrun, as massive_mt.experiments.bench)
"""
import sys
import warnings

import torch

from massive_mt.experiments import bench

SYNC_WARNING = "synchronizing CUDA operation"


class SyncCounter:
    """Counts sync-debug warnings between `start()` and `stop()`; `count` is None off CUDA."""

    def __init__(self, cuda: bool):
        self.cuda, self.count, self._catcher, self._log = cuda, None, None, None

    def start(self) -> None:
        if not self.cuda:
            return
        self._catcher = warnings.catch_warnings(record=True)
        self._log = self._catcher.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")

    def stop(self) -> None:
        if self._catcher is None:
            return
        torch.cuda.set_sync_debug_mode("default")
        self._catcher.__exit__(None, None, None)
        self.count = sum(SYNC_WARNING in str(w.message) for w in self._log)
        self._catcher = self._log = None


def install(counter: SyncCounter) -> None:
    """Count over each configuration's timed steps and add `host_syncs_per_step` to its record."""
    reset, peak, run_config = bench.PeakMemory.reset, bench.PeakMemory.peak, bench.run_config

    def reset_and_count(self):
        reset(self)
        counter.count = None
        counter.start()

    def stop_and_peak(self):
        counter.stop()
        return peak(self)

    def counted_run_config(cfg, ds, rank, world, kind, steps, warmup, memory):
        out = run_config(cfg, ds, rank, world, kind, steps, warmup, memory)
        out["host_syncs_per_step"] = None if counter.count is None else counter.count / steps
        return out

    bench.PeakMemory.reset, bench.PeakMemory.peak, bench.run_config = reset_and_count, stop_and_peak, counted_run_config


if __name__ == "__main__":
    install(SyncCounter(torch.cuda.is_available()))
    sys.exit(bench.main(sys.argv[1:]))
