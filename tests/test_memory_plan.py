"""The memory plan (massive_mt/experiments/memory_plan.py): exact parameter counts, measured activations, ZeRO's layout."""

from __future__ import annotations

import pytest

from massive_mt import cli
from massive_mt.experiments.memory_plan import Activations, count_parameters, measure_activations, plan, shape_config
from massive_mt.engine.model import preset_config


def test_parameter_count_is_the_built_models():
    from transformers import M2M100ForConditionalGeneration

    config = preset_config("tiny", vocab_size=1000, max_len=64)
    model = M2M100ForConditionalGeneration(config)
    assert count_parameters(config)[0] == sum(p.numel() for p in model.parameters()) == model.num_parameters()
    nllb, largest = count_parameters(shape_config("nllb-600m"))
    assert round(nllb / 1e6) == 615 and largest == 256206 * 1024   # NLLB-200-distilled-600M; its shared embedding


@pytest.mark.slow
def test_activations_measured_per_layer():
    config = preset_config("small", vocab_size=1000, max_len=64)
    full, ckpt = measure_activations(config), measure_activations(config, checkpointing=True)
    assert ckpt.encoder == ckpt.decoder == 2 * config.d_model      # a checkpointed layer keeps its bf16 input
    assert full.decoder > full.encoder > 10 * config.d_model       # cross-attention adds to the decoder
    wide = measure_activations(preset_config("big", vocab_size=1000, max_len=64))
    assert 1.6 < wide.encoder / full.encoder < 2.4                 # twice the width, about twice the bytes
    assert ckpt.per_token(config) < full.per_token(config)
    config.encoder_layerdrop = config.decoder_layerdrop = 0.5       # checkpoints carry LayerDrop; training disables it
    assert measure_activations(config) == full


def test_plan_follows_zero_layout():
    config = shape_config("nllb-600m")
    P, largest = count_parameters(config)
    acts = Activations(0.0, 0.0, 0.0, 0.0, 0.0, False, 64)
    z1, z2, z3 = (plan(config, 8, z, 8, 4096, acts) for z in (1, 2, 3))
    assert z1["fp32 master + Adam"] == z2["fp32 master + Adam"] == 12 * P / 8
    assert z1["fp32 gradients"] == 4 * P and z2["fp32 gradients"] == 4 * P / 8
    assert z2["snapshot (K=8)"] == 4 * 8 * P / 8 and z1["snapshot (K=8)"] == 4 * 8 * P
    assert z3["bf16 weights"] == 2 * P / 8 + 2 * largest and z2["bf16 weights"] == 2 * P
    assert plan(config, 8, 2, 8, 4096, acts, reconcile=False)["snapshot (K=8)"] == 0
    assert z2["total"] == pytest.approx(sum(v for k, v in z2.items() if k != "total"))


@pytest.mark.slow
def test_command_line(capsys):
    assert cli.main(["memory-plan", "--model", "m2m100-418m", "--zero", "2", "--tasks", "8", "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "| m2m100-418m (0.48 B), ZeRO-2, N=8, K=8 |" in out
    with pytest.raises(SystemExit):
        cli.main(["memory-plan", "--model", "no-such-shape"])


@pytest.mark.slow
def test_cpu_step_at_a_large_vocabulary_is_bounded_by_the_lean_loss():
    """One micro-batch at 16 k entries: the training step holds the logits, their gradient and not
    more than one further [tokens x vocabulary] fp32 tensor (the model itself is tiny). Measured in a
    fresh process through the command line, as a user runs it: the test process's own heap, grown by
    the tests before it, would hide part of the step's peak."""
    import json
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "massive_mt.cli", "memory-plan", "--measure-cpu", "test",
                        "--vocab", "16000", "--max-tokens", "1024"], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    r = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("{")))
    tv = r["one_fp32_tokens_x_vocab_bytes"]
    assert r["tokens"] == 1024 and tv == 1024 * 16000 * 4
    assert 1.5 * tv < r["train_peak_bytes"] < 3.2 * tv
    assert tv < r["evaluate_peak_bytes"] < 4.2 * tv
