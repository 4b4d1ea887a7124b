"""Typed step statistics (reconcile/stats.py) and the telemetry's correction rate: fired corrections
over the visits the method actually made (GradVac visits only its vaccinated rows)."""
import json

import pytest
import torch

from massive_mt.engine.metrics import ReconcileTelemetry
from massive_mt.reconcile import make_state, reconcile
from massive_mt.reconcile.stats import SplitTimings, StepStats

F64 = torch.float64
K, GROUPS = 4, 2


def conflicting_grams() -> torch.Tensor:
    """Two groups of four task gradients where task 0 opposes the other three (every visit of row 0
    starts with a negative cosine, below GradVac's initial target 0)."""
    g = torch.eye(K, dtype=F64)
    g[0] = torch.tensor([0.1, -1.0, -1.0, -1.0], dtype=F64)
    grads = [g, 2.0 * g.flip(1)]
    return torch.stack([x @ x.T for x in grads])


def step_stats(method: str, vaccinate_ids=None) -> StepStats:
    grams = conflicting_grams()
    options = {"vaccinate_ids": vaccinate_ids} if method == "gradvac" else {}
    _, stats = reconcile(method, grams, list(range(K)), make_state(method, GROUPS, K), torch.Generator().manual_seed(0),
                         **options)
    stats.grams = grams
    return stats


@pytest.mark.parametrize("method, vaccinate_ids, rows", [("gradvac", frozenset({0}), [0]), ("gradvac", None, [0, 1, 2, 3]),
                                                     ("pcgrad", None, [0, 1, 2, 3]), ("sum", None, [])])
def test_visits_are_the_rows_the_method_corrects(method, vaccinate_ids, rows):
    s = step_stats(method, vaccinate_ids)
    want = torch.zeros(K, K, dtype=torch.bool)
    want[rows] = True
    want.fill_diagonal_(False)
    assert torch.equal(s.visited, want.expand(GROUPS, K, K))
    assert s.n_visits.tolist() == [len(rows) * (K - 1)] * GROUPS
    assert not (s.fired & ~s.visited).any() and not (s.unusable & ~s.visited).any()
    assert s.n_fired.tolist() == s.fired.flatten(1).sum(1).tolist()


def read_records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "reconcile.jsonl").read_text().splitlines()]


def test_fired_fraction_divides_by_the_visits_made(tmp_path):
    """1 of 4 tasks vaccinate_ids: 3 visits per group and step, not K (K - 1) = 12."""
    tasks = [f"en-{x}" for x in "abcd"]
    runs = {"subset": frozenset({0}), "all": None}
    for name, vaccinate_ids in runs.items():
        tel = ReconcileTelemetry(tmp_path / name, True, tasks, ["g0", "g1"], interval=2)
        fired = torch.zeros(GROUPS, dtype=F64)
        for step in range(2):
            s = step_stats("gradvac", vaccinate_ids)
            fired += s.n_fired
            tel.add(step, s)
        tel.close()
        (rec,) = read_records(tmp_path / name)
        visits = 2 * (1 if vaccinate_ids else K) * (K - 1)
        assert fired.min() > 0 and rec["fired_fraction"] == [round(float(f) / visits, 5) for f in fired], (name, rec)
    subset = read_records(tmp_path / "subset")[0]["fired_fraction"]
    assert all(f > 3 / 12 for f in subset)         # the old denominator K (K - 1) could not exceed 3 / 12 here


def test_no_visits_log_no_rate(tmp_path):
    tel = ReconcileTelemetry(tmp_path, True, [f"en-{x}" for x in "abcd"], ["g0", "g1"], interval=1)
    tel.add(0, step_stats("sum"))
    tel.close()
    assert read_records(tmp_path)[0]["fired_fraction"] == [None, None]


def test_split_timings_reset_and_per_step():
    t = SplitTimings(capture_s=2.0, gram_s=4.0)
    assert t.per_step(2) == {"capture_s": 1.0, "gram_s": 2.0, "allreduce_s": 0.0, "reconcile_s": 0.0,
                             "write_back_s": 0.0}
    t.gather_s = 6.0                               # the naive baseline's phase is reported when it has one
    assert t.per_step(3)["gather_s"] == 2.0
    t.reset()
    assert t.per_step(1) == dict.fromkeys(("capture_s", "gram_s", "allreduce_s", "reconcile_s", "write_back_s",
                                           "gather_s"), 0.0)
