"""Loss, optimizer and learning-rate schedule (fairseq conventions)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def label_smoothed_loss(logits: torch.Tensor, labels: torch.Tensor, pad_id: int, smoothing: float):
    """Token-level label-smoothed cross-entropy, averaged over the non-pad target tokens.

    Returns (loss, nll_sum, n_tokens): `loss` is what is back-propagated (the micro-batch mean,
    DeepSpeed divides it by gradient_accumulation_steps), `nll_sum` the unsmoothed negative
    log-likelihood summed over tokens (for perplexity/logging).
    """
    logits = logits.float().view(-1, logits.size(-1))
    labels = labels.reshape(-1)
    mask = labels.ne(pad_id)
    n_tokens = mask.sum()
    lprobs = F.log_softmax(logits, dim=-1)
    nll = -lprobs.gather(1, labels.unsqueeze(1)).squeeze(1)
    # fairseq's label_smoothed_nll_loss: eps/(V-1) on every wrong class, 1-eps on the right one
    smooth = -lprobs.sum(-1)
    v = lprobs.size(-1)
    eps_i = smoothing / (v - 1) if v > 1 else 0.0
    per_tok = (1.0 - smoothing - eps_i) * nll + eps_i * smooth
    per_tok = per_tok.masked_fill(~mask, 0.0)
    loss = per_tok.sum() / n_tokens.clamp_min(1)
    return loss, nll.masked_fill(~mask, 0.0).sum().detach(), n_tokens.detach()


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
