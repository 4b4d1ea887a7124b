"""Run by tests/test_host_syncs.py under the device rule (tests/dist/device_rule.py counts host
synchronisations): the real Trainer's `fit()` for a few steps per method, with the stop-signal
check a launched run has, and the host synchronisations of massive_mt's own code per step,
counted between the starts of consecutive steps (so a step's count includes what `fit` does after
it: the stop-signal agreement, logging and checkpoint checks when due). Prints `RESULT {json}`:
per method the counts per step and the sites of the syncs.

usage: host_syncs.py DS_CONFIG STEPS METHOD [METHOD...] -- OVERRIDES...
"""
import sys

import deepspeed.comm as dist

import device_rule
from common import finish, run_rank     # tests/dist/common.py (the script's folder)
from massive_mt.engine.config import load_config, load_ds_config, resolve_ds_config
from massive_mt.engine.distributed import init_distributed
from massive_mt.engine.preemption import StopSignals
from massive_mt.train import Trainer


def main():
    sep = sys.argv.index("--")
    ds_path, steps, methods, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:sep], sys.argv[sep + 1:]
    rank, world = init_distributed()
    rule = device_rule.RULE
    assert rule is not None, "run under the device rule (MASSIVE_MT_DEVICE_RULE)"
    results = {"world_size": dist.get_world_size(), "methods": {}}
    for i, spec in enumerate(methods):
        method, _, gran = spec.partition(":")
        out = load_config(None, overrides).train.output_dir
        cfg = load_config(None, overrides + [f"reconcile.method={method}", f"train.max_steps={steps}",
                                             f"train.output_dir={out}/{i}"] +
                          ([f"reconcile.granularity={gran}"] if gran else []))
        ds = resolve_ds_config(load_ds_config(ds_path), cfg, world)
        trainer = Trainer(cfg, ds, rank, world)
        marks, sites = [], []
        step = trainer.train_step

        def marked_step():
            marks.append(rule.own_syncs)
            sites.append(dict(rule.syncs))
            step()
        trainer.train_step = marked_step
        trainer.fit(StopSignals(["SIGUSR1"]))
        marks.append(rule.own_syncs)
        sites.append(dict(rule.syncs))
        per_step = [b - a for a, b in zip(marks, marks[1:])]       # the last one includes the final save and export
        before, after = sites[-3], sites[-2]                          # the last full step before the end of fit
        own = {k: v - before.get(k, 0) for k, v in after.items()
               if v > before.get(k, 0) and k.startswith("massive_mt/")}
        results["methods"][spec] = {"per_step": per_step, "stage": trainer.engine.zero_optimization_stage(),
                                    "steady_step_sites": own, "nonfinite": trainer.nonfinite.dropped_total
                                    + trainer.nonfinite.skipped_total}
        dist.barrier()
    finish(results, rank)


if __name__ == "__main__":
    run_rank(main)
