"""Dense Transformer encoder-decoder (M2M100 architecture from `transformers`).

M2M100 conventions: shared source/target/output embeddings, a language tag token per
language (`__fr__`), source = [src_tag] + tokens + [</s>], target = [tgt_tag] + tokens + [</s>],
decoding starts from </s> with the target tag forced as the first generated token.
Models are saved with `save_pretrained` and load back with `from_pretrained`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from transformers import M2M100Config, M2M100ForConditionalGeneration

from .errors import ConfigError

# d_model, ffn, heads, encoder layers, decoder layers
PRESETS = {
    "test": dict(d_model=32, ffn=64, heads=2, enc=1, dec=1),        # unit tests
    "tiny": dict(d_model=256, ffn=1024, heads=4, enc=3, dec=3),     # CPU demo
    "small": dict(d_model=512, ffn=2048, heads=8, enc=3, dec=3),    # base width, half its depth
    "base": dict(d_model=512, ffn=2048, heads=8, enc=6, dec=6),     # Transformer-base (Vaswani et al.)
    "big": dict(d_model=1024, ffn=4096, heads=16, enc=6, dec=6),    # Transformer-big
}


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


def build_model(preset: str, vocab_size: int, max_len: int, from_pretrained: Optional[str] = None,
                **dropouts) -> M2M100ForConditionalGeneration:
    """A fresh model from a preset, or a local HF checkpoint directory (nothing is downloaded)."""
    if from_pretrained is not None:
        if not Path(from_pretrained, "config.json").is_file():
            raise ConfigError(f"field 'model.from_pretrained': {from_pretrained!r} has no config.json")
        model = M2M100ForConditionalGeneration.from_pretrained(from_pretrained, local_files_only=True)
        if model.config.vocab_size < vocab_size:
            raise ConfigError(f"field 'model.from_pretrained': {from_pretrained} has vocab_size "
                              f"{model.config.vocab_size} < the tokenizer's {vocab_size}")
        return model
    return M2M100ForConditionalGeneration(preset_config(preset, vocab_size, max_len, **dropouts))


def count_parameters(model) -> int:
    """Unique parameters (tied embeddings counted once)."""
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += getattr(p, "ds_numel", p.numel())
    return n
