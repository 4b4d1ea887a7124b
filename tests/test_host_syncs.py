"""Host synchronisations of massive_mt's own code per training step, counted on 2 CPU ranks by the
device rule (tests/dist/device_rule.py: a device tensor read on the host, a blocking copy between
host and device), for plain training, GradVac and CATS at ZeRO 0-2 and K = 2, 4, 8: at most
MAX_SYNCS per step, whatever the stage and K (today: one, the step's all-reduced statistics read on
the host). DeepSpeed's own (its optimizer step, its overflow checks) are not ours to count here;
the device check compares the whole step with a bare DeepSpeed loop on a GPU.

ZeRO-3 is not counted here: under the device rule's virtual devices a ZeRO-3 run reports
non-finite losses that a plain run does not (the rule's collective checks still hold there), so
its count would include the non-finite path; every counted run asserts that it stayed finite."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, TEST_LANGS, dist_env
from dist.common import parse_result
from massive_mt.launch import free_port

pytestmark = pytest.mark.distributed
MAX_SYNCS = 4
STEPS = 4


def counted(data_bin, tmp_path, stage: int, K: int) -> dict:
    rule_dir = tmp_path / "rule"
    rule_dir.mkdir()
    env = dict(dist_env(), MASSIVE_MT_DEVICE_RULE=str(rule_dir),
               PYTHONPATH=os.pathsep.join([str(REPO / "tests" / "dist" / "site"), str(REPO)]))
    overrides = [f"data.data_bin={data_bin}", f"data.langs={json.dumps(TEST_LANGS)}", "data.max_len=48",
                 "model.preset=test", "model.dropout=0.0", f"sampling.tasks_per_step={K}", "sampling.max_tokens=128",
                 "data.direction=many_to_many",                                  # 8 tasks: en<->xx
                 "train.tensorboard=false", "train.log_interval=1000", "train.save_interval=0",
                 f"train.output_dir={tmp_path / 'run'}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "tests/dist/host_syncs.py", str(REPO / "ds_configs" / f"zero{stage}.json"), str(STEPS),
           "plain", "gradvac:all_layer", "cats", "--", *overrides]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    res = parse_result(p.stdout, p.stderr, p.returncode)
    assert res["world_size"] == 2
    return res


@pytest.mark.parametrize("stage,K", [(0, 2), (1, 4), (2, 8)])
def test_host_syncs_per_step(data_bin, tmp_path, stage, K):
    res = counted(data_bin, tmp_path, stage, K)
    for method, r in res["methods"].items():
        assert r["stage"] == stage and len(r["per_step"]) == STEPS and r["nonfinite"] == 0, (method, r)
        steady = r["per_step"][1:-1]        # the first builds what it keeps; the last ends with the save and export
        assert max(steady) <= MAX_SYNCS, (f"{method} at ZeRO-{stage}, K={K}: {steady} host syncs per step; "
                                          f"sites of the last full step: {json.dumps(r['steady_step_sites'], indent=1)}")
