"""massive_mt.engine.zero_adapter.GradShards on real DeepSpeed engines (CPU, gloo), every supported layout.

The cases of one world size run in one launch of tests/dist/adapter_check.py on N local ranks
(`one_launch`, tests/conftest.py); the script compares per-task gradient snapshots, Grams and the
written-back update with an unsharded float64 reference, case by case.
"""
import subprocess
import sys

import pytest

from conftest import REPO, dist_env, dist_result, one_launch, run_ranks

SCRIPT = "tests/dist/adapter_check.py"
CLIP = "2.0"        # below the norm of the test's reconciled update: clipping is active

CASES = [
    # (world size, stage, dtype, clip)
    *[(1, stage, "fp32", None) for stage in (0, 1, 2, 3)],
    *[(2, stage, "fp32", CLIP) for stage in (0, 1, 2, 3)],
    (4, 2, "fp32", None),
    (4, 3, "fp32", CLIP),
    (2, 1, "bf16", CLIP),           # BF16_Optimizer: clipping from the Gram
    (2, 2, "bf16", CLIP),           # DeepSpeedZeroOptimizer with an fp32 flat_partition: DeepSpeed's clipping
    (2, 3, "bf16", None),           # ZeRO-3 with bf16 parameters, fp32 gradient partitions
]
EXPECTED_LAYOUT = {(0, "fp32"): "z0", (1, "fp32"): "z12", (2, "fp32"): "z12", (3, "fp32"): "z3",
                 (1, "bf16"): "bf16", (2, "bf16"): "z12", (3, "bf16"): "z3"}


def case_of(params: dict) -> str:
    """A case as adapter_check.py's --case names it: STAGE:DTYPE:CLIP (clip 0: none)."""
    return f"{params['stage']}:{params['dtype']}:{params['clip'] or 0}"


def launch(world: int, cases: list[str]) -> dict:
    """Every case of one world size in one launch of the script."""
    r = dist_result(run_ranks(world, [SCRIPT, *(a for c in cases for a in ("--case", c))], timeout=600))
    assert r["world_size"] == world
    return r["cases"]


@pytest.mark.distributed
@pytest.mark.parametrize("world,stage,dtype,clip", CASES,
                         ids=[f"ws{w}-zero{s}-{d}" + ("-clip" if c else "") for w, s, d, c in CASES])
def test_grad_shards_match_reference(request, launches, world, stage, dtype, clip):
    r = one_launch(request, launches, world, case_of, launch)[case_of(request.node.callspec.params)]
    assert r["world_size"] == world
    assert r["layout"] == EXPECTED_LAYOUT[stage, dtype]
    assert r["ok"] is True, r
    assert r["clipped"] == bool(clip), r


@pytest.mark.distributed
def test_check_detects_stale_zero3_partitions_without_begin_step():
    p = run_ranks(1, [SCRIPT, "--stage", "3", "--skip-begin-step"], timeout=300, check=False)
    r = dist_result(p)
    assert p.returncode != 0 and r["layout"] == "z3" and r["ok"] is False
    assert r["errors"]["grad"] > 1e-2, r


@pytest.mark.slow
def test_unsupported_configs_raise_config_error():
    p = subprocess.run([sys.executable, SCRIPT, "--refusals"], env=dist_env(), cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    refusals = dist_result(p)["refusals"]
    expected_field = {"offload_optimizer": "zero_optimization.offload_optimizer",
                      "offload_param": "zero_optimization.offload_param",
                      "fp16": "fp16.enabled",
                      "managed_gradient_accumulation": "managed_gradient_accumulation",
                      "gradient_clipping": "gradient_clipping",
                      "wrapper": "zero_optimization.stage"}
    assert set(refusals) == set(expected_field)
    for case, field in expected_field.items():
        assert refusals[case]["outcome"] == "ConfigError", (case, refusals[case])
        assert field in refusals[case]["message"], (case, refusals[case])


def test_each_ds_config_setting_has_exactly_one_layout():
    from massive_mt.engine.zero_adapter import LAYOUTS, layout_for

    pairs = [(stage, bf16) for stage in (0, 1, 2, 3) for bf16 in (False, True)]
    owners = {pair: [c.name for c in LAYOUTS if pair in c.ds_settings] for pair in pairs}
    assert owners == {(0, False): ["z0"], (0, True): [], (1, False): ["z12"], (1, True): ["bf16"],
                      (2, False): ["z12"], (2, True): ["z12"], (3, False): ["z3"], (3, True): ["z3"]}
    assert len({c.wrapper for c in LAYOUTS}) == len(LAYOUTS)     # one layout per optimizer wrapper
    assert [c.name for c in LAYOUTS if c.clip_from_gram] == ["bf16"]
    assert layout_for(1, True).clip_from_gram and not layout_for(2, True).clip_from_gram


@pytest.mark.distributed
def test_layout_is_chosen_once_and_skip_and_local_grads_go_through_it():
    r = dist_result(run_ranks(1, ["tests/dist/layout_check.py"], timeout=300))
    assert r["world_size"] == 1
    layouts = r["layouts"]
    assert {k: v["layout"] for k, v in layouts.items()} == {f"{s}-{d}": name for (s, d), name in EXPECTED_LAYOUT.items()}
    for name, v in layouts.items():
        assert v["matches_config"] and v["cached"] and v["grad_shards_uses_it"], (name, v)
        assert v["local_grads"] > 0 and v["grad_nonzero"], (name, v)
        assert (v["finite_verdict"], v["nan_verdict"], v["after_skip_verdict"]) == (False, True, False), (name, v)
        assert v["skip_calls"] == 1 and v["cleared"] and v["weights_kept"] and v["stepped_after_skip"], (name, v)
    assert r["zero0_bf16"].startswith("ConfigError:") and "zero_optimization.stage" in r["zero0_bf16"]
