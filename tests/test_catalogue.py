"""The catalogue of methods (massive_mt/reconcile/catalogue.py): the names the config, the CLI and
the benchmark accept, each method's options refused where the method does not read them, and the
weighers (massive_mt/reconcile/weighers.py) that the sharded reconciler asks for a step's weights."""
import pytest
import torch

from conftest import REPO
from massive_mt.engine.config import RECONCILE_METHODS, load_config, unread_option_overrides
from massive_mt.errors import ConfigError
from massive_mt.experiments.bench import DEFAULT_METHODS, method_names, parse_method
from massive_mt.reconcile import catalogue, make_state, reconcile, step_generator
from massive_mt.reconcile.cats import CATSConfig, CATSState, cats, corrected_gram
from massive_mt.reconcile.weighers import CATSWeigher, MethodWeigher, Statistics

F64 = torch.float64

# one non-default value of every option of the reconcile section, and who reads it (written out
# here, not taken from the catalogue)
OPTIONS = {"ema_rate": "0.5", "vaccinate": "[en-fr]", "low_resource_quantile": "0.3", "cats.eps": "2",
           "cats.base": "pcgrad", "cats.meta_data": "valid"}
GRADVAC = {"ema_rate", "vaccinate", "low_resource_quantile"}
CATS = {"cats.eps", "cats.base", "cats.meta_data"}
READS = {"plain": set(), "sum": set(), "pcgrad": set(), "gradvac": GRADVAC,
         "cats+base=sum": CATS, "cats+base=pcgrad": CATS, "cats+base=gradvac": CATS | GRADVAC}


def test_config_cli_and_bench_take_their_names_from_the_catalogue():
    assert catalogue.names() == ("plain", "sum", "pcgrad", "gradvac", "cats")
    assert RECONCILE_METHODS == catalogue.names()
    assert method_names() == ["plain", "bare", "sum", "pcgrad", "gradvac", "cats", "naive"]
    assert [catalogue.kind(n) for n in catalogue.names()] == ["plain", "gram", "gram", "gram", "scales"]
    assert [parse_method(m)[0] for m in DEFAULT_METHODS] == ["trainer", "bare", *["trainer"] * 5, "naive"]
    with pytest.raises(ValueError, match="known: plain, bare, sum, pcgrad, gradvac, cats, naive"):
        parse_method("cagrad")


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("setting", READS)
def test_every_option_is_accepted_where_read_and_refused_naming_the_field_elsewhere(setting, option):
    method, _, base = setting.partition("+base=")
    over = [f"reconcile.method={method}", f"reconcile.{option}={OPTIONS[option]}"]
    if base and option != "cats.base":
        over.append(f"reconcile.cats.base={base}")
    if option in READS[setting]:
        if option == "low_resource_quantile":       # read with vaccinate: [low_resource] only
            over.append("reconcile.vaccinate=[low_resource]")
        cfg = load_config(None, over)
        assert cfg.reconcile.method == method
        return
    with pytest.raises(ConfigError) as e:
        load_config(None, over)
    said = f"method is {method!r}" + (f" with base {base!r}" if base else "")
    assert f"field 'reconcile.{option}': only applies to method " in str(e.value) and said in str(e.value), str(e.value)


def test_the_refusal_says_which_methods_read_the_option():
    with pytest.raises(ConfigError, match=r"^config: field 'reconcile.ema_rate': only applies to method gradvac "
                                          r"\(or cats with base gradvac\); method is 'pcgrad'$"):
        load_config(None, ["reconcile.method=pcgrad", "reconcile.ema_rate=0.5"])
    with pytest.raises(ConfigError, match=r"^config: field 'reconcile.cats.lr_lam': only applies to method cats; "
                                          r"method is 'gradvac'$"):
        load_config(None, ["reconcile.method=gradvac", "reconcile.cats.lr_lam=0.5"])


def test_defaults_are_unchanged():
    r = load_config(None, []).reconcile
    assert (r.method, r.granularity, r.ema_rate, r.vaccinate, r.low_resource_quantile, r.log_interval) == \
        ("plain", "whole_model", 0.01, None, 0.5, 0)
    assert r.cats == CATSConfig()


def test_shared_options_load_with_any_method_after_the_unread_ones_are_reset():
    shared = ["reconcile.ema_rate=1.0", "reconcile.vaccinate=[en-fr]", "reconcile.cats.eps=0"]
    for method in catalogue.names():
        r = load_config(None, shared + [f"reconcile.method={method}"] + unread_option_overrides(method)).reconcile
        assert r.method == method
        assert r.ema_rate == (1.0 if method == "gradvac" else 0.01)
        assert r.cats.eps == (0.0 if method == "cats" else 1.0)
    r = load_config(None, shared + ["reconcile.method=cats", "reconcile.cats.base=gradvac"] +
                    unread_option_overrides("cats", "gradvac")).reconcile
    assert (r.ema_rate, r.vaccinate, r.cats.eps) == (1.0, ["en-fr"], 0.0)


# ---------------------------------------------------------------------------------------------
# weighers

def grams(K=3, n_groups=2, seed=0):
    g = torch.randn(n_groups, K, 50, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return g @ g.transpose(1, 2)


def test_method_weigher_is_the_registered_method_with_its_keywords():
    G, ids = grams(), [0, 2, 3]
    w = MethodWeigher("gradvac", 2, 4, {"ema_rate": 0.5, "vaccinate_ids": frozenset({2})}, seed=7)
    got, stats = w.weights(Statistics(G, torch.ones(3, 2, dtype=F64)), ids, step=3)
    state = make_state("gradvac", 2, 4)
    want, _ = reconcile("gradvac", G, ids, state, step_generator(7, 3), ema_rate=0.5, vaccinate_ids=frozenset({2}))
    assert torch.equal(got, want) and torch.equal(w.state.phi_hat, state.phi_hat) and stats.cats is None
    assert set(w.state_dict()) == {"state"}


def test_cats_weigher_scales_the_base_methods_corrections_bit_for_bit():
    """The composition the reconciler computed before CATS became a weigher: the base's C, then
    cats() with the meta Gram of the corrected gradients in units of the mean losses' gradients."""
    G, ids, n_gas = grams(), [1, 0, 3], 6
    losses = torch.tensor([[3.0, 2.0], [4.0, 2.0], [1.0, 2.0]], dtype=F64)
    cfg = CATSConfig(base="pcgrad", lr_alpha=0.5, eps=0.0, lr_lam=1.0)
    w = CATSWeigher(MethodWeigher("pcgrad", 2, 4, {}, seed=1), cfg, 4, n_gas, lambda: 0.1, 1.0)
    state = CATSState.uniform(4, cfg.param)
    for step in range(3):
        got, stats = w.weights(Statistics(G, losses), ids, step)
        _, base = reconcile("pcgrad", G, ids, make_state("pcgrad", 2, 4), step_generator(1, step))
        scale = n_gas / losses[:, 1]
        want, _ = cats(base.coef, ids, state, cfg, losses[:, 0] / losses[:, 1],
                       corrected_gram(G, base.coef) * scale[:, None] * scale[None, :])
        assert torch.equal(got, want) and torch.equal(w.state.values, state.values) and w.state.lam == state.lam
        assert stats.cats is not None and stats.cats.meta
    assert not w.needs_valid_statistics() and not w.cross_grams


def test_cats_weigher_asks_for_the_valid_pass_at_its_meta_steps():
    cfg = CATSConfig(meta_data="valid", objective="lookahead", warmup=1, interval=2)
    w = CATSWeigher(MethodWeigher("sum", 1, 3, {}, seed=0), cfg, 3, 2, lambda: 0.1, 0.0)
    asks = []
    for step in range(5):
        asks.append(w.needs_valid_statistics())
        w.state.steps += 1
    assert asks == [False, True, False, True, False] and w.valid_split and w.cross_grams


def test_checkpoint_keys_are_kept_and_another_parameterisation_is_refused():
    """A reconciler state written before CATS became a weigher: {'state': base state, 'cats':
    CATSState's fields with param and floor, the meta steps left out under their older key
    'skipped'}; it loads, and one of another param is refused."""
    cfg = CATSConfig(base="gradvac")
    w = CATSWeigher(MethodWeigher("gradvac", 2, 3, {}, seed=0), cfg, 3, 2, lambda: 0.1, 0.0)
    sd = w.state_dict()
    assert set(sd) == {"state", "cats"} and set(sd["state"]) == {"phi_hat"}
    assert set(sd["cats"]) == {"values", "lam", "steps", "meta_steps", "meta_steps_left_out", "param", "floor"}
    old = {"state": {"phi_hat": torch.full((2, 3, 3), 0.25, dtype=F64)},
           "cats": {"values": torch.tensor([0.5, 0.3, 0.2], dtype=F64), "lam": 0.5, "steps": 4, "meta_steps": 4,
                    "skipped": 2, "param": "simplex", "floor": 0.1}}
    w.load_state_dict(old)
    assert (w.state.steps, w.state.meta_steps_left_out) == (4, 2) and float(w.base.state.phi_hat[1, 2, 0]) == 0.25
    with pytest.raises(ConfigError, match="field 'reconcile.cats.param'"):
        w.load_state_dict(dict(old, cats=dict(old["cats"], param="softmax")))


def test_the_shipped_configs_load(tmp_path):
    """The demo config and every cell of the shipped study grids pass the per-method option checks."""
    from massive_mt.experiments.study import cells, load_grid

    configs = REPO / "massive_mt" / "configs"
    assert load_config(str(configs / "demo.yaml")).reconcile.vaccinate == ["low_resource"]
    for grid in ("study.yaml", "study_multiway.yaml", "study_multiway_nll.yaml"):
        methods = {c.cfg.reconcile.method for c in cells(load_grid(configs / grid), tmp_path / grid)}
        assert methods == {"plain", "gradvac", "cats"}, grid


def test_a_benchmarks_shared_overrides_give_each_method_the_options_it_reads():
    from massive_mt.engine.config import shared_overrides

    shared = ["reconcile.ema_rate=0.5", "reconcile.cats.eps=0"]
    for method, ema_rate, eps in (("plain", 0.01, 1.0), ("gradvac", 0.5, 1.0), ("cats", 0.01, 0.0)):
        r = load_config(None, shared_overrides([f"reconcile.method={method}", *shared])).reconcile
        assert (r.method, r.ema_rate, r.cats.eps) == (method, ema_rate, eps)
    r = load_config(None, shared_overrides(["reconcile.method=cats", "reconcile.cats.base=gradvac", *shared])).reconcile
    assert (r.ema_rate, r.cats.base, r.cats.eps) == (0.5, "gradvac", 0.0)
