"""The Grams' full-fp32 GEMM guard (reconcile/groups.py _ieee_fp32_matmul) leaves the user's TF32 setting
as it found it, through whichever API set it: no GPU is needed to read and write the flags."""
import types

import pytest
import torch

from massive_mt.reconcile.groups import _ieee_fp32_matmul

CUDA = torch.device("cuda")            # only the device type is read: no GPU needed


@pytest.fixture()
def matmul():
    m = torch.backends.cuda.matmul
    saved = m.fp32_precision
    yield m
    m.fp32_precision = saved


@pytest.mark.parametrize("user", ["tf32", "ieee", "none"])
def test_new_precision_api_is_saved_and_restored(matmul, user):
    matmul.fp32_precision = user
    if user == "tf32":
        with pytest.raises(RuntimeError, match="mix of the legacy and new APIs"):
            matmul.allow_tf32                   # why the legacy flag must not be read (torch >= 2.9)
    with _ieee_fp32_matmul(CUDA):
        assert matmul.fp32_precision == "ieee"
    assert matmul.fp32_precision == user


def test_legacy_flag_where_the_new_api_is_absent(monkeypatch):
    legacy = types.SimpleNamespace(allow_tf32=True)          # torch < 2.9: only allow_tf32
    monkeypatch.setattr(torch.backends.cuda, "matmul", legacy)
    with _ieee_fp32_matmul(CUDA):
        assert legacy.allow_tf32 is False
    assert legacy.allow_tf32 is True


def test_cpu_leaves_the_flags_alone(matmul):
    matmul.fp32_precision = "tf32"
    with _ieee_fp32_matmul(torch.device("cpu")):
        assert matmul.fp32_precision == "tf32"
