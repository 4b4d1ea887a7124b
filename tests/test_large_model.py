"""The large-model options: activation checkpointing, the attention kernel, overlapped gradient
reduction with small buckets, the `large` preset and the GPU ds_configs.

Equivalence runs use the harness of test_reconcile_distributed.py (tests/dist/reconcile_equivalence.py):
the sharded trainer against the unsharded single-process reference, within 1e-6 relative.
"""
import copy
import json

import pytest
import torch

from conftest import REPO, TEST_LANGS, one_launch, read_metrics, run_ranks, train_args
from massive_mt.engine.config import load_config, load_ds_config, resolve_ds_config
from massive_mt.errors import ConfigError
from massive_mt.engine.model import build_model, count_parameters, preset_config, train_flops
from test_reconcile_distributed import CATS, by_config, equivalence  # noqa: F401  (by_config: a fixture)

METHODS = ["plain", "gradvac:all_layer", CATS[0]]
GPU_CONFIGS = ["zero1_bf16_gpu.json", "zero2_bf16_gpu.json", "zero3_bf16_gpu.json"]


def _batch(vocab: int, seed: int = 0):
    """Two sentence pairs of different lengths (right padding on both sides)."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, vocab, (2, 9), generator=g)
    tgt = torch.randint(4, vocab, (2, 7), generator=g)
    mask = torch.ones_like(src)
    mask[1, 5:] = 0
    src[1, 5:] = 1
    labels = tgt.clone()
    labels[1, 4:] = -100
    dec_in = torch.cat([torch.full((2, 1), 2), tgt[:, :-1]], 1)
    return dict(input_ids=src, attention_mask=mask, decoder_input_ids=dec_in, labels=labels)


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


# ----------------------------------------------------------------------------- attention kernel

def test_sdpa_and_eager_give_the_same_loss_and_gradients():
    torch.manual_seed(0)
    sdpa = build_model("test", 200, 32, dropout=0.0)
    eager = build_model("test", 200, 32, attn_implementation="eager", dropout=0.0)
    eager.load_state_dict(sdpa.state_dict())
    assert (sdpa.config._attn_implementation, eager.config._attn_implementation) == ("sdpa", "eager")
    assert type(sdpa)._supports_sdpa                     # M2M100 in the installed transformers
    batch = _batch(200)
    (ls, gs), (le, ge) = _loss_and_grads(sdpa, batch), _loss_and_grads(eager, batch)
    assert ls.item() > 1.0
    assert torch.allclose(ls, le, rtol=1e-6, atol=0), (ls.item(), le.item())
    assert len(gs) == len(ge) and all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(gs, ge))


def test_attention_kernel_is_a_checked_config_field():
    assert load_config(None).model.attn_implementation == "sdpa"
    assert load_config(None, ["model.attn_implementation=eager"]).model.attn_implementation == "eager"
    with pytest.raises(ConfigError, match="field 'model.attn_implementation': input should be 'sdpa', 'eager' or 'flash_attention_2'"):
        load_config(None, ["model.attn_implementation=flash"])
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="field 'model.attn_implementation': flash_attention_2 needs the "
                                              "flash-attn package"):
            load_config(None, ["model.attn_implementation=flash_attention_2"])


# ----------------------------------------------------------------------------- activation checkpointing

def _count_layer_forwards(model):
    """Calls of each layer's self-attention (transformers checkpoints a layer's `forward`, so hooks on
    the layer itself run once; those of its sub-modules run again in the recomputation)."""
    calls = []
    for layer in list(model.model.encoder.layers) + list(model.model.decoder.layers):
        layer.self_attn.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def test_activation_checkpointing_recomputes_layers_and_replays_dropout():
    """Same seed, dropout 0.1: the checkpointed model recomputes every layer in the backward pass
    and its gradients equal those of the model that stores activations (dropout masks replayed)."""
    torch.manual_seed(0)
    kw = dict(dropout=0.1, attention_dropout=0.1, activation_dropout=0.1)
    plain = build_model("test", 200, 32, **kw)
    ckpt = build_model("test", 200, 32, activation_checkpointing=True, **kw)
    ckpt.load_state_dict(plain.state_dict())
    plain.train(), ckpt.train()
    batch = _batch(200)
    n_layers = len(plain.model.encoder.layers) + len(plain.model.decoder.layers)
    calls_plain, calls_ckpt = _count_layer_forwards(plain), _count_layer_forwards(ckpt)
    torch.manual_seed(5)
    lp, gp = _loss_and_grads(plain, batch)
    torch.manual_seed(5)
    lc, gc = _loss_and_grads(ckpt, batch)
    assert len(calls_plain) == n_layers and len(calls_ckpt) == 2 * n_layers     # recomputed in backward
    assert torch.equal(lp, lc)
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-9) for a, b in zip(gp, gc))
    torch.manual_seed(6)                                # another dropout mask: another gradient
    _, g6 = _loss_and_grads(ckpt, batch)
    assert max((a - b).abs().max().item() for a, b in zip(gc, g6)) > 1e-4


@pytest.mark.distributed
def test_start_record_names_the_attention_kernel_and_checkpointing(data_bin, tmp_path):
    run_ranks(1, train_args(data_bin, tmp_path / "run", "zero3.json", "train.max_steps=2",
                            "model.attn_implementation=eager", "model.activation_checkpointing=true"))
    [start] = [m for m in read_metrics(tmp_path / "run") if m.get("event") == "start"]
    assert start["world_size"] == 1 and start["zero_stage"] == 3
    assert start["attn_implementation"] == "eager" and start["activation_checkpointing"] is True


@pytest.mark.distributed
@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.parametrize("world", [1, 2])
def test_sharded_equals_unsharded_with_activation_checkpointing(by_config, world, stage):
    r = by_config(world, f"zero{stage}.json", 3, METHODS, "model.activation_checkpointing=true")
    assert r["world_size"] == world
    for spec, m in r["methods"].items():
        assert m["stage"] == stage and m["checkpointed_layers"] == 4, (spec, m)   # encoder, decoder, 2 layers
        assert m["moved"] > 1e-3 and m["rel_diff"] <= 1e-6, (spec, m)
    assert r["methods"]["gradvac:all_layer"]["fired"] > 0
    assert r["methods"][CATS[0]]["alpha_rel_diff"] <= 1e-6


# ----------------------------------------------------------------------------- overlap_comm, small buckets

BUCKET = 20_000     # elements: a fraction of one task's gradient of the `test` model


def _overlap_config(tmp_path, stage: int) -> str:
    ds = load_ds_config(REPO / "ds_configs" / f"zero{stage}.json")
    z = ds["zero_optimization"]
    z.update(overlap_comm=True, reduce_bucket_size=BUCKET, allgather_bucket_size=BUCKET)
    if stage == 3:
        z.update(stage3_prefetch_bucket_size=BUCKET, stage3_param_persistence_threshold=100)
    else:
        z["contiguous_gradients"] = True
    path = tmp_path / f"zero{stage}_overlap.json"
    path.write_text(json.dumps(ds))
    return str(path)


@pytest.mark.distributed
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_sharded_equals_unsharded_with_overlap_comm_and_small_buckets(request, launches, data_bin, tmp_path, stage):
    """Reductions overlapped with the backward pass in buckets smaller than one task's gradient:
    every task's captured partition is still exactly its gradient. The stages this session selected
    run in one 2-rank launch (`one_launch`, tests/conftest.py)."""
    def launch(world, stages):
        paths = [_overlap_config(tmp_path, s) for s in stages]
        r = equivalence(world, ",".join(paths), 3, METHODS, data_bin, tmp_path / "run")
        runs = r["configs"] if len(paths) > 1 else {paths[0]: r}
        return {s: {"world_size": r["world_size"], **runs[p]} for s, p in zip(stages, paths)}

    r = one_launch(request, launches, 2, lambda params: params["stage"], launch)[stage]
    assert r["world_size"] == 2
    for spec, m in r["methods"].items():
        assert m["stage"] == stage, (spec, m)
        assert m["moved"] > 1e-3 and m["rel_diff"] <= 1e-6, (spec, m)
    ours = r["methods"]["gradvac:all_layer"]
    assert ours["fired"] > 0 and 2 * ours["snapshot_numel"] > 5 * BUCKET     # several buckets per task


# ----------------------------------------------------------------------------- presets and ds_configs

def test_large_preset_has_the_nllb_600m_shape_and_size():
    c = preset_config("large", 256206, 256)
    assert (c.d_model, c.encoder_ffn_dim, c.encoder_attention_heads, c.encoder_layers, c.decoder_layers) == \
        (1024, 4096, 16, 12, 12)
    with torch.device("meta"):
        model = build_model("large", 256206, 256)
    assert count_parameters(model) == 615_073_792           # NLLB-200-distilled-600M's published count


def test_train_flops_reduce_to_six_times_parameters_per_token():
    """The linear layers cost 6 x (encoder-side parameters x source tokens + decoder-side parameters x
    target tokens), the cross-attention K, V projections acting on source tokens and the tied output
    projection on target tokens; the attention scores add 12*d per layer and pair of positions."""
    c = preset_config("big", 32000, 256)
    with torch.device("meta"):
        m = build_model("big", 32000, 256)
    n = {k: sum(p.numel() for name, p in m.named_parameters() if name.startswith(k) and p.dim() == 2)
         for k in ("model.encoder.layers", "model.decoder.layers")}
    cross_kv = sum(p.numel() for name, p in m.named_parameters() if "encoder_attn.k_proj.weight" in name
                   or "encoder_attn.v_proj.weight" in name)
    pairs, s, t = 500, 2, 1                              # 1000 source and 500 target tokens
    S, T = pairs * s, pairs * t
    linear = 6 * ((n["model.encoder.layers"] + cross_kv) * S + (n["model.decoder.layers"] - cross_kv + 32000 * 1024) * T)
    attention = 12 * 1024 * pairs * (6 * s * s + 6 * (t * t + t * s))
    assert train_flops(c, [s] * pairs, [t] * pairs) == pytest.approx(linear + attention, rel=1e-12)


@pytest.mark.parametrize("name", GPU_CONFIGS)
@pytest.mark.parametrize("method", ["plain", "gradvac"])
def test_gpu_ds_configs_resolve(name, method):
    raw = load_ds_config(REPO / "ds_configs" / name)
    cfg = load_config(None, ["model.preset=big", f"reconcile.method={method}"])
    ds = resolve_ds_config(copy.deepcopy(raw), cfg, world_size=8, where=name)
    z = ds["zero_optimization"]
    assert ds["bf16"]["enabled"] and ds["data_types"]["grad_accum_dtype"] == "fp32"
    assert z["stage"] == int(name[4]) and z["overlap_comm"] is True
    assert ds["train_batch_size"] == 8 * cfg.sampling.tasks_per_step
    if z["stage"] >= 2:
        assert z["contiguous_gradients"] is True
        # buckets of a few layers of `big`: several reductions per backward pass
        assert 4 * 4096 * 1024 < z["reduce_bucket_size"] < 240_000_000 // 4
    if z["stage"] == 3:
        assert z["stage3_param_persistence_threshold"] < 1024 * 1024 <= z["stage3_prefetch_bucket_size"]
