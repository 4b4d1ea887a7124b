import copy
import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reference     # tests/reference.py
from massive_mt.reconcile import (METHODS, Corrections, GradVacState, MethodOptions, NoState, make_state, reconcile,
                                  register, update_norm_sq)

F64 = torch.float64
FAST = settings(max_examples=60, deadline=None, derandomize=True)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def grams_of(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([g @ g.T for g in grads])


def updates_of(grads, weights):
    return [w @ g for w, g in zip(weights, grads)]


def corrected(grads, stats, k):
    """The corrected vectors g'_i = sum_j C[i, j] g_j of group k."""
    return stats.coef[k] @ grads[k]


def cos(x, y):
    return float(x @ y / (x.norm() * y.norm()))


# ---------------------------------------------------------------------------------------------
# Gram form == textbook full-vector reference

@st.composite
def problems(draw):
    n_tasks = draw(st.integers(1, 6))
    return dict(
        method=draw(st.sampled_from(tuple(METHODS))),
        n_tasks=n_tasks,
        K=draw(st.integers(1, n_tasks)),
        sizes=draw(st.lists(st.integers(4, 12), min_size=1, max_size=3)),
        ema_rate=draw(st.sampled_from([0.01, 0.3, 1.0])),
        vaccinate_ids=draw(st.none() | st.frozensets(st.integers(0, n_tasks - 1))),
        steps=draw(st.integers(1, 3)),
        zero_prob=draw(st.sampled_from([0.0, 0.2])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@FAST
@given(problems())
def test_gram_form_matches_full_vector_reference(p):
    data = gen(p["seed"])
    n_groups, K = len(p["sizes"]), p["K"]
    options = dict(ema_rate=p["ema_rate"], vaccinate_ids=p["vaccinate_ids"])
    state = make_state(p["method"], n_groups, p["n_tasks"])
    if p["method"] == "gradvac":  # start from non-trivial targets
        state.load_state_dict({"phi_hat": torch.rand(n_groups, p["n_tasks"], p["n_tasks"],
                                                     generator=data, dtype=F64) * 1.8 - 0.9})
    ref_state = copy.deepcopy(state)
    for step in range(p["steps"]):
        task_ids = torch.randperm(p["n_tasks"], generator=data)[:K].tolist()
        grads = []
        for n in p["sizes"]:
            scale = 10 ** (torch.rand(K, 1, generator=data, dtype=F64) * 4 - 2)
            keep = (torch.rand(K, 1, generator=data) >= p["zero_prob"]).to(F64)
            grads.append(torch.randn(K, n, generator=data, dtype=F64) * scale * keep)
        weights, stats = reconcile(p["method"], grams_of(grads), task_ids, state, gen(step), **options)
        ref_updates, ref_state = reference.reconcile(p["method"], grads, task_ids, ref_state, gen(step), **options)
        for u, r, g in zip(updates_of(grads, weights), ref_updates, grads):
            scale = max(float(r.norm()), float(g.norm(dim=1).sum()))
            assert float((u - r).norm()) <= 1e-9 * scale
        assert torch.isfinite(weights).all()
        assert torch.allclose(weights, stats.coef.sum(1), rtol=0, atol=0)
        if p["method"] == "gradvac":
            assert torch.allclose(state.phi_hat, ref_state.phi_hat, rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# GradVac and PCGrad semantics

@FAST
@given(st.integers(0, 2**31 - 1), st.floats(-0.95, 0.95), st.sampled_from([0.01, 0.5]))
def test_gradvac_correction_reaches_target(seed, target, ema_rate):
    g = torch.randn(2, 5, generator=gen(seed), dtype=F64)
    phi = cos(g[0], g[1])
    state = make_state("gradvac", 1, 3)
    state.phi_hat[0, 2, 0] = target
    _, stats = reconcile("gradvac", grams_of([g]), [2, 0], state, gen(0),
                         ema_rate=ema_rate, vaccinate_ids={2})
    assert bool(stats.fired[0, 0, 1]) == (phi < target)
    g0 = corrected([g], stats, 0)[0]
    assert math.isclose(cos(g0, g[1]), target if phi < target else phi, abs_tol=1e-9)
    assert math.isclose(float(state.phi_hat[0, 2, 0]), (1 - ema_rate) * target + ema_rate * phi, abs_tol=1e-12)
    assert float(state.phi_hat[0, 0, 2]) == 0.0  # task 0 is not vaccinated: never visited


@FAST
@given(st.integers(0, 2**31 - 1))
def test_pcgrad_two_tasks_leaves_no_conflict(seed):
    g = torch.randn(2, 4, generator=gen(seed), dtype=F64)
    _, stats = reconcile("pcgrad", grams_of([g]), [0, 1], NoState(), gen(seed))
    c = corrected([g], stats, 0)
    for i, j in ((0, 1), (1, 0)):
        assert float(c[i] @ g[j]) >= -1e-12 * float(g[i].norm() * g[j].norm())
    assert int(stats.n_fired[0]) == (2 if float(g[0] @ g[1]) < 0 else 0)


def test_gradvac_ema_updates_on_every_visit():
    g = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]], dtype=F64)  # cos 0.6 above the target 0
    state = make_state("gradvac", 1, 2)
    for step in range(3):
        before = state.phi_hat.clone()
        weights, stats = reconcile("gradvac", grams_of([g]), [0, 1], state, gen(step), ema_rate=0.25)
        assert torch.equal(weights, torch.ones(1, 2, dtype=F64))
        assert int(stats.n_fired[0]) == 0
        expected = before * 0.75 + 0.25 * 0.6
        assert torch.allclose(state.phi_hat[0, [0, 1], [1, 0]], expected[0, [0, 1], [1, 0]], atol=1e-15)
    assert float(state.phi_hat[0, 0, 1]) > 0.3


def test_gradvac_target_of_one_is_guarded():
    g = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=F64)
    state = make_state("gradvac", 1, 2)
    state.phi_hat.fill_(1.0)
    weights, stats = reconcile("gradvac", grams_of([g]), [0, 1], state, gen(0), ema_rate=0.5)
    assert torch.equal(weights, torch.ones(1, 2, dtype=F64))
    assert torch.isfinite(state.phi_hat).all()
    assert math.isclose(float(state.phi_hat[0, 0, 1]), 0.5 + 0.5 * math.sqrt(0.5), abs_tol=1e-15)


# ---------------------------------------------------------------------------------------------
# random visiting order

ORDER_MATTERS = torch.tensor([[1.0, 0.0], [-0.5, 1.0], [-0.5, -1.0]], dtype=F64)  # task 0 conflicts with both


def test_each_group_draws_its_own_order():
    grads = [ORDER_MATTERS, ORDER_MATTERS.clone()]
    differ = 0
    for seed in range(10):
        weights, stats = reconcile("pcgrad", grams_of(grads), [0, 1, 2], NoState(), gen(seed))
        ref, _ = reference.reconcile("pcgrad", grads, [0, 1, 2], NoState(), gen(seed))
        for u, r in zip(updates_of(grads, weights), ref):
            assert torch.allclose(u, r, rtol=0, atol=1e-12)
        # the draws of group 0 then group 1: (i = 0, 1, 2) per group
        g = gen(seed)
        perms = [[torch.randperm(2, generator=g).tolist() for _ in range(3)] for _ in range(2)]
        same_order = perms[0] == perms[1]
        for k in range(2):  # task 0 visits others[perm] = [1, 2] or [2, 1]
            expected = [0.48, -0.24] if perms[k][0] == [0, 1] else [0.48, 0.24]
            assert torch.allclose(corrected(grads, stats, k)[0], torch.tensor(expected, dtype=F64), atol=1e-12)
        assert torch.equal(weights[0], weights[1]) == same_order
        differ += not same_order
    assert differ > 0


def test_same_seed_same_result_other_seed_can_differ():
    grads = [torch.randn(4, 3, generator=gen(1), dtype=F64) for _ in range(2)]
    results = {}
    for method in ("pcgrad", "gradvac"):
        for seed in range(8):
            state = make_state(method, 2, 4)
            results[method, seed], _ = reconcile(method, grams_of(grads), [0, 1, 2, 3], state, gen(seed),
                                                 ema_rate=0.5)
            state2 = make_state(method, 2, 4)
            again, _ = reconcile(method, grams_of(grads), [0, 1, 2, 3], state2, gen(seed), ema_rate=0.5)
            assert torch.equal(again, results[method, seed])
            assert state.state_dict().keys() == state2.state_dict().keys()
            for key, value in state.state_dict().items():
                assert torch.equal(value, state2.state_dict()[key])
        distinct = {tuple(results[method, s].flatten().tolist()) for s in range(8)}
        assert len(distinct) > 1


# ---------------------------------------------------------------------------------------------
# trivial cases

@pytest.mark.parametrize("method", list(METHODS))
def test_single_task_is_identity(method):
    grads = [torch.randn(1, 5, generator=gen(3), dtype=F64)]
    state = make_state(method, 1, 3)
    before = state.state_dict()
    g = gen(0)
    weights, stats = reconcile(method, grams_of(grads), [2], state, g)
    assert torch.equal(weights, torch.ones(1, 1, dtype=F64))
    assert torch.equal(g.get_state(), gen(0).get_state())  # nothing drawn
    for key, value in before.items():
        assert torch.equal(state.state_dict()[key], value)


def test_sum_is_plain_sum():
    grads = [torch.randn(3, n, generator=gen(n), dtype=F64) for n in (2, 7)]
    weights, stats = reconcile("sum", grams_of(grads), [4, 0, 2], NoState(), gen(0))
    assert torch.equal(weights, torch.ones(2, 3, dtype=F64))
    for u, g in zip(updates_of(grads, weights), grads):
        assert torch.equal(u, torch.ones(3, dtype=F64) @ g)
    assert stats.n_fired.tolist() == [0, 0]


def test_update_norm_sq_and_cosines():
    grads = [torch.randn(3, n, generator=gen(n), dtype=F64) for n in (4, 6)]
    weights, stats = reconcile("pcgrad", grams_of(grads), [0, 1, 2], NoState(), gen(5))
    norms = update_norm_sq(grams_of(grads), weights)
    for nsq, u in zip(norms, updates_of(grads, weights)):
        assert math.isclose(float(nsq), float(u @ u), rel_tol=1e-12)
    for k, g in enumerate(grads):
        assert math.isclose(float(stats.cos[k, 0, 2]), cos(g[0], g[2]), abs_tol=1e-12)


# ---------------------------------------------------------------------------------------------
# zero and non-finite values

@pytest.mark.parametrize("method", ["pcgrad", "gradvac"])
def test_zero_norm_task_makes_its_visits_unusable(method):
    grads = [torch.randn(3, 4, generator=gen(k), dtype=F64) for k in range(2)]
    grads[0][1] = 0.0
    state = make_state(method, 2, 3)
    ref_state = copy.deepcopy(state)
    for step in range(2):
        weights, stats = reconcile(method, grams_of(grads), [0, 1, 2], state, gen(step))
        ref, ref_state = reference.reconcile(method, grads, [0, 1, 2], ref_state, gen(step))
        assert torch.isfinite(weights).all()
        for u, r in zip(updates_of(grads, weights), ref):
            assert torch.allclose(u, r, rtol=1e-12, atol=1e-12)
        assert stats.n_unusable.tolist() == [4, 0]
        assert stats.unusable[0, 1].sum() == 2 and stats.unusable[0, :, 1].sum() == 2
        assert float(weights[0, 1]) == 1.0  # never added to another task
    if method == "gradvac":
        assert torch.equal(state.phi_hat[0, 1], torch.zeros(3, dtype=F64))
        assert torch.equal(state.phi_hat[0, :, 1], torch.zeros(3, dtype=F64))
        assert (state.phi_hat[1] != 0).sum() == 6


@pytest.mark.parametrize("method", list(METHODS))
def test_non_finite_task_takes_no_part(method):
    grads = [torch.randn(3, 4, generator=gen(k), dtype=F64) for k in range(2)]
    grads[1][2, 0] = math.inf
    state = make_state(method, 2, 3)
    weights, stats = reconcile(method, grams_of(grads), [0, 1, 2], state, gen(0), ema_rate=0.5)
    assert torch.isfinite(weights).all()
    assert stats.nonfinite.tolist() == [False, True]
    assert float(weights[1, 2]) == 1.0
    if method != "sum":
        assert stats.n_unusable.tolist() == [0, 4]
        assert stats.unusable[1, 2].sum() == 2 and stats.unusable[1, :, 2].sum() == 2
        assert torch.equal(stats.coef[1, :, 2], torch.tensor([0.0, 0.0, 1.0], dtype=F64))
        assert torch.equal(stats.coef[1, 2], torch.tensor([0.0, 0.0, 1.0], dtype=F64))
    if method == "gradvac":
        assert torch.isfinite(state.phi_hat).all()
        assert (state.phi_hat[1, 2] == 0).all() and (state.phi_hat[1, :, 2] == 0).all()
        assert state.phi_hat[1, 0, 1] != 0 and state.phi_hat[1, 1, 0] != 0


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_whole_gram_non_finite_gives_the_sum_update(method, bad):
    grams = torch.full((1, 3, 3), bad, dtype=F64)
    state = make_state(method, 1, 3)
    weights, stats = reconcile(method, grams, [0, 1, 2], state, gen(0))
    assert torch.equal(weights, torch.ones(1, 3, dtype=F64))
    assert bool(stats.nonfinite[0])
    assert int(stats.n_unusable[0]) == (0 if method == "sum" else 6)
    assert torch.equal(stats.cos, torch.zeros(1, 3, 3, dtype=F64))


@pytest.mark.parametrize("method", ["pcgrad", "gradvac"])
def test_non_finite_off_diagonal_gives_plain_group(method):
    g = torch.tensor([[1.0, 0.0], [-1.0, 0.5], [0.2, -1.0]], dtype=F64)
    grams = torch.stack([g @ g.T, g @ g.T])
    grams[0, 0, 1] = grams[0, 1, 0] = math.nan
    weights, stats = reconcile(method, grams, [0, 1, 2], make_state(method, 2, 3), gen(0))
    assert torch.equal(weights[0], torch.ones(3, dtype=F64))
    assert stats.nonfinite.tolist() == [True, False]
    assert int(stats.n_fired[1]) > 0


# ---------------------------------------------------------------------------------------------
# state

def test_state_dict_round_trip_is_exact():
    state = make_state("gradvac", 3, 5)
    state.phi_hat.uniform_(-1, 1, generator=gen(0))
    buf = io.BytesIO()
    torch.save(state.state_dict(), buf)
    buf.seek(0)
    restored = make_state("gradvac", 3, 5)
    restored.load_state_dict(torch.load(buf))
    assert torch.equal(restored.phi_hat, state.phi_hat) and restored.phi_hat.dtype == F64
    saved = state.state_dict()
    state.phi_hat.zero_()
    assert saved["phi_hat"].abs().sum() > 0  # a copy, not a view
    with pytest.raises(ValueError):
        make_state("gradvac", 2, 5).load_state_dict(saved)
    assert isinstance(make_state("sum", 3, 5), NoState) and make_state("pcgrad", 3, 5).state_dict() == {}
    NoState().load_state_dict({})
    assert isinstance(state, GradVacState)


def test_bad_arguments():
    grams = torch.eye(2, dtype=F64)[None]
    with pytest.raises(ValueError):
        reconcile("cagrad", grams, [0, 1], NoState(), gen(0))
    with pytest.raises(ValueError):
        reconcile("sum", grams, [0], NoState(), gen(0))
    with pytest.raises(ValueError):
        reconcile("gradvac", grams, [0, 5], make_state("gradvac", 1, 3), gen(0))
    with pytest.raises(ValueError):
        reconcile("gradvac", grams, [0, 1], make_state("gradvac", 1, 3), gen(0), ema_rate=2.0)


def test_a_registered_method_is_dispatched_with_its_state_and_options():
    """Adding a method = one registered function: reconcile() and make_state() find it by name."""
    seen = {}

    class HalveOptions(MethodOptions):
        factor: float = 0.5

    @register("halve", make_state=lambda n_groups, n_tasks: {"calls": 0}, options=HalveOptions)
    def halve(grams, task_ids, state, generator, factor=0.5):
        state["calls"] += 1
        seen["options"] = factor
        n_groups, K, _ = grams.shape
        z = torch.zeros(n_groups, K, K, dtype=torch.bool)
        return Corrections(factor * torch.eye(K, dtype=F64).expand(n_groups, K, K), z, z, z, z[:, 0, 0])

    try:
        state = make_state("halve", 2, 4)
        weights, stats = reconcile("halve", torch.eye(3, dtype=F64).expand(2, 3, 3), [0, 2, 3], state, gen(0),
                                   factor=0.25, ema_rate=0.3)      # ema_rate is GradVac's: not passed on
        assert torch.equal(weights, torch.full((2, 3), 0.25, dtype=F64))
        assert state == {"calls": 1} and seen["options"] == 0.25 and list(METHODS)[-1] == "halve"
    finally:
        del METHODS["halve"]
