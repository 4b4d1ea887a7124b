import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from loss_memory import reference_loss     # tests/loss_memory.py: the log-softmax formula
from massive_mt.engine import optim
from massive_mt.engine.optim import inverse_sqrt_lambda, label_smoothed_loss


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


def _loss_and_grad(fn, logits, labels, pad, eps):
    x = logits.detach().clone().requires_grad_()
    loss, nll_sum, n = fn(x, labels, pad, eps)
    (loss * 3.0).backward()                            # a non-unit upstream gradient
    return loss.detach(), nll_sum, n, x.grad


def _batch(dtype, V=37, pad=1):
    g = torch.Generator().manual_seed(1)
    logits = (4 * torch.randn(3, 7, V, generator=g)).to(dtype)
    labels = torch.randint(2, V, (3, 7), generator=g)
    labels[0, 5:] = pad
    labels[2, :] = pad                                  # a sentence of padding only
    labels[1, 2] = pad                                  # a pad inside a sentence is ignored too
    return logits, labels, pad


@pytest.mark.parametrize("chunk", [10 ** 9, 3 * 37 + 5])   # one chunk; chunks of 3 rows, uneven tail
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_lean_loss_equals_log_softmax_formula_fp32(monkeypatch, chunk, eps):
    monkeypatch.setattr(optim, "_CHUNK_ELEMENTS", chunk)
    logits, labels, pad = _batch(torch.float32)
    loss, nll, n, grad = _loss_and_grad(label_smoothed_loss, logits, labels, pad, eps)
    ref_loss, ref_nll, ref_n, ref_grad = _loss_and_grad(reference_loss, logits, labels, pad, eps)
    assert int(n) == int(ref_n) == int(labels.ne(pad).sum())
    assert loss.dtype == nll.dtype == torch.float32 and not nll.requires_grad
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(nll, ref_nll, rtol=1e-6, atol=0)
    assert grad.dtype == torch.float32 and grad.shape == logits.shape
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)
    assert grad[labels.eq(pad)].abs().max() == 0      # padding gets no gradient


def test_lean_loss_bf16_logits(monkeypatch):
    """bf16 logits: values in fp32 from the upcast logits, the gradient in bf16 as the reference's."""
    monkeypatch.setattr(optim, "_CHUNK_ELEMENTS", 4 * 37)
    logits, labels, pad = _batch(torch.bfloat16)
    loss, nll, n, grad = _loss_and_grad(label_smoothed_loss, logits, labels, pad, 0.1)
    ref_loss, ref_nll, _, ref_grad = _loss_and_grad(reference_loss, logits, labels, pad, 0.1)
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(nll, ref_nll, rtol=1e-6, atol=0)
    # both round the same fp32 gradient to bf16: equal up to one bf16 step where fp32 noise flips it
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=2 ** -7, atol=1e-7)
    assert (grad == ref_grad).float().mean() > 0.99


def test_lean_loss_all_padding_and_no_grad():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    labels = torch.ones(2, 3, dtype=torch.long)
    loss, nll, n = label_smoothed_loss(logits, labels, 1, 0.1)
    loss.backward()
    assert int(n) == 0 and float(loss.detach()) == 0.0 and float(nll) == 0.0
    assert logits.grad.abs().max() == 0
    with torch.no_grad():                               # evaluation: no autograd graph
        loss, _, _ = label_smoothed_loss(logits, torch.tensor([[2, 3, 1], [4, 1, 1]]), 1, 0.1)
    assert torch.isfinite(loss) and not loss.requires_grad


@pytest.mark.slow
def test_lean_loss_peak_memory():
    """Peak RSS of logits = h @ W, the loss and backward (tests/loss_memory.py, in a child process):
    the new loss holds nothing of [tokens x vocabulary] size beyond the logits and their gradient but
    an fp32 chunk; the log-softmax formula holds one more fp32 tensor in fp32, two in bf16."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(optim.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("loss_memory.py")),
                          "--tokens", "2048", "--vocab", "32768"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = {(r["impl"], r["dtype"]): r["beyond_logits_and_grad_fp32_tensors"]
            for r in map(json.loads, out.stdout.splitlines())}
    # a 2**24-element fp32 chunk is 0.25 of a 2048 x 32768 tensor
    assert rows["new", "float32"] < 0.5 and rows["new", "bfloat16"] < 0.5, rows
    assert rows["old", "float32"] > 0.9 and rows["old", "bfloat16"] > 1.9, rows


def test_inverse_sqrt_schedule():
    fn = inverse_sqrt_lambda(1e-3, warmup_steps=4, warmup_init_lr=0.0)
    lrs = [1e-3 * fn(s) for s in range(8)]
    assert lrs[:4] == [2.5e-4, 5e-4, 7.5e-4, 1e-3]
    assert math.isclose(lrs[7], 1e-3 * math.sqrt(4 / 8))
    assert all(a > b for a, b in zip(lrs[3:], lrs[4:]))
