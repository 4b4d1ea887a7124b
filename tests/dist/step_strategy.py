"""Run by tests: the Trainer's step strategy is the one for its reconcile method, and its step
hands every per-strategy part to it.

For each method: the strategy's type; one real step with the strategy's `run` (and, for CATS with
valid meta data, its valid pass) recorded: called once with the sampler's plan of step 0, and
the engine's accumulation boundaries and backward passes all made inside it; then one step with
the strategy replaced by a stand-in that back-propagates nothing and reports a non-finite task and
a skipped step: the Trainer makes no backward pass and sets no boundary of its own, skips the
update (no optimizer step), counts the step, logs the event and moves on. Prints `RESULT {json}`.

usage: step_strategy.py DS_CONFIG METHOD[+CATS_FIELD=VALUE...] [...] -- OVERRIDES...
"""
import copy
import sys

import deepspeed.comm as dist

from massive_mt.engine.config import load_config, load_ds_config, resolve_ds_config
from massive_mt.engine.distributed import init_distributed
from massive_mt.engine.step import StepOutcome
from massive_mt.train import Trainer

from common import finish, run_rank     # tests/dist/common.py (the script's folder)


def record(obj, name: str, log: list, tag: str):
    """Replace obj.name by a wrapper that appends (tag, args) to `log` and calls the original."""
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        log.append((tag, args))
        return original(*args, **kwargs)
    setattr(obj, name, wrapper)


class StandIn:
    """A strategy that runs nothing and reports `task` non-finite and the step skipped."""

    def __init__(self, task: str):
        self.task, self.calls = task, 0

    def run(self, plan, step):
        self.calls += 1
        return StepOutcome(nonfinite=[self.task], skipped=True)


def check(trainer: Trainer) -> dict:
    engine, log = trainer.engine, []
    plan = [(t, [list(map(int, i)) for i in mbs]) for t, mbs in copy.deepcopy(trainer.sampler).plan(0)]
    record(trainer.strategy, "run", log, "run")
    if hasattr(trainer.strategy, "valid_pass"):
        record(trainer.strategy, "valid_pass", log, "valid_pass")
    record(engine, "backward", log, "backward")
    record(engine, "set_gradient_accumulation_boundary", log, "boundary")
    record(engine, "step", log, "engine_step")
    trainer.train_step()
    tags = [t for t, _ in log]
    run_args = next(a for t, a in log if t == "run")
    out = {"strategy": type(trainer.strategy).__name__, "tags": sorted(set(tags)),
           "run_calls": tags.count("run"), "valid_passes": tags.count("valid_pass"),
           "run_first": tags[0] == "run", "engine_step_after_backwards": tags.count("engine_step") == 1
           and tags.index("engine_step") > max(i for i, t in enumerate(tags) if t == "backward"),
           "run_plan": [(t, [list(map(int, i)) for i in mbs]) for t, mbs in run_args[0]] == plan,
           "run_step": run_args[1], "backwards": tags.count("backward"),
           "micro_batches": sum(len(mbs) for _, mbs in plan), "optimizer_steps": engine.global_steps,
           "trainer_step": trainer.step}
    # the stand-in: the Trainer itself back-propagates nothing, sets no boundary, steps no optimizer
    stand_in = StandIn(plan[0][0])
    trainer.strategy, log[:] = stand_in, []
    trainer.train_step()
    out.update(stand_in_calls=stand_in.calls, stand_in_engine_calls=[t for t, _ in log],
               stand_in_optimizer_steps=engine.global_steps, stand_in_trainer_step=trainer.step,
               nonfinite=trainer.nonfinite.state_dict(), stand_in_task=stand_in.task)
    return out


def main():
    sep = sys.argv.index("--")
    ds_path, specs, overrides = sys.argv[1], sys.argv[2:sep], sys.argv[sep + 1:]
    rank, world = init_distributed()
    results = {"world_size": dist.get_world_size(), "methods": {}}
    for spec in specs:
        method, *cats_fields = spec.split("+")
        cfg = load_config(None, overrides + [f"reconcile.method={method}", f"train.output_dir={overrides_dir(overrides)}/{method}"]
                          + [f"reconcile.cats.{kv}" for kv in cats_fields])
        trainer = Trainer(cfg, resolve_ds_config(load_ds_config(ds_path), cfg, world), rank, world)
        results["methods"][spec] = check(trainer)
        trainer.writer.close()
        trainer.telemetry.close()
        dist.barrier()
    finish(results, rank)


def overrides_dir(overrides: list[str]) -> str:
    return next(o.split("=", 1)[1] for o in overrides if o.startswith("train.output_dir="))


if __name__ == "__main__":
    run_rank(main)
