import math

import pytest

from massive_mt.config import load_config, load_ds_config, resolve_ds_config
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
