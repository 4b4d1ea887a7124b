"""Dense Transformer encoder-decoder (M2M100 architecture from `transformers`).

M2M100 conventions: shared source/target/output embeddings, a language tag token per
language (`__fr__`), source = [src_tag] + tokens + [</s>], target = [tgt_tag] + tokens + [</s>],
decoding starts from </s> with the target tag forced as the first generated token.
Models are saved with `save_pretrained` and load back with `from_pretrained`.

Large-model options (`build_model`): `attn_implementation` is transformers' attention kernel
(`sdpa`: torch's scaled_dot_product_attention, `eager`: the reference matmul/softmax,
`flash_attention_2`: the flash-attn package); `activation_checkpointing` recomputes each encoder
and decoder layer in the backward pass (torch.utils.checkpoint, non-reentrant, RNG state
preserved so dropout masks are replayed).

A checkpoint loaded with `from_pretrained` takes the dropout rates given to `build_model` (its
config's `dropout`, `attention_dropout`, `activation_dropout` are replaced before the modules are
built, so every layer uses them) and no layer drop (`encoder_layerdrop`/`decoder_layerdrop` = 0, as
in the presets: a rank skipping a layer the others run would break the per-task gradient layout).

`freeze_parameters` turns off the gradient of parameters chosen by name pattern (`model.freeze`).
"""
from __future__ import annotations

import importlib.util
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from transformers import M2M100Config, M2M100ForConditionalGeneration

from massive_mt.errors import ConfigError

# d_model, ffn, heads, encoder layers, decoder layers
PRESETS = {
    "test": dict(d_model=32, ffn=64, heads=2, enc=1, dec=1),        # unit tests
    "tiny": dict(d_model=256, ffn=1024, heads=4, enc=3, dec=3),     # CPU demo
    "small": dict(d_model=512, ffn=2048, heads=8, enc=3, dec=3),    # base width, half its depth
    "base": dict(d_model=512, ffn=2048, heads=8, enc=6, dec=6),     # Transformer-base (Vaswani et al.)
    "big": dict(d_model=1024, ffn=4096, heads=16, enc=6, dec=6),    # Transformer-big
    # the shape of M2M-100 418M and NLLB-200-distilled-600M (Fan et al. 2020; NLLB Team 2022)
    "large": dict(d_model=1024, ffn=4096, heads=16, enc=12, dec=12),
}
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


def check_attn_implementation(name: str) -> None:
    """ConfigError naming `model.attn_implementation` for an unknown or unavailable kernel."""
    if name not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(f"field 'model.attn_implementation': must be one of {ATTN_IMPLEMENTATIONS}, got {name!r}")
    if name == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError("field 'model.attn_implementation': flash_attention_2 needs the flash-attn package "
                          "(pip install flash-attn; CUDA GPUs only), which is not importable here; use sdpa")


def preset_config(preset: str, vocab_size: int, max_len: int, pad_id: int = 1, bos_id: int = 0,
                  eos_id: int = 2, dropout: float = 0.1, attention_dropout: float = 0.0,
                  activation_dropout: float = 0.0) -> M2M100Config:
    if preset not in PRESETS:
        raise ConfigError(f"field 'model.preset': unknown preset {preset!r}; known: {sorted(PRESETS)}")
    p = PRESETS[preset]
    return M2M100Config(
        vocab_size=vocab_size, d_model=p["d_model"],
        encoder_layers=p["enc"], decoder_layers=p["dec"],
        encoder_attention_heads=p["heads"], decoder_attention_heads=p["heads"],
        encoder_ffn_dim=p["ffn"], decoder_ffn_dim=p["ffn"],
        max_position_embeddings=max(max_len, 8) + 2,
        dropout=dropout, attention_dropout=attention_dropout, activation_dropout=activation_dropout,
        encoder_layerdrop=0.0, decoder_layerdrop=0.0, activation_function="relu", scale_embedding=True,
        pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id, decoder_start_token_id=eos_id,
        tie_word_embeddings=True,
    )


DROPOUTS = ("dropout", "attention_dropout", "activation_dropout")


def build_model(preset: str, vocab_size: int, max_len: int, from_pretrained: Optional[str] = None,
                attn_implementation: str = "sdpa", activation_checkpointing: bool = False,
                **dropouts) -> M2M100ForConditionalGeneration:
    """A fresh model from a preset, or a local HF checkpoint directory (nothing is downloaded).
    `dropouts`: any of DROPOUTS (model.dropout, ...); they apply to both."""
    check_attn_implementation(attn_implementation)
    unknown = set(dropouts) - set(DROPOUTS)
    if unknown:
        raise TypeError(f"build_model: unknown dropout option(s) {sorted(unknown)}; known: {DROPOUTS}")
    if from_pretrained is not None:
        if not Path(from_pretrained, "config.json").is_file():
            raise ConfigError(f"field 'model.from_pretrained': {from_pretrained!r} has no config.json")
        config = M2M100Config.from_pretrained(from_pretrained, local_files_only=True)
        for name, value in dropouts.items():
            setattr(config, name, value)
        config.encoder_layerdrop = config.decoder_layerdrop = 0.0
        model = M2M100ForConditionalGeneration.from_pretrained(from_pretrained, config=config, local_files_only=True,
                                                               attn_implementation=attn_implementation)
        if model.config.vocab_size < vocab_size:
            raise ConfigError(f"field 'model.from_pretrained': {from_pretrained} has vocab_size "
                              f"{model.config.vocab_size} < the tokenizer's {vocab_size}")
    else:
        config = preset_config(preset, vocab_size, max_len, **dropouts)
        config._attn_implementation = attn_implementation
        model = M2M100ForConditionalGeneration(config)
    if activation_checkpointing:
        kwargs = {"use_reentrant": False}      # reentrant checkpointing breaks ZeRO's gradient hooks
        if hasattr(model, "activation_checkpointing_enable"):           # transformers >= 5.x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model


def add_language_embeddings(model, vocab_size: int, init: dict[int, list[int]]) -> None:
    """Rows for languages added to a pretrained tokenizer (`prepare --add-languages`): grow the
    shared embeddings (and the tied output layer) to `vocab_size` rows where they have fewer, and
    set row `i` of each `init` entry to the mean of the rows it names (a related language's tag,
    or all the model's language tags)."""
    import torch

    if model.config.vocab_size < vocab_size:
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    if not init:
        return
    weights = {model.get_input_embeddings().weight, model.get_output_embeddings().weight}   # one when tied
    with torch.no_grad():
        for row, sources in init.items():
            if not sources:
                raise ConfigError(f"no embedding rows to initialise the added language tag {row} from")
            for weight in weights:
                weight[row] = weight[sources].mean(0)


GLOB = frozenset("*?[")


def matches(name: str, pattern: str) -> bool:
    """The `model.freeze` rule. A pattern names parameter `name` (as `named_parameters()` spells it,
    e.g. `model.encoder.layers.0.fc1.weight`) when its dot-separated parts are consecutive whole
    parts of the name: `shared` names `model.shared.weight`, `encoder.layers.0` every parameter of
    the encoder's first layer (not `encoder.layers.10`), `layers.0` the first layer of both stacks.
    A pattern holding `*`, `?` or `[` is an fnmatch glob over the whole name instead
    (`*.layers.[01].*`, `*layer_norm*`)."""
    if GLOB & set(pattern):
        return fnmatchcase(name, pattern)
    return f".{pattern}." in f".{name}."


def freeze_parameters(model, patterns: Sequence[str], field: str = "model.freeze") -> tuple[int, int]:
    """requires_grad = False for every parameter a pattern names (see `matches`); (trainable, frozen)
    unique parameter counts. A pattern naming no parameter is a ConfigError naming it. Tied weights
    are one tensor under several names (M2M100: `model.shared`, `model.encoder.embed_tokens`,
    `model.decoder.embed_tokens`, `lm_head`): naming any of them freezes the tensor, the embedding
    and the output projection together."""
    aliases = list(model.named_parameters(remove_duplicate=False))
    for i, pattern in enumerate(patterns):
        hits = [p for n, p in aliases if matches(n, pattern)]
        if not hits:
            raise ConfigError(f"field '{field}[{i}]': pattern {pattern!r} matches no parameter; names look "
                              f"like {', '.join(n for n, _ in aliases[:2])}, ... (model.named_parameters())")
        for p in hits:
            p.requires_grad_(False)
    frozen = sum(getattr(p, "ds_numel", p.numel()) for _, p in model.named_parameters() if not p.requires_grad)
    if patterns and frozen == count_parameters(model):
        raise ConfigError(f"field '{field}': {list(patterns)} freezes every parameter; nothing is left to train")
    return count_parameters(model) - frozen, frozen


def count_parameters(model) -> int:
    """Unique parameters (tied embeddings counted once)."""
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += getattr(p, "ds_numel", p.numel())
    return n


def train_flops(config, src_lens, tgt_lens) -> float:
    """Model FLOPs of one training pass (forward + backward = 3 x forward) over sentence pairs with
    source lengths `src_lens` and target lengths `tgt_lens` (tokens incl. tag and </s>, no padding).

    Forward FLOPs = 2 x multiply-adds of the matrix products; per source token, each encoder layer
    costs 8d^2 (Q, K, V, O) + 4d*ffn, plus 4d^2 per decoder layer (the cross-attention K, V
    projections of the encoder output); per target token, each decoder layer costs 8d^2 (self
    Q, K, V, O) + 4d^2 (cross Q, O) + 4d*ffn, plus 2dV for the output projection; attention
    scores and their weighted sum add 4*s^2*d per encoder layer and 4*t^2*d (self, full matrix
    as computed) + 4*t*s*d (cross) per decoder layer and sentence. Embedding look-ups, layer
    norms, softmax and biases are left out (as in the 6N rule, which this reduces to for the
    linear layers: 3 x 2 x their parameters per token they act on).
    """
    s = np.asarray(src_lens, dtype=np.float64)
    t = np.asarray(tgt_lens, dtype=np.float64)
    d, V = config.d_model, config.vocab_size
    le, ld, fe, fd = config.encoder_layers, config.decoder_layers, config.encoder_ffn_dim, config.decoder_ffn_dim
    S, T = s.sum(), t.sum()
    enc = le * (S * (8 * d * d + 4 * d * fe) + 4 * d * (s * s).sum())
    dec = ld * (T * (12 * d * d + 4 * d * fd) + S * 4 * d * d + 4 * d * ((t * t).sum() + (t * s).sum()))
    return float(3 * (enc + dec + T * 2 * d * V))
