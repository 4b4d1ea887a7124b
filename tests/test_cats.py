"""CATS in Gram form (massive_mt/reconcile/cats.py) against the full-vector reference, and its behaviour."""
import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reference     # tests/reference.py
from massive_mt.reconcile import make_state, reconcile
from massive_mt.reconcile.cats import (CATSConfig, CATSState, cats, check_state, corrected_gram, curvature,
                                       is_meta_step, meta_step, project_simplex, step_weights, task_weights)

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
    cfg = CATSConfig(lr_alpha=p["lr_alpha"], lr_lam=0.05, eps=p["eps"], interval=p["interval"],
                     warmup=p["warmup"], floor=p["floor"], proxy=p["proxy"], param=p["param"])
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
        valid = [torch.randn(K, n, generator=g, dtype=F64) for n in p["sizes"]] if p["valid"] else None
        # ours: Gram form
        grams = torch.stack([x @ x.T for x in grads])
        _, stats = reconcile(p["base"], grams, ids, base_ours, gen(step), ema_rate=0.5)
        meta_gram = (torch.stack([x @ x.T for x in valid]).sum(0) if valid is not None
                     else corrected_gram(grams, stats["coef"]))
        weights, cstats = cats(stats["coef"], ids, ours, cfg, losses, meta_gram)
        got = [w @ x for w, x in zip(weights, grads)]
        # reference: explicit vectors
        corrected, base_ref = reference.correct(p["base"], grads, ids, base_ref, gen(step), ema_rate=0.5)
        vectors = torch.cat(valid if valid is not None else corrected, 1)
        beta, ref = reference.cats_step(ref, cfg, ids, losses, vectors)
        want = [K * beta @ c for c in corrected]
        history.append((got, want, cstats))
    return cfg, ours, ref, history


@FAST
@given(problems())
def test_gram_form_matches_full_vector_reference(p):
    cfg, ours, ref, history = _run_both(p)
    for got, want, _ in history:
        for a, b in zip(got, want):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)
    assert torch.allclose(task_weights(ours, cfg), ref.values if cfg.param == "simplex" else
                          cfg.floor / p["n_tasks"] + (1 - cfg.floor) * torch.softmax(ref.values, 0), atol=1e-10)
    assert ours.lam == pytest.approx(ref.lam, rel=1e-9, abs=1e-12)
    assert (ours.steps, ours.meta_steps) == (ref.steps, ref.meta_steps) == (
        p["steps"], sum(is_meta_step(CATSState(torch.zeros(1), steps=s), cfg) for s in range(p["steps"])))


def test_reference_moves_on_the_tested_problems():
    """The equivalence above is not vacuous: alpha and lam move on a typical problem."""
    p = dict(n_tasks=4, K=3, sizes=[5, 7], base="gradvac", proxy="combined", param="simplex", floor=0.1,
             lr_alpha=0.05, eps=0.0, interval=1, warmup=0, valid=False, steps=4, seed=3)
    cfg, ours, _, _ = _run_both(p)
    assert ours.lam > 0 and float((task_weights(ours, cfg) - 0.25).abs().max()) > 1e-3


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
        alpha = task_weights(state, cfg)
        assert abs(float(alpha.sum()) - 1.0) < 1e-12
        assert float(alpha.min()) >= floor / T - 1e-12
        assert state.lam >= 0


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


def test_zero_learning_rate_is_plain_training():
    """lr_alpha = 0: alpha stays uniform, every weight is 1, the update is the plain sum."""
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
    assert torch.allclose(task_weights(state, cfg), torch.full((T,), 0.2, dtype=F64), atol=1e-15)
    assert state.lam > 0                                    # the multiplier still moved


def test_descent_moves_weight_to_the_lower_loss_task_and_the_penalty_counteracts_it():
    """dJ/dbeta = L + 2 lam G beta: with lam = 0 weight moves to the task of lower loss; with a large
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


def test_non_finite_statistics_skip_the_meta_step():
    s = CATSState.uniform(2, "simplex")
    stats = meta_step(s, CATSConfig(), [0, 1], torch.tensor([float("nan"), 1.0], dtype=F64), torch.eye(2, dtype=F64))
    assert not stats["meta"] and s.skipped == 1 and s.meta_steps == 0
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
    assert torch.allclose(step_weights(task_weights(s, CATSConfig()), [1, 2]), torch.tensor([0.4, 0.6], dtype=F64))


def test_state_round_trip_and_validation():
    s = CATSState(torch.tensor([0.7, 0.3], dtype=F64), lam=0.5, steps=7, meta_steps=4, skipped=1)
    t = CATSState.uniform(2, "simplex")
    t.load_state_dict(s.state_dict())
    assert torch.equal(t.values, s.values) and (t.lam, t.steps, t.meta_steps, t.skipped) == (0.5, 7, 4, 1)
    with pytest.raises(ValueError, match="expected"):
        CATSState.uniform(3, "simplex").load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="multiplier"):
        t.load_state_dict(dict(s.state_dict(), lam=-1.0))
    with pytest.raises(ValueError, match="proxy"):
        CATSConfig(proxy="trace")
    with pytest.raises(ValueError, match="could never come back"):
        CATSConfig(floor=0.0)
    CATSConfig(floor=0.0, param="softmax")


def test_weights_that_cannot_come_from_the_config_are_refused():
    """A softmax checkpoint (logits, here all 0) read as simplex weights, or weights under the floor."""
    cfg = CATSConfig(floor=0.4)
    check_state(CATSState(torch.tensor([0.3, 0.3, 0.4], dtype=F64)), cfg)
    for values in ([0.0, 0.0, 0.0], [0.05, 0.45, 0.5]):
        with pytest.raises(ValueError, match="simplex"):
            check_state(CATSState(torch.tensor(values, dtype=F64)), cfg)
    check_state(CATSState(torch.zeros(3, dtype=F64)), CATSConfig(param="softmax"))   # logits: anything finite
