import math

import torch
import torch.nn.functional as F

from massive_mt.optim import inverse_sqrt_lambda, label_smoothed_loss


def test_label_smoothed_loss_matches_fairseq_formula():
    torch.manual_seed(0)
    V, pad, eps = 11, 1, 0.1
    logits = torch.randn(2, 5, V)
    labels = torch.tensor([[4, 5, 6, 2, 1], [7, 8, 2, 1, 1]])
    loss, nll_sum, n = label_smoothed_loss(logits, labels, pad, eps)
    lp = F.log_softmax(logits, -1)
    mask = labels.ne(pad)
    nll = -lp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    smooth = -lp.sum(-1)
    eps_i = eps / (V - 1)
    ref = (((1 - eps - eps_i) * nll + eps_i * smooth) * mask).sum() / mask.sum()
    assert int(n) == 7
    assert torch.allclose(loss, ref)
    assert torch.allclose(nll_sum, (nll * mask).sum())
    # no smoothing: plain token-mean cross-entropy
    loss0, _, _ = label_smoothed_loss(logits, labels, pad, 0.0)
    assert torch.allclose(loss0, F.cross_entropy(logits.view(-1, V), labels.view(-1), ignore_index=pad))


def test_inverse_sqrt_schedule():
    fn = inverse_sqrt_lambda(1e-3, warmup_steps=4, warmup_init_lr=0.0)
    lrs = [1e-3 * fn(s) for s in range(8)]
    assert lrs[:4] == [2.5e-4, 5e-4, 7.5e-4, 1e-3]
    assert math.isclose(lrs[7], 1e-3 * math.sqrt(4 / 8))
    assert all(a > b for a, b in zip(lrs[3:], lrs[4:]))
