"""The step by strategy (massive_mt/engine/step.py): the Trainer runs the strategy of its reconcile
method and keeps only the outcome handling (tests/dist/step_strategy.py)."""
import json

import pytest

from conftest import REPO, TEST_LANGS, dist_result, read_metrics, run_ranks

pytestmark = pytest.mark.distributed

# CATS with valid meta data and no warm-up: step 0 is a meta step with a valid pass
SPECS = {"plain": "PlainStep", "gradvac": "ReconciledStep", "cats+meta_data=valid+warmup=0": "ReconciledStep"}


def test_trainer_delegates_the_step_to_its_strategy(data_bin, tmp_path):
    out = tmp_path / "run"
    r = dist_result(run_ranks(1, ["tests/dist/step_strategy.py", str(REPO / "ds_configs" / "zero2.json"), *SPECS, "--",
                                  f"data.data_bin={data_bin}", f"data.langs={json.dumps(TEST_LANGS)}", "data.max_len=48",
                                  "model.preset=test", "sampling.tasks_per_step=2", "sampling.max_tokens=256",
                                  "sampling.micro_batches_per_task=2", "train.tensorboard=false",
                                  "reconcile.log_interval=1", f"train.output_dir={out}"]))
    assert r["world_size"] == 1
    for spec, strategy in SPECS.items():
        m, method = r["methods"][spec], spec.split("+")[0]
        assert m["strategy"] == strategy, spec
        # one call of the strategy, with the sampler's plan of step 0, before the optimizer step
        assert m["run_calls"] == 1 and m["run_plan"] and m["run_step"] == 0, (spec, m)
        assert m["run_first"] and m["engine_step_after_backwards"], (spec, m)
        valid = 2 if method == "cats" else 0                        # one valid micro-batch per step task
        assert m["valid_passes"] == (1 if method == "cats" else 0), (spec, m)
        assert m["backwards"] == m["micro_batches"] + valid == 4 + valid, (spec, m)
        assert m["optimizer_steps"] == 1 and m["trainer_step"] == 1, (spec, m)
        # the stand-in strategy: no backward, no boundary, no optimizer step from the Trainer itself
        assert m["stand_in_calls"] == 1 and m["stand_in_engine_calls"] == [], (spec, m)
        assert m["stand_in_optimizer_steps"] == 1 and m["stand_in_trainer_step"] == 2, (spec, m)
        assert m["nonfinite"]["skipped_total"] == 1 and m["nonfinite"]["consecutive"] == 1, (spec, m)
        events = [e for e in read_metrics(out / method) if e.get("event") == "nonfinite"]
        assert events == [{"step": 2, "event": "nonfinite", "tasks": [m["stand_in_task"]], "action": "skipped"}]
        telemetry = out / method / "reconcile.jsonl"                # the reconciled step's statistics, logged
        assert telemetry.is_file() == (strategy == "ReconciledStep"), spec
