import math

import pytest

from massive_mt.engine.config import load_config, load_ds_config, resolve_ds_config
from massive_mt.errors import ConfigError


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_and_overrides(tmp_path):
    p = write(tmp_path, "exp.yaml", "model:\nsampling:\n  temperature: 1\n  tasks_per_step: 3\n")
    cfg = load_config(str(p), ["train.max_steps=7", "sampling.temperature=inf", "data.langs=[fr, de]",
                               "optim.lr=3e-3", "reconcile.method=gradvac", "reconcile.ema_rate=0.5"])
    assert cfg.train.max_steps == 7 and cfg.sampling.tasks_per_step == 3 and cfg.model.preset == "tiny"
    assert cfg.optim.lr == 3e-3 and cfg.reconcile.ema_rate == 0.5
    assert math.isinf(cfg.sampling.temperature)
    assert cfg.data.langs == ["fr", "de"]
    assert isinstance(cfg.sampling.temperature, float)


@pytest.mark.parametrize("override, field", [
    ("sampling.temperature=abc", "sampling.temperature"),
    ("sampling.temperature=0", "sampling.temperature"),
    ("train.max_steps=1.5", "train.max_steps"),
    ("train.max_steps=0", "train.max_steps"),
    ("optim.betas=[0.9]", "optim.betas"),
    ("optim.label_smoothing=1.0", "optim.label_smoothing"),
    ("model.preset=huge", "model.preset"),
    ("data.direction=sideways", "data.direction"),
    ("train.tensorboard=maybe", "train.tensorboard"),
    ("model.from_pretrained=/nonexistent", "model.from_pretrained"),
    ("sampling.nonsense=1", "sampling.nonsense"),
    ("data.tasks=[enfr]", "data.tasks"),
    ("train.stop_signals=[KILL]", "train.stop_signals"),
    ("reconcile=3", "reconcile"),
])
def test_bad_values_name_the_field(tmp_path, override, field):
    p = write(tmp_path, "exp.yaml", "train:\n  max_steps: 5\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(p), [override])
    assert f"field '{field}" in str(e.value) and str(p) in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("key, hint", [
    ("name: demo", "known: data, sampling"),                  # removed: nothing read it
    ("eval:\n  beam: 4", "known: data, sampling"),            # removed: `massive-mt evaluate` takes options
    ("reconcile:\n  beta: 0.5", "renamed to 'reconcile.ema_rate'"),
    ("reconcile:\n  cats:\n    lr_lambda: 0.5", "renamed to 'reconcile.cats.lr_lam'"),
    ("reconcile:\n  cats:\n    dev_max_tokens: 64", "renamed to 'reconcile.cats.valid_max_tokens'"),
])
def test_removed_and_renamed_keys_are_unknown_fields(tmp_path, key, hint):
    p = write(tmp_path, "old.yaml", key + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(p))
    assert "unknown field" in str(e.value) and hint in str(e.value) and "\n" not in str(e.value)


def test_meta_data_dev_is_now_valid():
    with pytest.raises(ConfigError, match=r"field 'reconcile.cats.meta_data'.*use reconcile.cats.meta_data=valid"):
        load_config(None, ["reconcile.method=cats", "reconcile.cats.meta_data=dev"])
    assert load_config(None, ["reconcile.method=cats", "reconcile.cats.meta_data=valid"]).reconcile.cats.meta_data \
        == "valid"


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))
    p = write(tmp_path, "bad.yaml", "data: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(str(p))
    p = write(tmp_path, "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(str(p))


def test_ds_config_derived_fields(tmp_path):
    cfg = load_config(None, ["sampling.tasks_per_step=3", "sampling.micro_batches_per_task=2", "optim.clip_norm=0.5"])
    ds = resolve_ds_config({"zero_optimization": {"stage": 2}}, cfg, world_size=2)
    assert ds["gradient_accumulation_steps"] == 6
    assert ds["train_batch_size"] == 12
    assert ds["gradient_clipping"] == 0.5
    assert ds["train_micro_batch_size_per_gpu"] == 1


@pytest.mark.parametrize("ds, field", [
    ({"gradient_accumulation_steps": 5}, "gradient_accumulation_steps"),
    ({"gradient_clipping": 2.0}, "gradient_clipping"),
    ({"train_batch_size": 3}, "train_batch_size"),
    ({"optimizer": {"type": "Adam"}}, "optimizer"),
    ({"scheduler": {"type": "WarmupLR"}}, "scheduler"),
    ({"fp16": {"enabled": True}}, "fp16.enabled"),
    ({"zero_optimization": {"stage": 4}}, "zero_optimization.stage"),
    ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}, "offload_optimizer"),
    ({"bf16": {"enabled": True}, "zero_optimization": {"stage": 2}, "data_types": {"grad_accum_dtype": "bf16"}},
     "grad_accum_dtype"),
    ({"bf16": {"enabled": True}, "zero_optimization": {"stage": 0}}, "bf16.enabled"),
])
def test_ds_config_contradictions(ds, field):
    cfg = load_config(None, [])
    with pytest.raises(ConfigError) as e:
        resolve_ds_config(ds, cfg, world_size=2, where="my_ds.json")
    assert field in str(e.value) and "my_ds.json" in str(e.value)


def test_ds_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_ds_config(str(tmp_path / "x.json"))
    p = write(tmp_path, "x.json", "{not json")
    with pytest.raises(ConfigError, match="x.json: not valid JSON"):
        load_ds_config(str(p))


def test_shipped_ds_configs_resolve():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "ds_configs"
    files = sorted(root.glob("*.json"))
    assert len(files) == 10     # zero0-3, zero1-3 bf16, zero1-3 bf16 GPU
    cfg = load_config(None, [])
    for f in files:
        ds = resolve_ds_config(load_ds_config(str(f)), cfg, world_size=2, where=str(f))
        assert ds["zero_optimization"]["stage"] in (0, 1, 2, 3)
        if "bf16" in f.name:
            assert ds["bf16"]["enabled"] and ds["data_types"]["grad_accum_dtype"] == "fp32"


@pytest.mark.parametrize("overrides, field", [
    (["reconcile.cats.eps=2"], "reconcile.cats.eps"),                           # CATS option without method cats
    (["reconcile.method=cats", "reconcile.cats.proxy=trace"], "reconcile.cats.proxy"),
    (["reconcile.method=cats", "reconcile.cats.base=cats"], "reconcile.cats.base"),
    (["reconcile.method=cats", "reconcile.cats.floor=0"], "reconcile.cats.floor"),   # 0 only with softmax
    (["reconcile.method=cats", "reconcile.cats.interval=0"], "reconcile.cats.interval"),
    (["reconcile.method=cats", "reconcile.cats.lr_alpha=-1"], "reconcile.cats.lr_alpha"),
    (["reconcile.method=cats", "reconcile.cats.meta_data=test"], "reconcile.cats.meta_data"),
    (["reconcile.method=cats", "reconcile.vaccinate=[en-fr]"], "reconcile.vaccinate"),
    (["reconcile.method=cats", "reconcile.cats.nonsense=1"], "reconcile.cats.nonsense"),
    (["reconcile.method=gradvac", "reconcile.ema_rate=1.5"], "reconcile.ema_rate"),
    (["reconcile.method=cats", "sampling.tasks_per_step=1"], "sampling.tasks_per_step"),
])
def test_cats_options_are_checked(overrides, field):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert f"field '{field}'" in str(e.value)


@pytest.mark.parametrize("vaccinate", [None, "[en-fr]"])
def test_low_resource_quantile_without_the_low_resource_subset_is_refused(vaccinate):
    over = ["reconcile.method=gradvac", "reconcile.low_resource_quantile=0.3"]
    over += [f"reconcile.vaccinate={vaccinate}"] if vaccinate else []
    with pytest.raises(ConfigError, match=r"field 'reconcile.low_resource_quantile': only applies with "
                                          r"reconcile.vaccinate: \[low_resource\]"):
        load_config(None, over)
    cfg = load_config(None, ["reconcile.method=gradvac", "reconcile.vaccinate=[low_resource]",
                             "reconcile.low_resource_quantile=0.3"])
    assert cfg.reconcile.low_resource_quantile == 0.3


def test_cats_options_load():
    cfg = load_config(None, ["reconcile.method=cats", "reconcile.cats.base=gradvac", "reconcile.vaccinate=[en-fr]",
                             "reconcile.cats.param=softmax", "reconcile.cats.floor=0", "reconcile.cats.eps=3e-1"])
    c = cfg.reconcile.cats
    assert (c.base, c.param, c.floor, c.eps) == ("gradvac", "softmax", 0.0, 0.3)


@pytest.mark.parametrize("override, field", [
    ("sampling.seed=-1", "sampling.seed"),             # numpy's SeedSequence needs a non-negative seed
    ("train.seed=-3", "train.seed"),
    ("train.output_dir=", "train.output_dir"),         # would write into the current directory
    ("train.output_dir='  '", "train.output_dir"),
    ("data.data_bin=", "data.data_bin"),
    ("train.resume=", "train.resume"),
    ("optim.lr=.inf", "optim.lr"),
    ("optim.weight_decay=.inf", "optim.weight_decay"),
    ("optim.clip_norm=.inf", "optim.clip_norm"),
    ("optim.warmup_init_lr=.nan", "optim.warmup_init_lr"),
    ("sampling.temperature=.nan", "sampling.temperature"),
    ("data.langs=[]", "data.langs"),                   # would train on every language
    ("data.tasks=[]", "data.tasks"),
    ("data.langs=['']", "data.langs"),
    ("reconcile.vaccinate=[]", "reconcile.vaccinate"),
    ("reconcile.vaccinate=['']", "reconcile.vaccinate"),
    ("sampling.max_tokens=true", "sampling.max_tokens"),
])
def test_out_of_domain_values_name_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert f"field '{field}" in str(e.value) and "\n" not in str(e.value)


def test_cats_floats_must_be_finite():
    for name in ("lr_alpha", "lr_lam", "eps"):
        with pytest.raises(ConfigError, match=f"field 'reconcile.cats.{name}'"):
            load_config(None, ["reconcile.method=cats", f"reconcile.cats.{name}=.inf"])


def test_boundary_values_still_load():
    cfg = load_config(None, ["sampling.seed=0", "train.seed=0", "sampling.temperature=.inf", "train.stop_signals=[]"])
    assert cfg.sampling.seed == 0 and math.isinf(cfg.sampling.temperature) and cfg.train.stop_signals == []


def test_ds_config_top_level_keys_are_the_ones_deepspeed_reads():
    """DS_TOP_LEVEL_KEYS is every key DeepSpeedConfig reads from the top of the dict (traced here), less the
    ones DeepSpeed 0.19.8 removed, plus the two deepspeed.initialize reads for its device mesh."""
    from deepspeed.runtime import config as ds_cfg
    from massive_mt.engine.config import DS_TOP_LEVEL_KEYS

    class Traced(dict):
        read = set()

        def get(self, k, *a):
            Traced.read.add(k)
            return super().get(k, *a)

        def __getitem__(self, k):
            Traced.read.add(k)
            return super().__getitem__(k)

        def __contains__(self, k):
            Traced.read.add(k)
            return super().__contains__(k)

        def keys(self):
            return self

        def __copy__(self):
            return self

    ds_cfg.DeepSpeedConfig(Traced({"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                                   "torch_autocast": {"enabled": False}}))
    removed = set(ds_cfg._REMOVED_TOP_LEVEL_CONFIG_KEYS)
    assert removed and removed <= Traced.read
    assert set(DS_TOP_LEVEL_KEYS) == Traced.read - removed | {"sequence_parallel_size", "data_parallel_size"}


@pytest.mark.parametrize("key, hint", [("zero_optimizaton", "zero_optimization"), ("bf_16", "bf16"),
                                       ("gradient_acumulation_steps", "gradient_accumulation_steps"),
                                       ("amp", None)])     # removed from DeepSpeed: silently ignored otherwise
def test_ds_config_unknown_top_level_key(tmp_path, key, hint):
    p = write(tmp_path, "typo.json", f'{{"{key}": {{"stage": 2}}}}')
    with pytest.raises(ConfigError) as e:
        load_ds_config(str(p))
    msg = str(e.value)
    assert str(p) in msg and f"field '{key}'" in msg and "unknown" in msg and "\n" not in msg
    assert (f"did you mean '{hint}'" in msg) if hint else "did you mean" not in msg


@pytest.mark.parametrize("ds, field", [
    ({"zero_optimization": {"stage": 2, "reduce_bucket_size": "big"}}, "zero_optimization.reduce_bucket_size"),
    ({"zero_optimization": {"stgae": 2}}, "zero_optimization.stgae"),
    ({"zero_optimization": {"stage": "two"}}, "zero_optimization.stage"),
    ({"zero_optimization": 2}, "zero_optimization"),
    ({"zero_optimization": True}, "zero_optimization"),           # DeepSpeed's deprecated boolean form
    ({"bf16": True}, "bf16"),
    ({"bf16": {"enabled": "false"}}, "bf16.enabled"),             # a string: truthy here, False to DeepSpeed
    ({"bf16": {"enabled": True, "immediate_grad_update": "x"}}, "bf16.immediate_grad_update"),
    ({"fp16": {"loss_scale": "x"}}, "fp16.loss_scale"),
    ({"tensorboard": {"enabled": True, "output_path": 3}}, "tensorboard.output_path"),
    ({"comms_logger": {"enabled": "x"}}, "comms_logger.enabled"),
    ({"checkpoint": {"tag_validation": "x"}}, "checkpoint"),
    ({"communication_data_type": "fp17"}, "communication_data_type"),
    ({"torch_autocast": {"enabled": True, "dtype": "fp17"}}, "torch_autocast"),
    ({"data_types": {"grad_accum_dtype": 3}}, "data_types.grad_accum_dtype"),
    ({"gradient_clipping": "x"}, "gradient_clipping"),
    ({"gradient_accumulation_steps": True}, "gradient_accumulation_steps"),
    ({"train_batch_size": 2.5}, "train_batch_size"),
    ({"wall_clock_breakdown": "x"}, "wall_clock_breakdown"),
    ({"steps_per_print": -1}, "steps_per_print"),
    ({"pipeline": 3}, "pipeline"),
])
def test_ds_config_wrong_types_name_the_field(tmp_path, ds, field):
    import json
    p = write(tmp_path, "bad.json", json.dumps(ds))
    with pytest.raises(ConfigError) as e:
        load_ds_config(str(p))
    msg = str(e.value)
    assert msg.startswith(f"{p}: field '{field}") and "\n" not in msg, msg
    if "." not in field:
        assert msg.startswith(f"{p}: field '{field}'"), msg      # the field, not a pydantic union member
    with pytest.raises(ConfigError, match=f"my_ds.json: field '{field}"):    # dicts given to resolve are checked too
        resolve_ds_config(ds, load_config(None, []), world_size=2, where="my_ds.json")


@pytest.mark.parametrize("dtype", ["fp16", "float16", "half", "torch.float16", None])
def test_ds_config_refuses_fp16_autocast(dtype):
    auto = {"enabled": True} if dtype is None else {"enabled": True, "dtype": dtype}
    with pytest.raises(ConfigError) as e:
        resolve_ds_config({"torch_autocast": auto, "zero_optimization": {"stage": 2}}, load_config(None, []),
                          world_size=2, where="my_ds.json")
    assert "my_ds.json: field 'torch_autocast.dtype'" in str(e.value) and "bf16" in str(e.value)


def test_ds_config_accepts_what_deepspeed_accepts():
    cfg = load_config(None, [])
    ds = {"zero_optimization": {"stage": 2, "reduce_bucket_size": 5e7, "overlap_comm": True},
          "bfloat16": {"enabled": True}, "torch_autocast": {"enabled": False, "dtype": "fp16"},
          "gradient_clipping": "auto", "steps_per_print": 100, "wall_clock_breakdown": True,
          "tensorboard": {"enabled": False}, "communication_data_type": "fp32"}
    out = resolve_ds_config(ds, cfg, world_size=2)
    assert out["data_types"]["grad_accum_dtype"] == "fp32"     # bfloat16 (DeepSpeed's old name) is bf16
    assert out["steps_per_print"] == 100 and out["gradient_clipping"] == 1.0
    with pytest.raises(ConfigError, match="field 'bf16.enabled'"):
        resolve_ds_config({"bfloat16": {"enabled": True}}, cfg, world_size=2)     # bf16 at stage 0


def run_train(tmp_path, ds_text, *overrides):
    import subprocess
    import sys
    from conftest import REPO, dist_env
    ds = write(tmp_path, "ds.json", ds_text)
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "massive_mt.train", "--ds-config", str(ds),
                        f"train.output_dir={out}", *overrides], env=dist_env(), cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    return p, ds, out


@pytest.mark.slow
@pytest.mark.parametrize("ds_text, overrides, expect", [
    ('{"zero_optimizaton": {"stage": 2}}', [], "field 'zero_optimizaton': unknown"),
    ('{"zero_optimization": {"stage": 2, "reduce_bucket_size": "big"}}', [], "field 'zero_optimization.reduce_bucket_size'"),
    ('{"torch_autocast": {"enabled": true, "dtype": "fp16"}}', [], "field 'torch_autocast.dtype'"),
    ('{"zero_optimization": {"stage": 2}}', ["sampling.seed=-1"], "field 'sampling.seed'"),
])
def test_train_cli_refuses_bad_config_with_one_line(tmp_path, ds_text, overrides, expect):
    p, ds, out = run_train(tmp_path, ds_text, *overrides)
    assert p.returncode == 2, p.stderr[-3000:]
    lines = [line for line in p.stderr.splitlines() if "massive-mt train: error:" in line]
    assert len(lines) == 1 and expect in lines[0] and "Traceback" not in p.stderr
    assert "field 'sampling" in expect or str(ds) in lines[0]
    assert not out.exists()
