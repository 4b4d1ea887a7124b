"""The reconciler's split-point clock (reconcile/sharded.py `_clock`): it waits for the device only in
bench mode (`sync_timings`, set by massive-mt bench), never in a training step."""
import types

from deepspeed.accelerator import get_accelerator

from massive_mt.reconcile.sharded import ShardedReconciler


def test_clock_synchronises_in_bench_mode_only(monkeypatch):
    calls = []
    monkeypatch.setattr(get_accelerator(), "synchronize", lambda *a, **k: calls.append(a))
    training = types.SimpleNamespace(sync_timings=False)
    t0 = ShardedReconciler._clock(training)
    assert ShardedReconciler._clock(training) >= t0 and calls == []
    ShardedReconciler._clock(types.SimpleNamespace(sync_timings=True))
    assert len(calls) == 1
