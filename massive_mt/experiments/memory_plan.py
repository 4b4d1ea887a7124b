"""Memory per GPU of fine-tuning an NLLB-200 / M2M-100 shaped model under ZeRO, before the
allocation is spent (docs/finetuning.md#memory-per-gpu).

The parameter count is the real model's, built on the meta device from its config. The
activation bytes per token are measured, not modelled: one bf16 forward of the architecture at
its real width (d_model, FFN, heads) and one or two layers, on the CPU, counting every tensor that
autograd saves for the backward pass (``torch.autograd.graph.saved_tensors_hooks``, each storage
once); the increments per encoder layer, per decoder layer and per vocabulary entry are then
scaled to the model's depth, vocabulary and the micro-batch's tokens. The rest follows ZeRO's
layout (DeepSpeed bf16 with fp32 gradient accumulation, AdamW):

| state | ZeRO-0 | ZeRO-1 | ZeRO-2 | ZeRO-3 |
|---|---|---|---|---|
| bf16 weights | 2P | 2P | 2P | 2P/N + the largest gathered module |
| fp32 master weights + Adam moments | 12P | 12P/N | 12P/N | 12P/N |
| fp32 gradients | 4P | 4P | 4P/N | 4P/N |
| per-task snapshot (a reconciler) | 4KP | 4KP | 4KP/N | 4KP/N |

plus the reduce buckets of the ds_config, the activations of one micro-batch and the loss's
[tokens x vocabulary] tensors at the backward peak (bf16 logits and their gradient, and the loss's
one fp32 chunk: docs/gpu.md#loss-memory). Not counted: the CUDA context and allocator fragmentation (budget ~1-2 GB).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import M2M100Config, M2M100ForConditionalGeneration

from massive_mt.engine.optim import _CHUNK_ELEMENTS as LOSS_CHUNK      # the loss's fp32 chunk (docs/gpu.md#loss-memory)

GiB = 1024 ** 3
# published shapes (the checkpoints' config.json): NLLB Team (2022), Fan et al. (2020)
SHAPES = {
    "m2m100-418m": dict(d_model=1024, ffn=4096, heads=16, layers=12, vocab=128112),
    "nllb-600m": dict(d_model=1024, ffn=4096, heads=16, layers=12, vocab=256206),
    "nllb-1.3b": dict(d_model=1024, ffn=8192, heads=16, layers=24, vocab=256206),
    "nllb-3.3b": dict(d_model=2048, ffn=8192, heads=16, layers=24, vocab=256206),
}


def shape_config(name_or_dir: str) -> M2M100Config:
    """The config of a named shape or of a local checkpoint directory (its config.json)."""
    if name_or_dir in SHAPES:
        s = SHAPES[name_or_dir]
        return M2M100Config(vocab_size=s["vocab"], d_model=s["d_model"], encoder_layers=s["layers"],
                            decoder_layers=s["layers"], encoder_attention_heads=s["heads"],
                            decoder_attention_heads=s["heads"], encoder_ffn_dim=s["ffn"], decoder_ffn_dim=s["ffn"],
                            max_position_embeddings=1024, activation_function="relu", scale_embedding=True,
                            dropout=0.1, tie_word_embeddings=True)
    path = Path(name_or_dir)
    if not (path / "config.json").is_file():
        raise SystemExit(f"memory plan: {name_or_dir!r} is neither a known shape ({', '.join(SHAPES)}) nor a "
                         "directory with a config.json")
    return M2M100Config.from_pretrained(str(path))


def count_parameters(config: M2M100Config) -> tuple[int, int]:
    """(parameters, the largest module's parameters), from the model built on the meta device."""
    with torch.device("meta"):
        model = M2M100ForConditionalGeneration(config)
    seen, total, largest = set(), 0, 0
    for module in model.modules():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        largest = max(largest, own)
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total, largest


def saved_bytes(config: M2M100Config, tokens: int, attn: str, checkpointing: bool) -> int:
    """Bytes autograd saves for backward in one bf16 forward of ``tokens`` source and target tokens
    (batch 1), each storage counted once, the weights and the loss's logits excluded (counted apart)."""
    torch.manual_seed(0)
    model = M2M100ForConditionalGeneration(config).to(torch.bfloat16)
    model.config._attn_implementation = attn
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids = torch.randint(4, config.vocab_size, (1, tokens))
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}   # saved too, but not activations
    storages: dict[int, int] = {}

    def pack(t):
        if isinstance(t, torch.Tensor):
            s = t.untyped_storage()
            if s.data_ptr() not in weights:
                storages[s.data_ptr()] = s.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.model(input_ids=ids, decoder_input_ids=ids)      # the encoder-decoder, without the output layer
    return sum(storages.values())


@dataclass
class Activations:
    """Bytes per token saved for backward, measured on sentences of ``tokens`` tokens."""
    base: float        # outside the layers (embeddings, final norms)
    encoder: float     # per encoder layer
    decoder: float     # per decoder layer
    encoder_full: float    # per encoder layer without checkpointing (what a recomputed layer holds)
    decoder_full: float
    checkpointing: bool
    tokens: int

    def per_token(self, config: M2M100Config) -> float:
        """The whole model's bytes per token; with checkpointing, plus one recomputed layer."""
        layers = config.encoder_layers * self.encoder + config.decoder_layers * self.decoder
        recomputed = max(self.encoder_full, self.decoder_full) if self.checkpointing else 0.0
        return self.base + layers + recomputed


def measure_activations(config: M2M100Config, attn: str = "sdpa", checkpointing: bool = False,
                        tokens: int = 64) -> Activations:
    """Per-token activation bytes, from forwards at the real width with 1 and 2 layers."""
    small = dict(vocab_size=512, max_position_embeddings=tokens + 4,
                 encoder_layerdrop=0.0, decoder_layerdrop=0.0)   # training as massive_mt does: no layer skipped

    def per_layer(ckpt: bool) -> tuple[float, float, float]:
        def at(enc: int, dec: int) -> int:
            c = M2M100Config(**{**config.to_dict(), **small, "encoder_layers": enc, "decoder_layers": dec})
            return saved_bytes(c, tokens, attn, ckpt)
        one, enc2, dec2 = at(1, 1), at(2, 1), at(1, 2)
        e, d = (enc2 - one) / tokens, (dec2 - one) / tokens
        return one / tokens - e - d, e, d
    base, e_full, d_full = per_layer(False)
    _, e, d = per_layer(True) if checkpointing else (base, e_full, d_full)
    return Activations(base, e, d, e_full, d_full, checkpointing, tokens)


def plan(config: M2M100Config, gpus: int, zero: int, tasks: int, tokens: int, acts: Activations,
         bucket: int = 50_000_000, reconcile: bool = True, counts: tuple[int, int] | None = None) -> dict[str, float]:
    """Bytes per GPU by component (see the module doc); ``counts``: ``count_parameters(config)``
    when the caller has it already."""
    P, largest = counts or count_parameters(config)
    N, V = gpus, config.vocab_size
    shard = (lambda x: x / N)
    out = {
        "bf16 weights": 2 * P if zero < 3 else 2 * P / N + 2 * largest,
        "fp32 master + Adam": 12 * P if zero == 0 else shard(12 * P),
        "fp32 gradients": 4 * P if zero < 2 else shard(4 * P),
        f"snapshot (K={tasks})": 0.0 if not reconcile else (4 * tasks * P if zero < 2 else shard(4 * tasks * P)),
        "reduce buckets": 2 * 4 * bucket,
        "activations": tokens * acts.per_token(config),
        "loss (bf16 logits, their gradient, one fp32 chunk)": tokens * V * (2 + 2) + 4 * LOSS_CHUNK,
    }
    out["total"] = sum(out.values())
    return out


def _status(field: str) -> int:
    import re

    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def measure_cpu_step(preset: str, vocab: int, tokens: int, sentence: int = 64) -> dict:
    """Peak resident memory (VmHWM over the memory in use before, Linux) of one training micro-batch
    (forward, the project's loss, backward) and of one evaluation pass (the test NLL's forward without
    gradients, and greedy generation of 8 tokens) of a preset model with a ``vocab``-entry vocabulary
    on the CPU, fp32: what the vocabulary costs where the training and evaluation code really run."""
    from massive_mt.engine.model import build_model
    from massive_mt.engine.optim import label_smoothed_loss

    def reset() -> int:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                                    # VmHWM := VmRSS
        rss, hwm = _status("VmRSS"), _status("VmHWM")
        if hwm > rss + (1 << 20):
            raise RuntimeError(f"/proc/self/clear_refs did not reset the peak (VmHWM {hwm} > VmRSS {rss} bytes): "
                               "this kernel cannot measure a step's peak memory")
        return rss

    torch.manual_seed(0)
    model = build_model(preset, vocab, sentence + 8)
    rows = max(1, tokens // sentence)
    ids = torch.randint(4, vocab, (rows, sentence))
    out = {"preset": preset, "vocab": vocab, "tokens": rows * sentence, "parameters": sum(p.numel() for p in model.parameters())}
    base = reset()
    model.train()
    logits = model(input_ids=ids, decoder_input_ids=ids).logits
    loss, _, _ = label_smoothed_loss(logits, ids, 1, 0.1)
    loss.backward()
    out["train_peak_bytes"] = _status("VmHWM") - base
    del logits, loss
    model.zero_grad(set_to_none=True)
    model.eval()
    base = reset()
    with torch.no_grad():
        logits = model(input_ids=ids, decoder_input_ids=ids).logits
        torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), ids, reduction="none")
        del logits
        model.generate(input_ids=ids, max_new_tokens=8, num_beams=1, do_sample=False,
                       forced_bos_token_id=5, decoder_start_token_id=2)
    out["evaluate_peak_bytes"] = _status("VmHWM") - base
    out["one_fp32_tokens_x_vocab_bytes"] = rows * sentence * vocab * 4
    return out


def table(rows: list[tuple[str, dict]]) -> str:
    names = list(rows[0][1])
    lines = ["| setting | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {label} | " + " | ".join(f"{v / GiB:.1f}" for v in r.values()) + " |" for label, r in rows]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="massive-mt memory-plan", description=__doc__.split("\n")[0])
    p.add_argument("--model", nargs="+", default=["nllb-600m", "nllb-1.3b", "nllb-3.3b"],
                   help=f"shapes ({', '.join(SHAPES)}) or checkpoint directories")
    p.add_argument("--gpus", type=int, nargs="+", default=[8], help="N: data-parallel ranks (GPUs)")
    p.add_argument("--zero", type=int, nargs="+", default=[2, 3], choices=[0, 1, 2, 3])
    p.add_argument("--tasks", type=int, nargs="+", default=[8, 16], help="K: tasks per step")
    p.add_argument("--max-tokens", type=int, default=4096, help="source (and target) tokens per micro-batch")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--plain", action="store_true", help="no reconciler (no per-task snapshot)")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--measure-cpu", metavar="PRESET", help="instead: measure one training micro-batch and one "
                   "evaluation pass of this model preset on the CPU at --vocab entries and --max-tokens tokens")
    p.add_argument("--vocab", type=int, default=256206, help="with --measure-cpu (default: NLLB's 256,206)")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if a.measure_cpu:
        r = measure_cpu_step(a.measure_cpu, a.vocab, a.max_tokens)
        print(json.dumps(r))
        print(f"{a.measure_cpu}, vocabulary {a.vocab:,}, {r['tokens']:,} tokens on the CPU: training micro-batch "
              f"{r['train_peak_bytes'] / GiB:.2f} GiB, evaluation {r['evaluate_peak_bytes'] / GiB:.2f} GiB "
              f"(one fp32 tokens x vocabulary tensor: {r['one_fp32_tokens_x_vocab_bytes'] / GiB:.2f} GiB)",
              file=sys.stderr)
        return 0
    rows, out = [], []
    for name in a.model:
        config = shape_config(name)
        acts = measure_activations(config, a.attn, a.activation_checkpointing)
        counts = count_parameters(config)
        P = counts[0]
        for zero in a.zero:
            for n in a.gpus:
                for k in a.tasks:
                    r = plan(config, n, zero, k, a.max_tokens, acts, reconcile=not a.plain, counts=counts)
                    label = f"{name} ({P / 1e9:.2f} B), ZeRO-{zero}, N={n}, K={k}"
                    rows.append((label, r))
                    out.append({"model": name, "parameters": P, "zero": zero, "gpus": n, "tasks": k,
                                "tokens": a.max_tokens, "bytes": r, "activation_bytes_per_token": vars(acts)})
    print(table(rows))
    print(f"\nGiB per GPU; {a.max_tokens} source and target tokens per micro-batch (sentences of 64 tokens), bf16, "
          f"attention {a.attn}, activation checkpointing {'on' if a.activation_checkpointing else 'off'}; CUDA "
          "context and fragmentation not included.", file=sys.stderr)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
