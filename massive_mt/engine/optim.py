"""Loss, optimizer and learning-rate schedule (fairseq conventions)."""
from __future__ import annotations

import math

import torch


# rows of [tokens x vocabulary] upcast to fp32 at a time: 2**24 elements (64 MiB), 64 tokens at 256 k
_CHUNK_ELEMENTS = 1 << 24


def _row_chunks(n_rows: int, vocab: int):
    step = max(1, _CHUNK_ELEMENTS // max(vocab, 1))
    for i in range(0, n_rows, step):
        yield i, min(i + step, n_rows)


class _LabelSmoothedCE(torch.autograd.Function):
    """fairseq's label-smoothed cross-entropy summed over tokens, without a [tokens x vocabulary]
    log-softmax: forward keeps per token only the logsumexp (computed chunk-wise in fp32), backward
    writes softmax - q (q the smoothed target) chunk by chunk into one buffer in the logits' dtype.

    Per token, with lse the logsumexp, y the label and eps_i = eps / (V - 1):
      nll    = lse - x_y
      smooth = -sum_c log p_c = V * lse - sum_c x_c
      loss   = (1 - eps - eps_i) * nll + eps_i * smooth = -sum_c q_c log p_c,
      q_c    = eps_i + (1 - eps - eps_i) [c = y],   d loss / d x = p * sum(q) - q.
    """

    @staticmethod
    def forward(ctx, logits, labels, mask, smoothing):
        n, v = logits.shape
        eps_i = smoothing / (v - 1) if v > 1 else 0.0
        on = 1.0 - smoothing - eps_i
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)
        nll = torch.empty_like(lse)
        smooth = torch.empty_like(lse)
        for i, j in _row_chunks(n, v):
            x = logits[i:j].float()
            torch.logsumexp(x, dim=-1, out=lse[i:j])
            nll[i:j] = lse[i:j] - x.gather(1, labels[i:j].unsqueeze(1)).squeeze(1)
            smooth[i:j] = v * lse[i:j] - x.sum(-1)
            del x
        loss_sum = (on * nll + eps_i * smooth).masked_fill_(~mask, 0.0).sum()
        nll_sum = nll.masked_fill_(~mask, 0.0).sum()
        ctx.save_for_backward(logits, labels, mask, lse)
        ctx.coef = (on, eps_i, on + v * eps_i)          # weight of the label, of every class, sum(q)
        ctx.mark_non_differentiable(nll_sum)
        return loss_sum, nll_sum

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll):
        logits, labels, mask, lse = ctx.saved_tensors
        on, eps_i, sum_q = ctx.coef
        grad = torch.empty_like(logits)
        scale = grad_loss.float() * mask.float()         # per token: dL/dloss, 0 on padding
        in_place = logits.dtype == torch.float32
        for i, j in _row_chunks(logits.size(0), logits.size(1)):
            # log-probabilities of one chunk in fp32: written straight into the gradient when it is
            # fp32, else a chunk-sized fp32 temporary (bf16/fp16 - fp32 promotes to fp32)
            g = torch.sub(logits[i:j], lse[i:j, None], out=grad[i:j]) if in_place else logits[i:j] - lse[i:j, None]
            g.exp_().mul_(sum_q).sub_(eps_i)                 # p * sum(q) - eps_i
            g.scatter_add_(1, labels[i:j, None], g.new_full((j - i, 1), -on))
            g.mul_(scale[i:j, None])
            if not in_place:
                grad[i:j].copy_(g)
            del g
        return grad, None, None, None


def label_smoothed_loss(logits: torch.Tensor, labels: torch.Tensor, pad_id: int, smoothing: float):
    """Token-level label-smoothed cross-entropy (fairseq's `label_smoothed_nll_loss`: eps/(V-1) on
    every wrong class, 1-eps on the right one), averaged over the non-pad target tokens.

    Returns (loss, nll_sum, n_tokens): `loss` is what is back-propagated (the micro-batch mean,
    DeepSpeed divides it by gradient_accumulation_steps), `nll_sum` the unsmoothed negative
    log-likelihood summed over tokens (for perplexity/logging).

    Memory: beyond the logits (any float dtype, kept for backward) and their gradient (same dtype),
    forward and backward hold only fp32 chunks of `_CHUNK_ELEMENTS` and a few per-token vectors;
    docs/gpu.md "Loss memory".
    """
    v = logits.size(-1)
    logits = logits.reshape(-1, v)
    labels = labels.reshape(-1)
    mask = labels.ne(pad_id)
    n_tokens = mask.sum()
    loss_sum, nll_sum = _LabelSmoothedCE.apply(logits, labels.masked_fill(~mask, 0), mask, float(smoothing))
    return loss_sum / n_tokens.clamp_min(1), nll_sum.detach(), n_tokens.detach()


def inverse_sqrt_lambda(base_lr: float, warmup_steps: int, warmup_init_lr: float):
    """fairseq's inverse_sqrt schedule as a LambdaLR multiplier of base_lr.

    step < warmup: linear from warmup_init_lr to base_lr; after: base_lr * sqrt(warmup / step).
    `step` is the number of optimizer steps already taken (LambdaLR's counter).
    """
    def fn(step: int) -> float:
        s = step + 1
        if warmup_steps > 0 and s <= warmup_steps:
            lr = warmup_init_lr + (base_lr - warmup_init_lr) * s / warmup_steps
        else:
            lr = base_lr * math.sqrt(max(warmup_steps, 1) / s)
        return lr / base_lr
    return fn


def build_optimizer(model: torch.nn.Module, cfg_optim):
    """AdamW (torch) and the inverse-sqrt LambdaLR schedule, handed to deepspeed.initialize."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg_optim.lr, betas=tuple(cfg_optim.betas), eps=cfg_optim.eps,
                            weight_decay=cfg_optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, inverse_sqrt_lambda(cfg_optim.lr, cfg_optim.warmup_steps, cfg_optim.warmup_init_lr))
    return opt, sched
