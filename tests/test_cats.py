"""CATS in Gram form (massive_mt/reconcile/cats.py) against the full-vector reference, and its behaviour."""
import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reference     # tests/reference.py
from massive_mt.engine.config import load_config
from massive_mt.errors import ConfigError
from massive_mt.reconcile import make_state, reconcile
from massive_mt.reconcile.cats import (CATSConfig, CATSState, LookAhead, cats, check_state, corrected_gram, curvature,
                                       is_meta_step, lookahead_gradient, meta_step, project_simplex, softmax_scales,
                                       softmax_step_scales, step_scales, task_scales)

F64 = torch.float64
FAST = settings(max_examples=60, deadline=None, derandomize=True)


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# projection

@FAST
@given(st.integers(1, 8), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1), st.floats(0.01, 10.0))
def test_projection_is_the_closest_feasible_point(n, floor, seed, spread):
    lower = floor / n
    v = torch.randn(n, generator=gen(seed), dtype=F64) * spread
    x = project_simplex(v, lower)
    assert abs(float(x.sum()) - 1.0) < 1e-12 and bool((x >= lower - 1e-15).all())
    assert torch.allclose(x, reference._project(v, lower), atol=1e-12)
    # optimality: no feasible direction (move mass from i to j) decreases the distance to v
    for i in range(n):
        for j in range(n):
            if i != j and x[i] > lower + 1e-9:
                d = torch.zeros(n, dtype=F64)
                d[i], d[j] = -1e-6, 1e-6
                assert float(((x + d - v) ** 2).sum()) >= float(((x - v) ** 2).sum()) - 1e-15


def test_projection_keeps_feasible_points_and_pins_the_floor():
    v = torch.tensor([0.2, 0.3, 0.5], dtype=F64)
    assert torch.allclose(project_simplex(v, 0.1), v)
    assert torch.equal(project_simplex(torch.tensor([5.0, -3.0], dtype=F64), 0.5), torch.tensor([0.5, 0.5], dtype=F64))
    assert torch.allclose(project_simplex(torch.tensor([5.0, -3.0, 0.0], dtype=F64), 0.1),
                          torch.tensor([0.8, 0.1, 0.1], dtype=F64))


# ---------------------------------------------------------------------------------------------
# Gram form == full-vector reference, several steps, every option, composed with the base methods

@st.composite
def problems(draw):
    n_tasks = draw(st.integers(2, 6))
    return dict(n_tasks=n_tasks, K=draw(st.integers(2, n_tasks)),
                sizes=draw(st.lists(st.integers(3, 9), min_size=1, max_size=3)),
                base=draw(st.sampled_from(["sum", "pcgrad", "gradvac"])),
                proxy=draw(st.sampled_from(["combined", "diagonal"])),
                param=draw(st.sampled_from(["simplex", "softmax"])),
                floor=draw(st.sampled_from([0.05, 0.3, 1.0])),
                lr_alpha=draw(st.sampled_from([0.0, 0.05, 0.5])),
                eps=draw(st.sampled_from([0.0, 5.0, 1e6])),
                interval=draw(st.integers(1, 2)), warmup=draw(st.integers(0, 2)),
                valid=draw(st.booleans()), steps=draw(st.integers(1, 5)),
                seed=draw(st.integers(0, 2**31 - 1)))


def _run_both(p):
    """Gram form and reference over p["steps"] steps; objective `lookahead` (p["objective"]) with the
    step's learning rate rising linearly to p["lr"] (a warm-up) and clipping at p["clip_norm"]."""
    look = p.get("objective") == "lookahead"
    cfg = CATSConfig(lr_alpha=p["lr_alpha"], lr_lam=0.05, eps=p["eps"], interval=p.get("interval", 1),
                     warmup=p["warmup"], floor=p["floor"], proxy=p["proxy"], param=p["param"],
                     **(dict(objective="lookahead", meta_data="valid") if look else {}))
    T, K, g = p["n_tasks"], p["K"], gen(p["seed"])
    ours, ref = CATSState.uniform(T, p["param"]), CATSState.uniform(T, p["param"])
    base_ours = make_state(p["base"], len(p["sizes"]), T)
    base_ref = copy.deepcopy(base_ours)
    history = []
    for step in range(p["steps"]):
        ids = torch.randperm(T, generator=g)[:K].tolist()
        scale = float(torch.rand((), generator=g, dtype=F64)) * 3 + 0.5
        grads = [torch.randn(K, n, generator=g, dtype=F64) * scale for n in p["sizes"]]
        losses = torch.rand(K, generator=g, dtype=F64) * 5
        valid = [torch.randn(K, n, generator=g, dtype=F64) for n in p["sizes"]] if look or p["valid"] else None
        lr = p["lr"] * (step + 1) / p["steps"] if look else 0.0
        # ours: Gram form (with `lookahead`, also the training-valid cross Grams)
        grams = torch.stack([x @ x.T for x in grads])
        _, stats = reconcile(p["base"], grams, ids, base_ours, gen(step), ema_rate=0.5)
        meta_gram = (torch.stack([x @ x.T for x in valid]).sum(0) if valid is not None
                     else corrected_gram(grams, stats.coef))
        la = LookAhead(torch.stack([x @ v.T for x, v in zip(grads, valid)]), grams, lr, p["clip_norm"]) if look else None
        weights, cstats = cats(stats.coef, ids, ours, cfg, losses, meta_gram, la)
        got = [w @ x for w, x in zip(weights, grads)]
        # reference: explicit vectors (autograd)
        corrected, base_ref = reference.correct(p["base"], grads, ids, base_ref, gen(step), ema_rate=0.5)
        vectors = torch.cat(valid if valid is not None else corrected, 1)
        extra = dict(update=torch.cat(corrected, 1), lr=lr, clip_norm=p["clip_norm"]) if look else {}
        beta, ref = reference.cats_step(ref, cfg, ids, losses, vectors, **extra)
        want = [K * beta @ c for c in corrected]
        history.append((got, want, cstats))
    return cfg, ours, ref, history


@FAST
@given(problems())
def test_gram_form_matches_full_vector_reference(p):
    _assert_gram_form_matches_reference(p)


def _assert_gram_form_matches_reference(p):
    cfg, ours, ref, history = _run_both(p)
    for got, want, _ in history:
        for a, b in zip(got, want):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)
    assert torch.allclose(task_scales(ours, cfg), ref.values if cfg.param == "simplex" else
                          cfg.floor / p["n_tasks"] + (1 - cfg.floor) * torch.softmax(ref.values, 0), atol=1e-10)
    assert ours.lam == pytest.approx(ref.lam, rel=1e-9, abs=1e-12)
    assert (ours.steps, ours.meta_steps) == (ref.steps, ref.meta_steps) == (
        p["steps"], sum(is_meta_step(CATSState(torch.zeros(1), steps=s), cfg) for s in range(p["steps"])))


def test_reference_moves_on_the_tested_problems():
    """The equivalence above is not vacuous: alpha and lam move on a typical problem."""
    p = dict(n_tasks=4, K=3, sizes=[5, 7], base="gradvac", proxy="combined", param="simplex", floor=0.1,
             lr_alpha=0.05, eps=0.0, interval=1, warmup=0, valid=False, steps=4, seed=3)
    cfg, ours, _, _ = _run_both(p)
    assert ours.lam > 0 and float((task_scales(ours, cfg) - 0.25).abs().max()) > 1e-3


# ---------------------------------------------------------------------------------------------
# the look-ahead objective: Gram form == autograd through the first-order valid loss after the step

@st.composite
def lookahead_problems(draw):
    n_tasks = draw(st.integers(2, 6))
    return dict(n_tasks=n_tasks, K=draw(st.sampled_from([n_tasks, draw(st.integers(2, n_tasks))])),
                sizes=draw(st.lists(st.integers(3, 9), min_size=1, max_size=3)),
                base=draw(st.sampled_from(["gradvac", "gradvac", "sum", "pcgrad"])),
                proxy=draw(st.sampled_from(["combined", "diagonal"])),
                param=draw(st.sampled_from(["simplex", "softmax"])),
                floor=draw(st.sampled_from([0.05, 0.3])), lr_alpha=draw(st.sampled_from([0.05, 0.5])), valid=True,
                eps=draw(st.sampled_from([0.0, 1e6])), lr=draw(st.sampled_from([0.01, 0.3])),
                clip_norm=draw(st.sampled_from([0.0, 1.0, 1e4])), warmup=draw(st.integers(0, 1)),
                steps=draw(st.integers(2, 5)), seed=draw(st.integers(0, 2**31 - 1)), objective="lookahead")


@FAST
@given(lookahead_problems())
def test_lookahead_gram_form_matches_autograd_reference(p):
    _assert_gram_form_matches_reference(p)


@pytest.mark.parametrize("clip_norm", [0.0, 0.5])
@pytest.mark.parametrize("K", [3, 5])
def test_lookahead_reference_moves_over_several_meta_steps(K, clip_norm):
    """Not vacuous: with GradVac as base, K = T and K < T, clipping off and active, the scales move
    by far more than the tolerance over several meta steps, and the Gram form follows them."""
    p = dict(n_tasks=5, K=K, sizes=[5, 7], base="gradvac", proxy="combined", param="simplex", floor=0.1,
             lr_alpha=0.5, eps=1e6, lr=0.3, clip_norm=clip_norm, warmup=0, steps=5, seed=11, objective="lookahead")
    cfg, ours, ref, history = _run_both(p)
    assert float((task_scales(ours, cfg) - 0.2).abs().max()) > 1e-2
    assert torch.allclose(task_scales(ours, cfg), ref.values, atol=1e-10)
    if clip_norm:        # the clipping really applied: the update is longer than the threshold
        assert all(float(sum((w ** 2).sum() for w in want)) > clip_norm ** 2 for _, want, _ in history)


def test_lookahead_gradient_by_finite_differences():
    """-lr * clip(beta) * u(beta) . sum_n v_n with the clipping factor's dependence on beta."""
    g = gen(4)
    K, sizes = 3, [4, 6]
    grads = [torch.randn(K, n, generator=g, dtype=F64) for n in sizes]
    valid = [torch.randn(K, n, generator=g, dtype=F64) for n in sizes]
    coef = torch.randn(2, K, K, generator=g, dtype=F64) * 0.3 + torch.eye(K, dtype=F64)
    look = LookAhead(torch.stack([x @ v.T for x, v in zip(grads, valid)]), torch.stack([x @ x.T for x in grads]),
                     0.2, 0.7)
    vsum = torch.cat(valid, 1).sum(0)

    def f(b):
        u = K * torch.cat([b @ c @ x for c, x in zip(coef, grads)])
        return float(-look.lr * min(1.0, look.clip_norm / (float(u.norm()) + 1e-6)) * u @ vsum)

    beta = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    h = 1e-6
    numeric = torch.tensor([(f(beta + h * e) - f(beta - h * e)) / (2 * h) for e in torch.eye(K, dtype=F64)], dtype=F64)
    assert K * float(torch.cat([beta @ c @ x for c, x in zip(coef, grads)]).norm()) > look.clip_norm   # clipped
    assert torch.allclose(lookahead_gradient(beta, coef, look), numeric, rtol=1e-6, atol=1e-8)


@FAST
@given(st.integers(2, 6), st.integers(2, 6), st.sampled_from(["simplex", "softmax"]),
       st.sampled_from(["combined", "diagonal"]), st.sampled_from([0.0, 0.5]), st.integers(0, 10**6))
def test_lookahead_scales_stay_uniform_when_all_tasks_have_the_same_gradient(T, K, param, proxy, clip_norm, seed):
    K = min(K, T)
    cfg = CATSConfig(objective="lookahead", meta_data="valid", lr_alpha=2.0, lr_lam=0.5, eps=0.0, param=param,
                     proxy=proxy)
    state, g = CATSState.uniform(T, param), gen(seed)
    for _ in range(6):
        ids = torch.randperm(T, generator=g)[:K].tolist()
        v = torch.randn(1, 7, generator=g, dtype=F64).expand(K, 7)          # every task: the same gradient
        coef = torch.eye(K, dtype=F64)[None]
        look = LookAhead((v @ v.T)[None], (v @ v.T)[None], 0.1, clip_norm)
        cats(coef, ids, state, cfg, torch.rand(K, generator=g, dtype=F64), v @ v.T, look)
        assert torch.allclose(task_scales(state, cfg), torch.full((T,), 1.0 / T, dtype=F64), rtol=0, atol=1e-12)
    assert state.meta_steps == 6 and state.lam > 0            # the meta steps ran, with the curvature term


@pytest.mark.parametrize("param", ["simplex", "softmax"])
@pytest.mark.parametrize("K", [4, 3])
def test_lookahead_lowers_the_scale_of_a_task_that_opposes_the_valid_gradients(param, K):
    """Task 0's training gradient points against the valid gradients of the step's tasks, the others'
    along them: its scale falls, meta step after meta step, whatever its loss. The `loss` objective
    on the same statistics (equal losses) leaves it where it is."""
    T, g = 4, gen(1)
    d = torch.randn(9, generator=g, dtype=F64)
    train = torch.stack([-d] + [d + 0.3 * torch.randn(9, generator=g, dtype=F64) for _ in range(K - 1)])
    valid = torch.stack([d + 0.3 * torch.randn(9, generator=g, dtype=F64) for _ in range(K)])
    coef = torch.eye(K, dtype=F64)[None]
    look = LookAhead((train @ valid.T)[None], (train @ train.T)[None], 0.1, 0.0)
    ids = [0, 1, 2, 3][:K]
    losses = torch.ones(K, dtype=F64)
    for objective, falls in (("lookahead", True), ("loss", False)):
        cfg = CATSConfig(objective=objective, meta_data="valid", lr_alpha=0.002, lr_lam=0.0, param=param)
        state, before = CATSState.uniform(T, param), []
        for _ in range(4):
            before.append(float(task_scales(state, cfg)[0]))
            cats(coef, ids, state, cfg, losses, valid @ valid.T, look)
        after = task_scales(state, cfg)
        if falls:
            assert all(b > a for b, a in zip(before, before[1:] + [float(after[0])])), before
            assert float(after[0]) < 1 / T - 1e-3 and bool((after[1:K] > 1 / T).all())
        else:
            assert float(after[0]) == pytest.approx(1 / T, abs=1e-15)


def test_lookahead_needs_valid_statistics_and_the_update():
    with pytest.raises(ConfigError, match=r"^config: field 'reconcile.cats.objective': lookahead needs meta_data: valid"):
        load_config(None, ["reconcile.method=cats", "reconcile.cats.objective=lookahead"])
    assert load_config(None, ["reconcile.method=cats", "reconcile.cats.objective=lookahead",
                              "reconcile.cats.meta_data=valid"]).reconcile.cats.objective == "lookahead"
    cfg = CATSConfig(objective="lookahead", meta_data="valid")
    with pytest.raises(ValueError, match="LookAhead"):
        cats(torch.eye(2, dtype=F64)[None], [0, 1], CATSState.uniform(2, "simplex"), cfg, torch.ones(2, dtype=F64),
             torch.eye(2, dtype=F64))
    assert CATSConfig().objective == "loss"


# ---------------------------------------------------------------------------------------------
# behaviour

@FAST
@given(st.integers(2, 7), st.sampled_from(["simplex", "softmax"]), st.floats(0.0, 1.0), st.integers(0, 10**6))
def test_alpha_stays_on_the_simplex_above_the_floor(T, param, floor, seed):
    floor = floor if param == "softmax" else max(floor, 1e-3)
    cfg = CATSConfig(lr_alpha=2.0, lr_lam=0.5, eps=0.1, floor=floor, param=param)
    state, g = CATSState.uniform(T, param), gen(seed)
    for _ in range(15):
        K = int(torch.randint(1, T + 1, (), generator=g))
        ids = torch.randperm(T, generator=g)[:K].tolist()
        V = torch.randn(K, 6, generator=g, dtype=F64) * 3
        meta_step(state, cfg, ids, torch.rand(K, generator=g, dtype=F64) * 10, V @ V.T)
        alpha = task_scales(state, cfg)
        assert abs(float(alpha.sum()) - 1.0) < 1e-12
        assert float(alpha.min()) >= floor / T - 1e-12
        assert state.lam >= 0


@pytest.mark.parametrize("floor", [0.0, 0.3, 1.0])
def test_softmax_step_scales_equal_the_ratio_and_stay_finite_where_alpha_underflows(floor):
    theta = torch.tensor([0.3, -1.2, 2.0, 0.0], dtype=F64)
    for ids in ([0, 2], [3], [1, 0, 3]):
        assert torch.allclose(softmax_step_scales(theta, floor, ids),
                              step_scales(softmax_scales(theta, floor), ids), rtol=1e-14, atol=0)
    # floor 0: softmax of these logits is exactly [0, 1]; a step that draws only task 0 got 0 / 0
    theta = torch.tensor([-800.0, 800.0], dtype=F64)
    state, cfg = CATSState(values=theta.clone()), CATSConfig(param="softmax", floor=floor)
    beta = softmax_step_scales(theta, floor, [0])
    assert torch.equal(beta, torch.ones(1, dtype=F64))
    weights, stats = cats(torch.eye(1, dtype=F64)[None], [0], state, cfg, torch.ones(1, dtype=F64),
                          torch.eye(1, dtype=F64))
    assert torch.isfinite(weights).all() and torch.isfinite(stats["beta"]).all() and math.isfinite(stats["proxy"])


def test_lam_rises_while_the_proxy_exceeds_eps_and_falls_to_zero_once_it_holds():
    T = 3
    V = torch.eye(T, dtype=F64) * 2.0                       # ||sum beta_i v_i||^2 = 4 ||beta||^2 >= 4 / 3
    losses = torch.ones(T, dtype=F64)
    cfg = CATSConfig(lr_alpha=0.0, lr_lam=0.1, eps=0.5)
    state = CATSState.uniform(T, "simplex")
    lams = []
    for _ in range(5):
        stats = meta_step(state, cfg, [0, 1, 2], losses, V @ V.T)
        assert stats["proxy"] > cfg.eps
        lams.append(state.lam)
    assert all(b > a for a, b in zip([0.0] + lams, lams))
    assert lams[0] == pytest.approx(0.1 * (4 / 3 - 0.5))
    cfg.eps = 10.0                                           # the constraint holds: lam decreases to 0
    for _ in range(100):
        meta_step(state, cfg, [0, 1, 2], losses, V @ V.T)
    assert state.lam == 0.0


def test_zero_learning_rate_is_the_sum_update():
    """lr_alpha = 0: alpha stays uniform, every weight is 1, the update is `sum`'s, sum_i g_i."""
    cfg = CATSConfig(lr_alpha=0.0, lr_lam=1.0, eps=0.0)
    T, g = 5, gen(0)
    state = CATSState.uniform(T, "simplex")
    for _ in range(6):
        ids = torch.randperm(T, generator=g)[:3].tolist()
        grams = torch.randn(2, 3, 4, generator=g, dtype=F64)
        grams = grams @ grams.transpose(1, 2)
        coef = torch.eye(3, dtype=F64).expand(2, 3, 3)
        w, stats = cats(coef, ids, state, cfg, torch.rand(3, generator=g, dtype=F64), grams.sum(0))
        assert torch.allclose(w, torch.ones(2, 3, dtype=F64), rtol=0, atol=1e-15) and stats["meta"]
    assert torch.allclose(task_scales(state, cfg), torch.full((T,), 0.2, dtype=F64), atol=1e-15)
    assert state.lam > 0                                    # the multiplier still moved


def test_descent_moves_scale_to_the_lower_loss_task_and_the_penalty_counteracts_it():
    """dJ/dbeta = L + 2 lam G beta: with lam = 0 scale moves to the task of lower loss; with a large
    lam, towards the task whose gradient contributes less curvature."""
    cfg = CATSConfig(lr_alpha=0.1, lr_lam=0.0, eps=0.0, floor=0.01)
    G = torch.diag(torch.tensor([1.0, 100.0], dtype=F64))
    s = CATSState.uniform(2, "simplex")
    meta_step(s, cfg, [0, 1], torch.tensor([2.0, 1.0], dtype=F64), G)
    assert s.values[1] > s.values[0]
    s = CATSState.uniform(2, "simplex")
    s.lam = 1.0
    meta_step(s, cfg, [0, 1], torch.tensor([2.0, 1.0], dtype=F64), G)
    assert s.values[0] > s.values[1]


def test_only_the_step_tasks_move_and_keep_their_mass():
    cfg = CATSConfig(lr_alpha=0.3, lr_lam=0.0)
    s = CATSState.uniform(5, "simplex")
    meta_step(s, cfg, [1, 3], torch.tensor([3.0, 1.0], dtype=F64), torch.eye(2, dtype=F64))
    assert torch.equal(s.values[[0, 2, 4]], torch.full((3,), 0.2, dtype=F64))
    assert float(s.values[[1, 3]].sum()) == pytest.approx(0.4) and s.values[3] > s.values[1]


def test_warmup_and_interval_schedule_the_meta_steps():
    cfg = CATSConfig(warmup=3, interval=2)
    s = CATSState.uniform(3, "simplex")
    metas = []
    for _ in range(9):
        _, stats = cats(torch.eye(3, dtype=F64)[None], [0, 1, 2], s, cfg, torch.ones(3, dtype=F64),
                        torch.eye(3, dtype=F64))
        metas.append(stats["meta"])
    assert metas == [False, False, False, True, False, True, False, True, False]
    assert (s.steps, s.meta_steps) == (9, 3)


def test_non_finite_statistics_leave_the_meta_step_out():
    s = CATSState.uniform(2, "simplex")
    stats = meta_step(s, CATSConfig(), [0, 1], torch.tensor([float("nan"), 1.0], dtype=F64), torch.eye(2, dtype=F64))
    assert not stats["meta"] and s.meta_steps_left_out == 1 and s.meta_steps == 0
    assert torch.equal(s.values, torch.full((2,), 0.5, dtype=F64)) and s.lam == 0.0


def test_composition_scales_the_corrected_gradients():
    """base gradvac: w_k = K * beta^T C_k, i.e. update = K * sum_i beta_i g'_i."""
    g = gen(5)
    C = torch.randn(2, 3, 3, generator=g, dtype=F64)
    s = CATSState(torch.tensor([0.5, 0.2, 0.3], dtype=F64))
    w, stats = cats(C, [2, 0, 1], s, CATSConfig(warmup=10), torch.ones(3, dtype=F64), torch.eye(3, dtype=F64))
    beta = torch.tensor([0.3, 0.5, 0.2], dtype=F64)
    assert torch.allclose(stats["beta"], beta)
    assert torch.allclose(w, 3 * torch.einsum("i,kij->kj", beta, C))
    assert float(curvature(beta, torch.eye(3, dtype=F64), "combined")) == pytest.approx(float(beta @ beta))
    assert torch.allclose(step_scales(task_scales(s, CATSConfig()), [1, 2]), torch.tensor([0.4, 0.6], dtype=F64))


def test_state_round_trip_and_validation():
    s = CATSState(torch.tensor([0.7, 0.3], dtype=F64), lam=0.5, steps=7, meta_steps=4, meta_steps_left_out=1)
    t = CATSState.uniform(2, "simplex")
    t.load_state_dict(s.state_dict())
    assert torch.equal(t.values, s.values) and (t.lam, t.steps, t.meta_steps, t.meta_steps_left_out) == (0.5, 7, 4, 1)
    with pytest.raises(ValueError, match="expected"):
        CATSState.uniform(3, "simplex").load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="multiplier"):
        t.load_state_dict(dict(s.state_dict(), lam=-1.0))
    with pytest.raises(ValueError, match="proxy"):
        CATSConfig(proxy="trace")
    with pytest.raises(ValueError, match="could never come back"):
        CATSConfig(floor=0.0)
    CATSConfig(floor=0.0, param="softmax")


def test_scales_that_cannot_come_from_the_config_are_refused():
    """A softmax checkpoint (logits, here all 0) read as simplex scales, or scales under the floor."""
    cfg = CATSConfig(floor=0.4)
    check_state(CATSState(torch.tensor([0.3, 0.3, 0.4], dtype=F64)), cfg)
    for values in ([0.0, 0.0, 0.0], [0.05, 0.45, 0.5]):
        with pytest.raises(ValueError, match="simplex"):
            check_state(CATSState(torch.tensor(values, dtype=F64)), cfg)
    check_state(CATSState(torch.zeros(3, dtype=F64)), CATSConfig(param="softmax"))   # logits: anything finite
