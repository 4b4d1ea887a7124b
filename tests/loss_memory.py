"""Peak host memory of the label-smoothed loss, old formula against massive_mt.engine.optim (CPU, RSS).

`reference_loss` is the formula massive_mt used before its loss became a custom autograd function:
log-softmax over an fp32 copy of the logits, then gather and sum (fairseq's label_smoothed_nll_loss).
It is the tests' reference for values and gradients.

Run as a script, it measures for each implementation and dtype the resident-set high-water mark
(VmHWM, reset through /proc/self/clear_refs) of one loss head: logits = hidden @ W (the logits are an
intermediate, as in the model), the loss, backward to hidden and W. It prints one JSON line per case
with the peak over the inputs, in bytes and in units of one fp32 [tokens x vocabulary] tensor, and
that peak less the logits and their gradient.

    python tests/loss_memory.py --tokens 4096 --vocab 65536
"""
from __future__ import annotations

import argparse
import json
import re
import sys

import torch
import torch.nn.functional as F


def reference_loss(logits: torch.Tensor, labels: torch.Tensor, pad_id: int, smoothing: float):
    logits = logits.float().view(-1, logits.size(-1))
    labels = labels.reshape(-1)
    mask = labels.ne(pad_id)
    n_tokens = mask.sum()
    lprobs = F.log_softmax(logits, dim=-1)
    nll = -lprobs.gather(1, labels.unsqueeze(1)).squeeze(1)
    smooth = -lprobs.sum(-1)
    v = lprobs.size(-1)
    eps_i = smoothing / (v - 1) if v > 1 else 0.0
    per_tok = (1.0 - smoothing - eps_i) * nll + eps_i * smooth
    per_tok = per_tok.masked_fill(~mask, 0.0)
    loss = per_tok.sum() / n_tokens.clamp_min(1)
    return loss, nll.masked_fill(~mask, 0.0).sum().detach(), n_tokens.detach()


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                   # VmHWM := VmRSS (Linux >= 4.0)


def measure(impl: str, dtype: torch.dtype, tokens: int, vocab: int, hidden: int = 64) -> dict:
    from massive_mt.engine.optim import label_smoothed_loss
    fn = {"old": reference_loss, "new": label_smoothed_loss}[impl]
    g = torch.Generator().manual_seed(0)
    h = torch.randn(tokens, hidden, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(hidden, vocab, generator=g) / hidden ** 0.5).to(dtype).requires_grad_()
    labels = torch.randint(2, vocab, (tokens,), generator=g)
    labels[-tokens // 8:] = 1                          # an eighth padding
    _reset_peak()
    base = _status("VmRSS")
    loss, _, _ = fn(h @ w, labels, 1, 0.1)
    loss.backward()
    peak = _status("VmHWM") - base
    del loss
    h.grad = w.grad = None
    t32 = tokens * vocab * 4                           # one fp32 [tokens x vocabulary] tensor
    own = 2 * tokens * vocab * torch.finfo(dtype).bits // 8    # the logits and their gradient
    return {"impl": impl, "dtype": str(dtype).removeprefix("torch."), "tokens": tokens, "vocab": vocab,
            "peak_bytes": peak, "peak_fp32_tensors": round(peak / t32, 2),
            "beyond_logits_and_grad_fp32_tensors": round((peak - own) / t32, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=65536)
    ap.add_argument("--impl", nargs="+", default=["old", "new"], choices=["old", "new"])
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    for dt in a.dtype:
        for impl in a.impl:
            print(json.dumps(measure(impl, getattr(torch, dt), a.tokens, a.vocab)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
