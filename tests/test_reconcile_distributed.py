"""Sharded reconciliation inside DeepSpeed equals the unsharded single-process textbook computation.

World sizes 1, 2, 4 x ZeRO stages 0-3, fp32: after several optimizer steps the parameters of the
real trainer equal those of a one-process replay with full per-task gradients and the reference
(full-vector) reconcilers, within 1e-6 relative. The runs use AdamW with eps=1e-3: with Adam's
default 1e-8, a gradient element that is zero up to rounding gets a full-size, sign-dependent
update, which would turn last-bit summation-order differences into visible ones. GradVac runs
with ema_rate=1 here (the target is the pair's previous cosine), so that corrections fire whenever a
pair's similarity drops between visits, on any data; the EMA with ema_rate < 1 over several steps is
checked against the reference in test_reconcile.py and through the resume test below.
"""
import json

import pytest
import torch

from conftest import REPO, TEST_LANGS, dist_result, one_launch, read_metrics, run_ranks, train_args

pytestmark = pytest.mark.distributed

# CATS: softmax alpha with the combined proxy on training statistics, and projected alpha with the
# diagonal proxy on valid statistics over GradVac's corrected gradients, after one warm-up step.
# eps = 0 keeps the constraint active: lam grows and its curvature term moves alpha. (A loss-driven
# alpha step inherits the fp32 rounding of the trainer's losses, ~1e-7 relative, times lr_alpha per
# meta step; the curvature-driven set-up keeps the comparison well inside 1e-6.)
CATS = ["cats+param=softmax+lr_alpha=3+lr_lam=10+eps=0",
        "cats:all_layer+base=gradvac+proxy=diagonal+meta_data=valid+warmup=1+lr_alpha=0.15+lr_lam=10+eps=0"]
METHODS = ["plain", "sum", "pcgrad:all_layer", "gradvac:whole_model", "gradvac:all_layer"] + CATS


def overrides(data_bin, out, *extra):
    return [f"data.data_bin={data_bin}", f"data.langs={json.dumps(TEST_LANGS)}", "data.max_len=48",
            "model.preset=test", "model.dropout=0.0", "sampling.tasks_per_step=4", "sampling.max_tokens=256",
            "optim.lr=1e-2", "optim.warmup_steps=1", "optim.eps=1e-3", "reconcile.ema_rate=1.0",
            "train.tensorboard=false", f"train.output_dir={out}", *extra]


def ds_path(ds_config: str) -> str:
    return str(REPO / "ds_configs" / ds_config)


def equivalence(world, ds_config, steps, methods, data_bin, out, *extra):
    """ds_config: one file of ds_configs/, or several joined by commas (run in turn by one launch)."""
    configs = ",".join(map(ds_path, ds_config.split(",")))
    return dist_result(run_ranks(world, ["tests/dist/reconcile_equivalence.py", configs, str(steps), *methods, "--",
                                         *overrides(data_bin, out, *extra)], timeout=1800))


@pytest.fixture
def by_config(request, launches, data_bin, tmp_path_factory):
    """`run(world, ds_config, steps, methods, *extra)`: the result of one test case of a test whose
    cases differ in the ds_config (the ZeRO stage) only; one launch per world size runs every
    ds_config that this session selected (`one_launch` in tests/conftest.py)."""
    def run(world, ds_config, steps, methods, *extra):
        def launch(world, configs):
            r = equivalence(world, ",".join(configs), steps, methods, data_bin,
                            tmp_path_factory.mktemp(request.node.originalname[5:25]) / "run", *extra)
            runs = r["configs"] if len(configs) > 1 else {ds_path(configs[0]): r}
            return {c: {"world_size": r["world_size"], **runs[ds_path(c)]} for c in configs}
        return one_launch(request, launches, world, case_config, launch)[ds_config]
    return run


def case_config(params: dict) -> str:
    """The ds_config of a test case, from its parameters."""
    return params["ds_config"] if "ds_config" in params else f"zero{params['stage']}.json"


# ZeRO 0-3 on 1 and 2 ranks; on 4 ranks the two partitioned layouts (ZeRO-1 shares ZeRO-2's layout,
# ZeRO-0 has no partition), where uneven shards cut through parameters at other offsets than on 2.
FP32_CASES = [(w, s) for w in (1, 2, 4) for s in (0, 1, 2, 3) if w < 4 or s >= 2]


@pytest.mark.parametrize("world,stage", FP32_CASES)
def test_sharded_equals_unsharded_fp32(by_config, world, stage):
    r = by_config(world, f"zero{stage}.json", 5, METHODS)
    for spec, m in r["methods"].items():       # shown with pytest -s
        print(f"world={world} zero={stage} {spec}: " + " ".join(f"{k}={m[k]:.2e}" for k in
              ("rel_diff", "alpha_rel_diff", "lam_rel_diff") if k in m))
    assert r["world_size"] == world
    for spec, m in r["methods"].items():
        assert m["stage"] == stage, spec
        assert m["moved"] > 1e-3, spec
        assert m["rel_diff"] <= 1e-6, (spec, m)
        if spec.startswith(("pcgrad", "gradvac")):
            assert m["fired"] > 0, (spec, m)          # corrections really happened
    groups = {s: m.get("groups") for s, m in r["methods"].items()}
    assert groups["gradvac:whole_model"] == 1 and groups["gradvac:all_layer"] == 3
    assert r["methods"]["sum"]["vs_plain"] <= 1e-6    # `sum` is plain DeepSpeed training
    for spec, warmup in zip(CATS, (0, 1)):
        m = r["methods"][spec]
        assert m["meta_steps"] == m["ref_meta_steps"] == 5 - warmup, (spec, m)
        assert m["ranks_agree"], (spec, m)            # alpha, lam and counters identical on all ranks
        assert m["lam"] > 0 and m["lam_rel_diff"] <= 1e-6, (spec, m)
        assert max(abs(4 * a - 1) for a in m["alpha"]) > 0.05, (spec, m)  # the scales really moved
        assert m["alpha_rel_diff"] <= 1e-6, (spec, m)
        assert m["vs_plain"] > 1e-4, (spec, m)        # and changed the training


# the shared embedding (and so the tied output projection), one matrix, and every self-attention layer norm by glob
FREEZE = "model.freeze=[shared, encoder.layers.0.fc1, '*.self_attn_layer_norm.*']"


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_sharded_equals_unsharded_with_frozen_parameters(by_config, stage):
    """model.freeze: the frozen weights stay where they were, hold no optimizer state and no place in
    the gradient partitions (ZeRO-3 still shards the weights themselves) or in the groups, and the
    step over the others equals the replay that freezes the same parameters. (Stage 0: every rank
    holds the whole gradient and optimizer state, of the trainable parameters only.)"""
    specs = ["plain", "gradvac:all_layer", "pcgrad:enc_dec", "cats+lr_alpha=3+lr_lam=10+eps=0"]
    r = by_config(2, f"zero{stage}.json", 3, specs, FREEZE)
    assert r["world_size"] == 2
    for spec, m in r["methods"].items():
        print(f"zero={stage} frozen {spec}: rel_diff={m['rel_diff']:.2e}")
        assert m["stage"] == stage and m["moved"] > 1e-3, (spec, m)
        assert m["frozen_numel"] > m["trainable_numel"] / 2, m       # most of the test model: the embedding
        assert m["frozen_moved"] == 0.0 and not m["wrapper_holds_frozen"], (spec, m)
        assert m["trainable_numel"] <= m["adam_state_numel"] < m["trainable_numel"] + 1024, (spec, m)
        assert m["rel_diff"] <= 1e-6, (spec, m)
        if spec != "plain":
            assert m["segments_of_frozen"] == [], (spec, m)
            assert m["snapshot_numel"] * (2 if stage else 1) < m["trainable_numel"] + 1024, (spec, m)
    # all_layer: the embeddings group is gone (all frozen); the encoder layer keeps its other matrices
    assert r["methods"]["gradvac:all_layer"]["groups"] == 2 and r["methods"]["pcgrad:enc_dec"]["groups"] == 2
    assert r["methods"]["gradvac:all_layer"]["fired"] > 0 and r["methods"]["pcgrad:enc_dec"]["fired"] > 0


@pytest.mark.parametrize("stage", [2, 3])
def test_cats_with_fewer_tasks_per_step_than_tasks(by_config, stage):
    """K = 2 of T = 4 tasks: the step renormalises alpha over its tasks, the projected meta step keeps
    their mass (softmax moves all logits); parameters, alpha and lam equal the reference."""
    specs = ["cats+lr_alpha=0.1+lr_lam=10+eps=0",
             "cats:all_layer+base=pcgrad+param=softmax+floor=0.3+meta_data=valid+lr_alpha=3+lr_lam=10+eps=0"]
    r = by_config(2, f"zero{stage}.json", 5, ["plain"] + specs, "sampling.tasks_per_step=2")
    assert r["world_size"] == 2
    for spec in specs:
        m = r["methods"][spec]
        assert m["meta_steps"] == m["ref_meta_steps"] == 5 and m["ranks_agree"], (spec, m)
        assert max(abs(4 * a - 1) for a in m["alpha"]) > 0.05 and m["vs_plain"] > 1e-4, (spec, m)
        assert max(m["rel_diff"], m["alpha_rel_diff"], m["lam_rel_diff"]) <= 1e-6, (spec, m)


def test_cats_with_zero_learning_rate_is_plain_training(data_bin, tmp_path):
    """lr_alpha = 0: CATS equals plain training, with training statistics and with valid statistics;
    the valid forward/backward passes (and the multiplier's updates) leave the training gradient alone."""
    specs = ["cats+lr_alpha=0+lr_lam=0.1+eps=0", "cats+meta_data=valid+lr_alpha=0+lr_lam=0.1+eps=0"]
    r = equivalence(2, "zero2.json", 3, ["plain"] + specs, data_bin, tmp_path / "run")
    assert r["world_size"] == 2
    train, valid = (r["methods"][s] for s in specs)
    for m in (train, valid):
        assert m["vs_plain"] <= 1e-6 and m["meta_steps"] == 3 and m["lam"] > 0, m
        assert m["alpha"] == pytest.approx([0.25] * 4, abs=1e-12)
    assert abs(train["lam"] - valid["lam"]) > 1e-6 * train["lam"]   # valid statistics were really computed apart


@pytest.mark.parametrize("world", [1, 2, 4])
def test_cats_lookahead_sharded_equals_unsharded(data_bin, tmp_path, world):
    """Objective lookahead over GradVac (all_layer: the per-group cross Grams contract with GradVac's
    coefficients), K = T: the meta step moves alpha by the training-valid cross Grams carried in the
    step's one all-reduce, with the scheduler's learning rate (warm-up) and the clipping factor of the
    update; parameters, alpha and lam equal the one-process replay's. lr_lam = 0 keeps lam at 0, so
    only the look-ahead term moves alpha."""
    spec = "cats:all_layer+base=gradvac+meta_data=valid+objective=lookahead+lr_alpha=5+lr_lam=0"
    r = equivalence(world, "zero2.json", 5, ["plain", spec], data_bin, tmp_path / "run")
    m = r["methods"][spec]
    print(f"world={world} {spec}: " + " ".join(f"{k}={m[k]:.2e}" for k in ("rel_diff", "alpha_rel_diff")), m["alpha"])
    assert r["world_size"] == world
    assert m["meta_steps"] == m["ref_meta_steps"] == 5 and m["ranks_agree"] and m["lam"] == 0.0, m
    assert max(abs(4 * a - 1) for a in m["alpha"]) > 0.05 and m["vs_plain"] > 1e-4, m
    assert max(m["rel_diff"], m["alpha_rel_diff"]) <= 1e-6, m


@pytest.mark.parametrize("ds_config", ["zero2_bf16.json", "zero1_bf16.json"])
def test_sharded_equals_unsharded_bf16(by_config, ds_config):
    """bf16 weights and activations against the fp64 reference: within 2e-2 of the largest parameter
    after 3 steps (bf16 keeps 8 bits of mantissa); ZeRO-1 + bf16 runs DeepSpeed's BF16_Optimizer,
    where the update is clipped from the Gram matrix instead of by DeepSpeed."""
    cats = "cats+meta_data=valid+lr_alpha=0.1+lr_lam=10+eps=0"
    r = by_config(2, ds_config, 3, ["gradvac:all_layer", cats])
    assert r["world_size"] == 2
    for m in r["methods"].values():
        assert m["moved"] > 1e-3
        assert m["wrapper"] == ("BF16_Optimizer" if ds_config.startswith("zero1") else "DeepSpeedZeroOptimizer")
        assert m["rel_diff"] <= 2e-2, m
    assert r["methods"][cats]["meta_steps"] == 3 and r["methods"][cats]["alpha_rel_diff"] <= 2e-2


def _client_state(run_dir, step):
    sd = torch.load(run_dir / "checkpoints" / f"step{step}" / "mp_rank_00_model_states.pt", weights_only=False)
    return sd["massive_mt"]


def test_cats_state_survives_resume(data_bin, tmp_path):
    """alpha, lam and the counters are in the checkpoint and restored exactly: 3 + 3 steps with a
    resume in between end with the state and parameters of 6 uninterrupted steps (valid statistics,
    so the valid batch index after the resume is checked too). Telemetry and the plot render."""
    full, part = tmp_path / "full", tmp_path / "part"
    args = ("zero2.json", "reconcile.method=cats", "reconcile.cats.meta_data=valid", "reconcile.cats.lr_alpha=0.5",
            "reconcile.cats.eps=0", "reconcile.cats.lr_lam=0.1", "train.save_interval=3", "train.log_interval=1")
    run_ranks(2, train_args(data_bin, full, *args, "train.max_steps=6"))
    run_ranks(2, train_args(data_bin, part, *args, "train.max_steps=3"))
    run_ranks(2, train_args(data_bin, part, *args, "train.max_steps=6"))
    a, b = _client_state(full, 6)["reconciler"]["cats"], _client_state(part, 6)["reconciler"]["cats"]
    assert (a["steps"], a["meta_steps"]) == (b["steps"], b["meta_steps"]) == (6, 6)
    assert a["lam"] > 0 and b["lam"] == pytest.approx(a["lam"], rel=1e-6)
    assert (a["values"] - 1 / len(TEST_LANGS)).abs().max() > 1e-3
    assert torch.allclose(a["values"], b["values"], rtol=1e-6, atol=1e-9)
    pa, pb = (torch.load(r / "checkpoints" / "step6" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
              for r in (full, part))
    assert all(torch.allclose(pa[k], pb[k], rtol=1e-5, atol=1e-7) for k in pa)
    recs = [json.loads(l) for l in (full / "reconcile.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6] and all(len(r["cats"]["alpha"]) == 4 for r in recs)
    assert recs[-1]["cats"]["lam"] == pytest.approx(a["lam"])
    from massive_mt import cli
    assert cli.main(["task-scales", "--run", str(full), "--out", str(tmp_path / "w.png")]) == 0
    assert (tmp_path / "w.png").stat().st_size > 10_000
    # a resume with another parameterisation is refused, naming the field
    p = run_ranks(2, train_args(data_bin, full, *args, "reconcile.cats.param=softmax", "train.max_steps=7"),
                  check=False)
    assert p.returncode != 0 and "reconcile.cats.param" in p.stderr, p.stderr[-2000:]


def test_reconciler_state_survives_resume(data_bin, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    args = ("zero2.json", "reconcile.method=gradvac", "reconcile.granularity=all_layer", "reconcile.ema_rate=0.5",
            "sampling.tasks_per_step=3", "train.save_interval=3")
    run_ranks(2, train_args(data_bin, full, *args, "train.max_steps=6"))
    run_ranks(2, train_args(data_bin, part, *args, "train.max_steps=3"))
    run_ranks(2, train_args(data_bin, part, *args, "train.max_steps=6"))
    a, b = _client_state(full, 6)["reconciler"], _client_state(part, 6)["reconciler"]
    assert a["groups"] == b["groups"] and len(a["groups"]) == 3
    phi_a, phi_b = a["state"]["phi_hat"], b["state"]["phi_hat"]
    assert phi_a.abs().max() > 0                       # the EMA targets moved
    assert torch.allclose(phi_a, phi_b, rtol=1e-6, atol=1e-9)
    starts = [m for m in read_metrics(part) if m.get("event") == "start"]
    assert [s["resumed_from_step"] for s in starts] == [0, 3]
    # telemetry: cosines and firing rates were logged, and the heatmap renders
    recs = [json.loads(l) for l in (full / "reconcile.jsonl").read_text().splitlines()]
    assert recs and len(recs[0]["cos_model"]) == len(TEST_LANGS) and len(recs[0]["fired_fraction"]) == 3
    from massive_mt import cli
    assert cli.main(["similarity", "--run", str(full), "--windows", "2", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 10_000
    assert cli.main(["similarity", "--run", str(full), "--group", "decoder.layers.0",
                     "--out", str(tmp_path / "d.png")]) == 0
