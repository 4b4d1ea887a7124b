"""A loaded checkpoint (`model.from_pretrained`) takes the model.dropout* options; `model.freeze`
leaves parameters untrained and out of the optimizer and its state."""
import pytest
import torch
from transformers import M2M100Config, M2M100ForConditionalGeneration

from massive_mt.engine.config import load_config
from massive_mt.errors import ConfigError
from massive_mt.engine.model import build_model, freeze_parameters, matches
from massive_mt.engine.optim import build_optimizer


def tiny_checkpoint(path, vocab_size=120, **overrides):
    """A small M2M100 checkpoint written with save_pretrained (its own dropout and layer drop set high)."""
    cfg = dict(vocab_size=vocab_size, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
               decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
               dropout=0.3, attention_dropout=0.3, activation_dropout=0.3, encoder_layerdrop=0.5,
               decoder_layerdrop=0.5, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    cfg.update(overrides)
    torch.manual_seed(0)
    M2M100ForConditionalGeneration(M2M100Config(**cfg)).save_pretrained(str(path))
    return str(path)


def layer_rates(model):
    """(dropout, attention dropout, activation dropout) as every layer and stack reads them."""
    m = model.model
    layers = list(m.encoder.layers) + list(m.decoder.layers)
    rates = {(l.dropout, l.self_attn.dropout, l.activation_dropout) for l in layers}
    rates |= {(l.dropout, l.encoder_attn.dropout, l.activation_dropout) for l in m.decoder.layers}
    return rates, {m.encoder.dropout, m.decoder.dropout}, {m.encoder.layerdrop, m.decoder.layerdrop}


def batch(vocab_size=120):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab_size, (2, 7), generator=g)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=ids.flip(1))


def test_dropout_options_apply_to_a_loaded_checkpoint(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    saved = M2M100ForConditionalGeneration.from_pretrained(ckpt).state_dict()
    model = build_model("test", 100, 32, ckpt, dropout=0.25, attention_dropout=0.125, activation_dropout=0.0625)
    c = model.config
    assert (c.dropout, c.attention_dropout, c.activation_dropout) == (0.25, 0.125, 0.0625)
    assert layer_rates(model) == ({(0.25, 0.125, 0.0625)}, {0.25}, {0.0})
    assert (c.encoder_layerdrop, c.decoder_layerdrop) == (0.0, 0.0)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())    # the checkpoint's weights

    # no dropout: two training-mode forward passes agree; the checkpoint's own 0.3 would make them differ
    quiet = build_model("test", 100, 32, ckpt, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0).train()
    assert torch.equal(quiet(**batch()).logits, quiet(**batch()).logits)
    noisy = M2M100ForConditionalGeneration.from_pretrained(ckpt).train()
    assert not torch.equal(noisy(**batch()).logits, noisy(**batch()).logits)


# ----------------------------------------------------------------------------- freezing

NAMES = ["model.shared.weight", "model.encoder.layers.0.fc1.weight", "model.encoder.layers.10.fc1.weight",
         "model.decoder.layers.0.self_attn.k_proj.bias", "model.encoder.layer_norm.weight"]


@pytest.mark.parametrize("pattern, hit", [
    ("shared", [0]), ("model.shared.weight", [0]), ("encoder.layers.0", [1]), ("layers.0", [1, 3]),
    ("encoder.layers.1", []), ("fc1", [1, 2]), ("*.layers.1?.*", [2]), ("*layer_norm*", [4]), ("shar", []),
    ("model", [0, 1, 2, 3, 4]), ("*.layers.[01].*", [1, 3]),
])
def test_pattern_rule(pattern, hit):
    assert [i for i, n in enumerate(NAMES) if matches(n, pattern)] == hit


def test_freeze_counts_tied_embedding_and_optimizer(tmp_path):
    model = build_model("test", 100, 16)
    total = sum(p.numel() for p in model.parameters())
    trainable, frozen = freeze_parameters(model, ["lm_head", "encoder.layers.0"])
    shared = model.model.shared.weight
    assert model.lm_head.weight is shared and not shared.requires_grad     # the tied output projection too
    layer0 = sum(p.numel() for p in model.model.encoder.layers[0].parameters())
    assert frozen == shared.numel() + layer0 and trainable + frozen == total
    opt, _ = build_optimizer(model, load_config(None, []).optim)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters() if p.requires_grad} and id(shared) not in in_opt


def test_pattern_matching_nothing_is_refused():
    model = build_model("test", 100, 16)
    with pytest.raises(ConfigError, match=r"field 'model.freeze\[1\]': pattern 'encoder.layers.7' matches no parameter"):
        freeze_parameters(model, ["shared", "encoder.layers.7"])
    with pytest.raises(ConfigError, match=r"model.freeze"):
        load_config(None, ["model.freeze=[]"])
    with pytest.raises(ConfigError, match=r"field 'model.freeze': \['model'\] freezes every parameter"):
        freeze_parameters(build_model("test", 100, 16), ["model"])


def test_frozen_parameters_belong_to_no_group():
    from massive_mt.reconcile.groups import ShardGroups, assign_groups
    from massive_mt.reconcile.shards import Segment

    model = build_model("test", 100, 16)        # 1 encoder + 1 decoder layer
    freeze_parameters(model, ["shared", "decoder.layers.0"])
    names = [n for n, _ in model.named_parameters()]
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    groups = assign_groups(names, "all_layer", frozen)
    assert set(groups) == set(names) - frozen
    # the decoder's final layer norm still joins its last layer, which is otherwise frozen
    assert list(dict.fromkeys(groups.values())) == ["encoder.layers.0", "decoder.layers.0"]
    assert [n for n, g in groups.items() if g == "decoder.layers.0"] == ["model.decoder.layer_norm.weight",
                                                                         "model.decoder.layer_norm.bias"]
    segs, off = [], 0
    for n, p in model.named_parameters():
        if p.requires_grad:
            segs.append(Segment(n, off, p.numel()))
            off += p.numel()
    g = ShardGroups.of_module(model, "all_layer", segs, segs)
    assert g.names == ["encoder.layers.0", "decoder.layers.0"]
    assert sum(b - a for runs in g.update_runs for a, b in runs) == off


@pytest.mark.distributed
def test_loaded_checkpoint_trains_with_frozen_parameters(data_bin, tmp_path):
    """2-rank ZeRO-2 GradVac training from a tiny saved checkpoint with the embedding and the encoder's
    first layer frozen: those weights come out of the export bit for bit as they went in, the others
    moved, the dropout options are in the exported config, the start record counts both kinds."""
    from safetensors.torch import load_file

    from conftest import read_metrics, run_ranks, train_args
    from massive_mt.data.spm import Tokenizer

    tok = Tokenizer(data_bin / "spm.model")
    ckpt = tiny_checkpoint(tmp_path / "ckpt", vocab_size=tok.vocab_size, pad_token_id=tok.pad_id,
                           bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, decoder_start_token_id=tok.eos_id)
    tok.save(ckpt)                                   # the checkpoint's tokenizer is the data-bin's (checked at start)
    out = tmp_path / "run"
    run_ranks(2, train_args(data_bin, out, "zero2.json", "train.max_steps=3", f"model.from_pretrained={ckpt}",
                            "model.freeze=[shared, encoder.layers.0]", "model.attention_dropout=0.05",
                            "reconcile.method=gradvac", "optim.warmup_steps=0"))
    start = read_metrics(out)[0]
    assert start["world_size"] == 2 and start["zero_stage"] == 2
    w0, w1 = load_file(f"{ckpt}/model.safetensors"), load_file(str(out / "model" / "model.safetensors"))
    frozen = [k for k in w0 if k == "model.shared.weight" or k.startswith("model.encoder.layers.0.")]
    assert len(frozen) == 17 and start["frozen_parameters"] == sum(w0[k].numel() for k in frozen)
    assert start["trainable_parameters"] == sum(w0[k].numel() for k in w0 if k not in frozen and "embed_tokens" not in k
                                                and k != "lm_head.weight")
    assert all(torch.equal(w0[k], w1[k]) for k in frozen)
    assert all((w0[k] - w1[k]).abs().max() > 0 for k in ("model.encoder.layers.1.fc1.weight",
                                                         "model.decoder.layers.0.fc1.weight"))
    exported = M2M100Config.from_pretrained(str(out / "model"))
    assert (exported.dropout, exported.attention_dropout, exported.encoder_layerdrop) == (0.0, 0.05, 0.0)


@pytest.mark.distributed
def test_resume_with_frozen_parameters_zero3(data_bin, tmp_path):
    """2 + 2 steps with a resume in between end where 4 uninterrupted steps end (ZeRO-3, which
    partitions the frozen weights too); the frozen ones equal their initial values; a resume that
    changes model.freeze is refused, naming the field."""
    from safetensors.torch import load_file

    from conftest import read_metrics, run_ranks, train_args

    full, part = tmp_path / "full", tmp_path / "part"
    args = ("zero3.json", "model.freeze=[shared, decoder.layers.0.fc2]", "reconcile.method=gradvac",
            "train.save_interval=2", "optim.warmup_steps=0")
    run_ranks(2, train_args(data_bin, full, *args, "train.max_steps=4"))
    run_ranks(2, train_args(data_bin, part, *args, "train.max_steps=2"))
    run_ranks(2, train_args(data_bin, part, *args, "train.max_steps=4"))
    starts = [m for m in read_metrics(part) if m.get("event") == "start"]
    assert [(s["world_size"], s["zero_stage"], s["resumed_from_step"]) for s in starts] == [(2, 3, 0), (2, 3, 2)]
    wf, wp = (load_file(str(r / "model" / "model.safetensors")) for r in (full, part))
    for k in wf:
        assert (wf[k] - wp[k]).abs().max() <= 1e-5 * max(float(wf[k].abs().max()), 1e-3), k
    torch.manual_seed(1)                       # train.seed: the initial weights
    init = build_model("test", wf["model.shared.weight"].shape[0], 48, dropout=0.0).state_dict()
    for k in ("model.shared.weight", "model.decoder.layers.0.fc2.weight", "model.decoder.layers.0.fc2.bias"):
        assert torch.equal(wf[k], init[k]), k
    assert not torch.equal(wf["model.decoder.layers.0.fc1.weight"], init["model.decoder.layers.0.fc1.weight"])
    p = run_ranks(2, train_args(data_bin, part, *args[:1], "model.freeze=[shared]", *args[2:], "train.max_steps=5"),
                  check=False)
    assert p.returncode != 0 and "model.freeze" in p.stderr, p.stderr[-2000:]


@pytest.mark.distributed
def test_training_refuses_a_pattern_that_matches_nothing(data_bin, tmp_path):
    from conftest import run_ranks, train_args

    p = run_ranks(1, train_args(data_bin, tmp_path / "run", "zero2.json", "model.freeze=[shared, encoder.layers.7]"),
                  check=False)
    assert p.returncode != 0, p.stderr[-2000:]
    assert "error: field 'model.freeze[1]': pattern 'encoder.layers.7' matches no parameter" in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()
