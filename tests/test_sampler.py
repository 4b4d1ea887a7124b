import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from massive_mt.data.sampler import TaskStepSampler, elastic_micro_batches, temperature_probs, token_budget_batches
from massive_mt.errors import ConfigError

# -- temperature_probs ----------------------------------------------------------------------


def test_temperature_one_is_proportional():
    np.testing.assert_allclose(temperature_probs([1, 3, 6], 1.0), [0.1, 0.3, 0.6])


def test_large_temperature_is_near_uniform_and_inf_is_uniform():
    np.testing.assert_allclose(temperature_probs([1, 1000, 10**6], 1e6), [1 / 3] * 3, atol=1e-4)
    np.testing.assert_array_equal(temperature_probs([1, 1000, 10**6], math.inf), [1 / 3] * 3)


def test_raising_temperature_flattens_monotonically():
    sizes = [10, 1000, 100_000]
    ps = [temperature_probs(sizes, T) for T in (1, 2, 5, 10, 100)]
    for low_t, high_t in zip(ps, ps[1:]):
        assert high_t[0] > low_t[0] and high_t[-1] < low_t[-1]


@pytest.mark.parametrize("sizes,T", [([], 1.0), ([1, 0], 1.0), ([1, -2], 1.0), ([1, 2], 0.0), ([1, 2], -1.0)])
def test_temperature_rejects_bad_input(sizes, T):
    with pytest.raises(ConfigError):
        temperature_probs(sizes, T)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 10**9), min_size=1, max_size=40),
    st.floats(0.05, 1e4, allow_nan=False),
)
def test_temperature_probs_properties(sizes, T):
    p = temperature_probs(sizes, T)
    assert p.shape == (len(sizes),)
    assert np.all(p > 0)
    assert abs(p.sum() - 1) < 1e-9
    # Order preserved: a larger task never gets a smaller probability.
    order = np.argsort(sizes, kind="stable")
    assert np.all(np.diff(p[order]) >= -1e-12)


# -- token_budget_batches -------------------------------------------------------------------


def _random_sizes(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(3, 60, n), rng.integers(3, 60, n)


@pytest.mark.parametrize("max_sentences", [None, 7])
def test_token_budget_respected_and_every_index_once(max_sentences):
    src, tgt = _random_sizes(2000, 1)
    batches = token_budget_batches(src, tgt, max_tokens=256, max_sentences=max_sentences, seed=3)
    lengths = np.maximum(src, tgt)
    for b in batches:
        assert len(b) * lengths[b].max() <= 256
        if max_sentences:
            assert len(b) <= max_sentences
    all_idx = np.concatenate(batches)
    np.testing.assert_array_equal(np.sort(all_idx), np.arange(2000))


def test_token_budget_buckets_similar_lengths_and_fills_batches():
    src, tgt = _random_sizes(5000, 2)
    lengths = np.maximum(src, tgt)
    batches = token_budget_batches(src, tgt, max_tokens=512)
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    assert spread <= 2  # sorted packing: a batch spans few distinct lengths
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert padded / lengths.sum() < 1.1  # little padding
    assert len(batches) < 1.2 * lengths.sum() / 512 + 60  # close to the minimal number of batches


def test_token_budget_tiebreak_is_seeded():
    src = tgt = np.full(100, 10)
    a = token_budget_batches(src, tgt, 50, seed=1)
    b = token_budget_batches(src, tgt, 50, seed=1)
    c = token_budget_batches(src, tgt, 50, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_token_budget_sentence_longer_than_budget_names_both():
    with pytest.raises(ConfigError, match=r"max_tokens=100.*300 tokens"):
        token_budget_batches([10, 300], [10, 20], max_tokens=100)


def test_token_budget_empty_and_bad_args():
    assert token_budget_batches([], [], 10) == []
    with pytest.raises(ConfigError):
        token_budget_batches([1, 2], [1], 10)
    with pytest.raises(ConfigError):
        token_budget_batches([1], [1], 0)


# -- TaskStepSampler ------------------------------------------------------------------------

TASKS = ["en-de", "en-fr", "fr-en", "en-pt_BR", "sw-en", "en-zh"]


def _batches(num_batches=(40, 3, 17, 8, 1, 25)):
    # Batch k of task t holds globally unique ids so that batches can be told apart.
    out, next_id = {}, 0
    for task, n in zip(TASKS, num_batches):
        out[task] = [np.arange(next_id + 4 * k, next_id + 4 * k + 4) for k in range(n)]
        next_id += 4 * n
    return out


def _sampler(rank=0, world_size=1, K=3, m=2, seed=7, batches=None):
    probs = temperature_probs([40, 3, 17, 8, 1, 25], 5.0)
    return TaskStepSampler(TASKS, batches or _batches(), probs, K, m, world_size, rank, seed)


def _key(plan):
    return [(task, [b.tolist() for b in micro]) for task, micro in plan]


def test_plan_shape_one_task_per_micro_batch():
    s = _sampler(K=3, m=2)
    batches = _batches()
    for step in range(20):
        plan = s.plan(step)
        tasks = [t for t, _ in plan]
        assert len(tasks) == 3 and len(set(tasks)) == 3
        assert tasks == sorted(tasks, key=TASKS.index)  # canonical order
        for task, micro in plan:
            assert len(micro) == 2
            for b in micro:  # every micro-batch is one of that task's batches
                assert any(np.array_equal(b, x) for x in batches[task])


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_agree_on_tasks_and_split_micro_batches(world_size):
    # Tasks with many batches so that no step wraps inside an epoch: then ranks are disjoint.
    batches = _batches((64, 64, 64, 64, 64, 64))
    samplers = [_sampler(rank=r, world_size=world_size, m=2, batches=batches) for r in range(world_size)]
    for step in range(12):
        plans = [s.plan(step) for s in samplers]
        assert len({tuple(t for t, _ in p) for p in plans}) == 1  # same tasks, same order
        for i in range(len(plans[0])):
            ids = [tuple(b.tolist()) for p in plans for b in p[i][1]]
            assert len(ids) == len(set(ids)) == 2 * world_size  # disjoint across ranks


def test_world_consumes_consecutive_batches_of_the_epoch():
    # One task, K=1: ranks together walk the epoch permutation without gaps or repeats.
    batches = {"en-fr": [np.array([k]) for k in range(12)]}
    samplers = [TaskStepSampler(["en-fr"], batches, [1.0], 1, 3, 2, r, seed=1) for r in range(2)]
    seen = []
    for step in range(2):
        plans = [s.plan(step) for s in samplers]
        for j in range(3):
            for r in range(2):
                seen.append(int(plans[r][0][1][j][0]))
    assert sorted(seen) == list(range(12))  # one full epoch, each batch once
    assert samplers[0].state_dict()["epoch"] == [1]  # completed passes per task


def test_small_task_wraps_across_epochs():
    s = _sampler(K=6, m=3, world_size=1)  # "sw-en" has a single batch
    for step in range(5):
        plan = dict(s.plan(step))
        assert len(plan["sw-en"]) == 3
    assert s.state_dict()["epoch"][s.tasks.index("sw-en")] == 15


def test_task_choice_depends_only_on_seed_and_step():
    a, b = _sampler(seed=11), _sampler(seed=11)
    tasks_a = [[t for t, _ in a.plan(s)] for s in range(30)]
    assert all(b.choose_tasks(s) == [TASKS.index(t) for t in tasks_a[s]] for s in range(30))
    assert [a.choose_tasks(s) for s in range(30)] != [_sampler(seed=12).choose_tasks(s) for s in range(30)]
    # Fresh sampler, same seed: identical plans.
    c = _sampler(seed=11)
    d = _sampler(seed=11)
    assert [_key(c.plan(s)) for s in range(10)] == [_key(d.plan(s)) for s in range(10)]


def test_plan_rejects_out_of_order_steps():
    s = _sampler()
    s.plan(0)
    with pytest.raises(ConfigError, match="expected step 1"):
        s.plan(2)
    with pytest.raises(ConfigError):
        s.plan(0)


@pytest.mark.parametrize("world_size,rank", [(1, 0), (2, 1)])
def test_resume_continues_exactly(world_size, rank):
    uninterrupted = _sampler(rank=rank, world_size=world_size)
    expected = [_key(uninterrupted.plan(s)) for s in range(20)]

    first = _sampler(rank=rank, world_size=world_size)
    for s in range(10):
        first.plan(s)
    state = json.loads(json.dumps(first.state_dict()))  # must survive JSON
    resumed = _sampler(rank=rank, world_size=world_size)
    resumed.load_state_dict(state)
    assert [_key(resumed.plan(s)) for s in range(10, 20)] == expected[10:]


def _world_plan(world_size, m, state=None, steps=range(0)):
    """Per step: [(task, the world's micro-batches in position order j * world_size + r)], one sampler per rank."""
    ranks = [_sampler(rank=r, world_size=world_size, m=m) for r in range(world_size)]
    out = []
    for sampler in ranks:
        if state is not None:
            sampler.load_state_dict(state, elastic=True)
    for s in steps:
        plans = [sampler.plan(s) for sampler in ranks]
        out.append([(task, [plans[r][k][1][j].tolist() for j in range(m) for r in range(world_size)])
                    for k, (task, _) in enumerate(plans[0])])
    return out, ranks[0]


@pytest.mark.parametrize("old,new", [((2, 2), (1, 4)), ((1, 4), (2, 2)), ((2, 2), (4, 1)), ((4, 1), (2, 2))])
def test_elastic_resume_keeps_tasks_cursors_and_batches(old, new):
    """A resume on another world size N with m rescaled so that m * N is kept: the task sequence and
    every micro-batch of every step equal the uninterrupted run's (only their split over ranks differs)."""
    m, why = elastic_micro_batches(old[1], old[0], new[0], configured_m=old[1])
    assert m == new[1] and "kept" in why
    uninterrupted, _ = _world_plan(*old, steps=range(20))
    _, first = _world_plan(*old, steps=range(10))
    resumed, sampler = _world_plan(*new, state=json.loads(json.dumps(first.state_dict())), steps=range(10, 20))
    assert resumed == uninterrupted[10:]
    assert sampler.state_dict()["world_size"] == new[0] and sampler.state_dict()["micro_batches_per_task"] == new[1]


def test_elastic_resume_when_the_world_does_not_divide_the_batch():
    """2 ranks x m=1 resumed on 3: m stays the configured 1 and a step takes 3 micro-batches per task;
    the task sequence and the per-task cursors carry over, so each task's batches continue where
    the 2-rank run left them (the epoch permutation is the same)."""
    m, why = elastic_micro_batches(1, 2, 3, configured_m=1)
    assert m == 1 and "cannot be split over 3 ranks" in why and "3 micro-batches per task" in why
    _, first = _world_plan(2, 1, steps=range(10))
    state = first.state_dict()
    resumed, sampler = _world_plan(3, 1, state=state, steps=range(10, 11))
    assert [t for t, _ in resumed[0]] == [TASKS[i] for i in first.choose_tasks(10)]
    stream = _sampler(world_size=2, m=1)           # the 2-rank run's stream of each task, from the saved cursor
    stream.load_state_dict(state)
    for task, got in resumed[0]:
        ti = TASKS.index(task)
        assert got == [stream.batches[task][b].tolist() for b in stream._take(ti, 3)]
        assert (sampler._epoch[ti], sampler._cursor[ti]) == (stream._epoch[ti], stream._cursor[ti])


def test_elastic_resume_is_refused_without_elastic():
    state = _sampler(world_size=2, m=1).state_dict()
    with pytest.raises(ConfigError, match="micro_batches_per_task"):
        _sampler(world_size=1, m=2).load_state_dict(state)
    _sampler(world_size=1, m=2).load_state_dict(state, elastic=True)


def test_state_from_rank0_resumes_other_ranks():
    r0, r1, ref = _sampler(rank=0, world_size=2), _sampler(rank=1, world_size=2), _sampler(rank=1, world_size=2)
    for s in range(5):
        r0.plan(s)
        ref.plan(s)
    r1.load_state_dict(r0.state_dict())
    assert _key(r1.plan(5)) == _key(ref.plan(5))


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"seed": 8}, "seed"),
        ({"K": 2}, "tasks_per_step"),
        ({"m": 1}, "micro_batches_per_task"),
        ({"world_size": 2}, "world_size"),
        ({"batches": _batches((40, 3, 17, 8, 2, 25))}, "num_batches"),
    ],
)
def test_incompatible_resume_is_rejected(kwargs, field):
    state = _sampler().state_dict()
    with pytest.raises(ConfigError, match=field):
        _sampler(**kwargs).load_state_dict(state)


def test_resume_with_different_tasks_is_rejected():
    state = _sampler().state_dict()
    other = TaskStepSampler(TASKS[:3], _batches(), [1 / 3] * 3, 1, 1)
    with pytest.raises(ConfigError, match="tasks"):
        other.load_state_dict(state)


def test_constructor_validation():
    with pytest.raises(ConfigError, match="tasks_per_step=7"):
        _sampler(K=7)
    with pytest.raises(ConfigError, match="rank"):
        _sampler(rank=2, world_size=2)
    with pytest.raises(ConfigError, match="without micro-batches"):
        TaskStepSampler(["a-b"], {"a-b": []}, [1.0], 1, 1)


def test_task_frequencies_flatten_with_large_k():
    probs = temperature_probs([40, 3, 17, 8, 1, 25], 1.0)
    s1 = TaskStepSampler(TASKS, _batches(), probs, 1, 1, seed=0)
    s5 = TaskStepSampler(TASKS, _batches(), probs, 5, 1, seed=0)
    f1, f5 = s1.task_frequencies(2000), s5.task_frequencies(2000)
    np.testing.assert_allclose(f1, probs, atol=0.03)  # K=1: frequencies follow p
    assert np.ptp(f5) < np.ptp(probs)  # K=5 of 6: much flatter than p
    assert s1.step == 0  # helper does not advance the state
