"""layout_of (massive_mt.engine.zero_adapter) on a real DeepSpeed engine of every supported
(ZeRO stage, dtype): the layout it picks, that it picks it once, and that the non-finite check,
skip_step and GradShards all go through that one layout object.

    torchrun --nproc_per_node 1 tests/dist/layout_check.py

Per layout: one step's backward (every micro-batch, the last one a boundary), then
local_grads_nonfinite on the layout's local gradients (finite, then with one value set to NaN),
skip_step (must call the layout's skip once, clear the gradient, leave the weights alone), and a
normal step afterwards (must change the weights: the optimizer is still usable after a skip).
"""
import torch

import deepspeed
import deepspeed.comm as dist

from massive_mt.engine.zero_adapter import (GradShards, layout_for, layout_of, local_grads_nonfinite,
                                            skip_step)

from adapter_check import K, M, batch, ds_config, loss_fn, make_engine, model_params, Net
from common import emit_result, exit_now, run_rank

LAYOUTS = [(0, "fp32"), (1, "fp32"), (2, "fp32"), (3, "fp32"), (1, "bf16"), (2, "bf16"), (3, "bf16")]


def one_step_backward(engine, step):
    for t in range(K):
        for m in range(M):
            engine.set_gradient_accumulation_boundary(t == K - 1 and m == M - 1)
            x, y = batch(step, t, 0, m)
            engine.backward(loss_fn(engine(x, t), y))


def check(stage, dtype):
    torch.manual_seed(0)
    engine = make_engine(Net(), ds_config(stage, dtype, 0.0))
    layout = layout_of(engine)
    out = {"class": type(layout).__name__, "layout": layout.name,
           "matches_config": type(layout) is layout_for(stage, dtype == "bf16"),
           "cached": layout_of(engine) is layout, "grad_shards_uses_it": GradShards(engine)._impl is layout}

    one_step_backward(engine, 0)
    grads = layout.local_grads()
    out["local_grads"] = len(grads)
    out["grad_nonzero"] = any(bool(t.abs().sum() > 0) for t in grads)
    out["finite_verdict"] = bool(local_grads_nonfinite(engine))
    with torch.no_grad():
        grads[0].view(-1)[0] = float("nan")
    out["nan_verdict"] = bool(local_grads_nonfinite(engine))

    before = model_params(engine)
    calls = []
    layout_skip = layout.skip
    layout.skip = lambda: (calls.append(1), layout_skip())[1]
    skip_step(engine)
    out["skip_calls"] = len(calls)
    out["cleared"] = all(bool((t == 0).all()) for t in layout.local_grads())
    out["after_skip_verdict"] = bool(local_grads_nonfinite(engine))
    out["weights_kept"] = bool(torch.equal(model_params(engine), before))

    one_step_backward(engine, 1)
    engine.step()
    out["stepped_after_skip"] = not torch.equal(model_params(engine), before)
    return out


def main():
    deepspeed.init_distributed(dist_backend="gloo")
    results = {f"{stage}-{dtype}": check(stage, dtype) for stage, dtype in LAYOUTS}
    try:
        layout_for(0, True)
        refused = None
    except Exception as e:          # noqa: BLE001 (reported: the test names the class)
        refused = f"{type(e).__name__}: {e}"
    emit_result({"world_size": dist.get_world_size(), "layouts": results, "zero0_bf16": refused})
    dist.barrier()
    exit_now(0)


if __name__ == "__main__":
    run_rank(main)
