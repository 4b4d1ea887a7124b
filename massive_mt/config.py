"""Experiment configuration: YAML file + `section.field=value` overrides, validated at load.

The experiment config owns everything about the experiment (data, sampling, model,
optimisation, schedule, checkpoints); the DeepSpeed config (ds_config JSON) owns how it is
executed (ZeRO stage, precision, communication). Fields that both could set
(`gradient_accumulation_steps`, `gradient_clipping`, `train_micro_batch_size_per_gpu`,
`optimizer`, `scheduler`) are derived from the experiment config; a ds_config that
contradicts them is an error that names the field, never silently overridden.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError
from .model import PRESETS as MODEL_PRESETS
from .model import check_attn_implementation
from .preemption import parse_signals
from .reconcile.cats import PARAMS as CATS_PARAMS
from .reconcile.cats import CATSConfig
from .reconcile.cats import PROXIES as CATS_PROXIES
from .reconcile.groups import GRANULARITIES
from .reconcile.methods import METHODS

DIRECTIONS = ("one_to_many", "many_to_one", "many_to_many")
PRESETS = tuple(MODEL_PRESETS)
RECONCILE_METHODS = ("plain",) + METHODS + ("cats",)   # plain: no per-task capture


@dataclass
class DataConfig:
    data_bin: str = "data-bin"          # output of `massive-mt prepare`
    direction: str = "one_to_many"      # one_to_many (en->xx) | many_to_one | many_to_many
    tasks: Optional[list] = None        # explicit task list, e.g. ["en-fr", "en-de"]; overrides direction
    langs: Optional[list] = None        # restrict to these non-pivot languages
    max_len: int = 128                  # tokens per side incl. language tag and </s>; longer is truncated (counted)


@dataclass
class SamplingConfig:
    temperature: float = 5.0            # p_i ∝ (n_i/N)^(1/T); use .inf for uniform
    tasks_per_step: int = 4             # K distinct tasks per optimizer step
    micro_batches_per_task: int = 1     # m micro-batches of each task per rank per step
    max_tokens: int = 2048              # token budget of one micro-batch on one rank (padding included)
    seed: int = 1


@dataclass
class ModelConfig:
    preset: str = "tiny"                # test | tiny | small | base | big | large (massive_mt/model.py)
    from_pretrained: Optional[str] = None  # local HF directory (e.g. an M2M100 checkpoint); overrides preset
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    attn_implementation: str = "sdpa"   # sdpa | eager | flash_attention_2 (needs flash-attn)
    activation_checkpointing: bool = False  # recompute each Transformer layer in the backward pass


@dataclass
class OptimConfig:
    lr: float = 5e-4
    betas: list = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 4000            # inverse-sqrt schedule (fairseq): linear warm-up, then lr*sqrt(warmup/step)
    warmup_init_lr: float = 1e-7
    clip_norm: float = 1.0              # 0 disables clipping
    label_smoothing: float = 0.1


@dataclass
class TrainConfig:
    output_dir: str = "runs/experiment"
    max_steps: int = 1000
    log_interval: int = 10
    save_interval: int = 0              # 0: only at the end
    keep_last: int = 2                  # DeepSpeed checkpoints kept (older ones deleted after a save completes)
    resume: str = "auto"                # auto: from output_dir/checkpoints/latest if present | never | <path>
    tensorboard: bool = True
    seed: int = 1                       # model initialisation
    stop_signals: list = field(default_factory=lambda: ["USR1", "TERM"])  # checkpoint, exit 75 (massive_mt/preemption.py)


@dataclass
class EvalConfig:
    split: str = "test"
    beam: int = 4
    batch_size: int = 64
    max_sentences: int = 0              # per task; 0 = all
    max_new_tokens: int = 128
    length_penalty: float = 1.0


@dataclass
class CatsSection:
    """CATS options (reconcile.method: cats); see massive_mt/reconcile/cats.py and the README."""
    base: str = "sum"                   # gradients CATS scales: sum (plain CATS) | pcgrad | gradvac (corrected)
    meta_data: str = "train"            # meta losses + Gram from: train (this step, free) | dev (valid split)
    # the meta step's options, with the defaults of massive_mt/reconcile/cats.py's CATSConfig
    proxy: str = CATSConfig.proxy       # curvature proxy: combined (alpha^T G alpha) | diagonal
    param: str = CATSConfig.param       # alpha: simplex (projected descent) | softmax (descent on logits)
    lr_alpha: float = CATSConfig.lr_alpha    # meta learning rate of the task weights
    lr_lambda: float = CATSConfig.lr_lambda  # ascent rate of the multiplier lambda
    eps: float = CATSConfig.eps         # curvature budget (squared norm of the update)
    interval: int = CATSConfig.interval # steps between meta steps
    warmup: int = CATSConfig.warmup     # steps before the first meta step
    floor: float = CATSConfig.floor     # alpha_n >= floor / n_tasks
    dev_max_tokens: int = 0             # token budget of a dev micro-batch (0 = sampling.max_tokens)


@dataclass
class ReconcileSection:
    method: str = "plain"               # plain (no per-task capture) | sum | pcgrad | gradvac | cats
    granularity: str = "whole_model"    # whole_model | enc_dec | all_layer | all_matrix
    beta: float = 0.01                  # GradVac EMA rate of the cosine targets
    vaccinate: Optional[list] = None    # GradVac: tasks to correct (None = all), or ["low_resource"]
    low_resource_quantile: float = 0.5  # with vaccinate: [low_resource], tasks below this training-size quantile
    log_interval: int = 0               # cosine/correction telemetry every N steps (0 = train.log_interval)
    cats: CatsSection = field(default_factory=CatsSection)


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    reconcile: ReconcileSection = field(default_factory=ReconcileSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- loading

def _check_type(value, hint, where: str):
    """Coerce/validate one leaf value against its annotation; raise ConfigError naming `where`."""
    origin = get_origin(hint)
    if origin is Optional or (origin is not None and type(None) in get_args(hint)):
        if value is None:
            return None
        inner = [a for a in get_args(hint) if a is not type(None)][0]
        return _check_type(value, inner, where)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):          # YAML 1.1 reads 3e-3 (no dot) and inf as strings
            try:
                return float(value.strip().lstrip("."))
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if hint is list or origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return value
    return value


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(repr(u) for u in unknown)}; "
                          f"known: {', '.join(sorted(names))}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        sub = f"{where}.{f.name}" if where else f.name
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = _build(hint, data[f.name] or {}, sub)
        else:
            kwargs[f.name] = _check_type(data[f.name], hint, sub)
    return cls(**kwargs)


def _set_dotted(d: dict, key: str, value: Any):
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        if not isinstance(cur.get(p, {}), dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    out = []
    for o in overrides or []:
        if "=" not in o:
            raise ConfigError(f"override {o!r}: expected section.field=value")
        k, v = o.split("=", 1)
        try:
            value = yaml.safe_load(v) if v != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {o!r}: value is not valid YAML ({e})") from None
        out.append((k.strip(), value))
    return out


def load_config(path: Optional[str], overrides: list[str] = ()) -> ExperimentConfig:
    """Load a YAML experiment config (or the defaults when path is None), apply overrides, validate."""
    raw: dict = {}
    where = "config"
    if path is not None:
        where = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{path}: experiment config not found")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    raw = copy.deepcopy(raw)
    for k, v in parse_overrides(list(overrides)):
        _set_dotted(raw, k, v)
    try:
        cfg = _build(ExperimentConfig, raw, "")
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return cfg


def _require(cond: bool, field_name: str, msg: str):
    if not cond:
        raise ConfigError(f"field '{field_name}': {msg}")


def validate(cfg: ExperimentConfig) -> None:
    d, s, m, o, t, e = cfg.data, cfg.sampling, cfg.model, cfg.optim, cfg.train, cfg.eval
    _require(d.direction in DIRECTIONS, "data.direction", f"must be one of {DIRECTIONS}, got {d.direction!r}")
    _require(d.max_len >= 4, "data.max_len", f"must be >= 4, got {d.max_len}")
    if d.tasks is not None:
        _require(len(d.tasks) > 0 and all(isinstance(x, str) and x.count("-") == 1 for x in d.tasks),
                 "data.tasks", f"must be a non-empty list of 'src-tgt' strings, got {d.tasks!r}")
    _require(s.temperature > 0, "sampling.temperature", f"must be > 0 (inf for uniform), got {s.temperature}")
    _require(s.tasks_per_step >= 1, "sampling.tasks_per_step", f"must be >= 1, got {s.tasks_per_step}")
    _require(s.micro_batches_per_task >= 1, "sampling.micro_batches_per_task",
             f"must be >= 1, got {s.micro_batches_per_task}")
    _require(s.max_tokens >= 8, "sampling.max_tokens", f"must be >= 8, got {s.max_tokens}")
    _require(m.preset in PRESETS, "model.preset", f"must be one of {PRESETS}, got {m.preset!r}")
    for name in ("dropout", "attention_dropout", "activation_dropout"):
        v = getattr(m, name)
        _require(0.0 <= v < 1.0, f"model.{name}", f"must be in [0, 1), got {v}")
    check_attn_implementation(m.attn_implementation)
    if m.from_pretrained is not None:
        _require(Path(m.from_pretrained, "config.json").is_file(), "model.from_pretrained",
                 f"{m.from_pretrained!r} is not a local Hugging Face model directory (no config.json)")
    _require(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    _require(len(o.betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in o.betas),
             "optim.betas", f"must be two numbers in [0, 1), got {o.betas!r}")
    _require(o.eps > 0, "optim.eps", f"must be > 0, got {o.eps}")
    _require(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    _require(o.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
    _require(o.warmup_init_lr >= 0, "optim.warmup_init_lr", f"must be >= 0, got {o.warmup_init_lr}")
    _require(o.clip_norm >= 0, "optim.clip_norm", f"must be >= 0 (0 disables), got {o.clip_norm}")
    _require(0 <= o.label_smoothing < 1, "optim.label_smoothing", f"must be in [0, 1), got {o.label_smoothing}")
    _require(t.max_steps >= 1, "train.max_steps", f"must be >= 1, got {t.max_steps}")
    _require(t.log_interval >= 1, "train.log_interval", f"must be >= 1, got {t.log_interval}")
    _require(t.save_interval >= 0, "train.save_interval", f"must be >= 0, got {t.save_interval}")
    _require(t.keep_last >= 1, "train.keep_last", f"must be >= 1, got {t.keep_last}")
    parse_signals(t.stop_signals)
    _require(e.beam >= 1, "eval.beam", f"must be >= 1, got {e.beam}")
    _require(e.batch_size >= 1, "eval.batch_size", f"must be >= 1, got {e.batch_size}")
    _require(e.max_sentences >= 0, "eval.max_sentences", f"must be >= 0, got {e.max_sentences}")
    r = cfg.reconcile
    _require(r.method in RECONCILE_METHODS, "reconcile.method", f"must be one of {RECONCILE_METHODS}, got {r.method!r}")
    _require(r.granularity in GRANULARITIES, "reconcile.granularity",
             f"must be one of {GRANULARITIES}, got {r.granularity!r}")
    _require(0.0 <= r.beta <= 1.0, "reconcile.beta", f"must be in [0, 1], got {r.beta}")
    _require(0.0 < r.low_resource_quantile <= 1.0, "reconcile.low_resource_quantile",
             f"must be in (0, 1], got {r.low_resource_quantile}")
    _require(r.log_interval >= 0, "reconcile.log_interval", f"must be >= 0, got {r.log_interval}")
    gradvac = r.method == "gradvac" or (r.method == "cats" and r.cats.base == "gradvac")
    if r.vaccinate is not None:
        _require(gradvac, "reconcile.vaccinate", "only applies to method gradvac (or cats with base gradvac)")
        _require(len(r.vaccinate) > 0 and all(isinstance(v, str) for v in r.vaccinate), "reconcile.vaccinate",
                 f"must be a list of tasks such as [en-fr] or [low_resource], got {r.vaccinate!r}")
    validate_cats(r, s)
    _require(e.split in ("train", "valid", "test"), "eval.split", f"must be train|valid|test, got {e.split!r}")


def validate_cats(r: ReconcileSection, s: SamplingConfig) -> None:
    c = r.cats
    if r.method != "cats":
        changed = [f.name for f in fields(c) if getattr(c, f.name) != f.default]
        _require(not changed, f"reconcile.cats.{changed[0] if changed else ''}",
                 f"only applies to reconcile.method cats (method is {r.method!r})")
        return
    _require(s.tasks_per_step >= 2, "sampling.tasks_per_step",
             f"must be >= 2 with reconcile.method cats (one task per step leaves nothing to weigh), "
             f"got {s.tasks_per_step}")
    _require(c.base in METHODS, "reconcile.cats.base", f"must be one of {METHODS}, got {c.base!r}")
    _require(c.meta_data in ("train", "dev"), "reconcile.cats.meta_data", f"must be train or dev, got {c.meta_data!r}")
    _require(c.proxy in CATS_PROXIES, "reconcile.cats.proxy", f"must be one of {CATS_PROXIES}, got {c.proxy!r}")
    _require(c.param in CATS_PARAMS, "reconcile.cats.param", f"must be one of {CATS_PARAMS}, got {c.param!r}")
    for name in ("lr_alpha", "lr_lambda", "eps", "warmup", "dev_max_tokens"):
        _require(getattr(c, name) >= 0, f"reconcile.cats.{name}", f"must be >= 0, got {getattr(c, name)}")
    _require(c.interval >= 1, "reconcile.cats.interval", f"must be >= 1, got {c.interval}")
    _require(0.0 < c.floor <= 1.0 or (c.param == "softmax" and c.floor == 0.0), "reconcile.cats.floor",
             f"must be in (0, 1] (0 only with param softmax: a task at weight 0 could not come back), got {c.floor}")


# ----------------------------------------------------------------------------- ds_config

DERIVED_DS_FIELDS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping")


def load_ds_config(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: ds_config not found")
    try:
        ds = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(ds, dict):
        raise ConfigError(f"{path}: top level must be a JSON object")
    return ds


def resolve_ds_config(ds: dict, cfg: ExperimentConfig, world_size: int, where: str = "ds_config") -> dict:
    """Fill the fields the experiment config owns; refuse a ds_config that contradicts it."""
    ds = copy.deepcopy(ds)
    gas = cfg.sampling.tasks_per_step * cfg.sampling.micro_batches_per_task
    want = {"train_micro_batch_size_per_gpu": 1,      # batches are token-budgeted: one "sample" = one micro-batch
            "gradient_accumulation_steps": gas,
            "gradient_clipping": float(cfg.optim.clip_norm)}
    explain = {"gradient_accumulation_steps": "sampling.tasks_per_step * sampling.micro_batches_per_task",
               "gradient_clipping": "optim.clip_norm",
               "train_micro_batch_size_per_gpu": "token-budget micro-batches (sampling.max_tokens); must be 1"}
    for k, v in want.items():
        if k in ds and ds[k] not in ("auto",) and float(ds[k]) != float(v):
            raise ConfigError(f"{where}: field '{k}' = {ds[k]!r} contradicts the experiment config "
                              f"({explain[k]} = {v}); remove it or set it to \"auto\"")
        ds[k] = v
    if "train_batch_size" in ds and ds["train_batch_size"] != "auto":
        if ds["train_batch_size"] != gas * world_size:
            raise ConfigError(f"{where}: field 'train_batch_size' = {ds['train_batch_size']!r} contradicts "
                              f"gradient_accumulation_steps ({gas}) x world size ({world_size}) = {gas * world_size}")
    ds["train_batch_size"] = gas * world_size
    for k in ("optimizer", "scheduler"):
        if k in ds:
            raise ConfigError(f"{where}: field '{k}' is not used: the optimizer (AdamW) and the inverse-sqrt "
                              f"schedule come from the experiment config's 'optim' section; remove '{k}'")
    if ds.get("fp16", {}).get("enabled"):
        raise ConfigError(f"{where}: field 'fp16.enabled': fp16 with loss scaling is not supported; use bf16")
    zero = ds.get("zero_optimization", {})
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"{where}: field 'zero_optimization.stage' must be 0, 1, 2 or 3, got {stage!r}")
    for off in ("offload_optimizer", "offload_param"):
        dev = (zero.get(off) or {}).get("device", "none")
        if dev not in (None, "none"):
            raise ConfigError(f"{where}: field 'zero_optimization.{off}.device' = {dev!r}: CPU/NVMe offload "
                              f"is not supported by massive_mt's training step")
    if ds.get("bf16", {}).get("enabled"):
        if stage == 0:
            raise ConfigError(f"{where}: field 'bf16.enabled' with 'zero_optimization.stage' 0: DeepSpeed "
                              f"0.19.8 has no bf16 path with fp32 gradient accumulation at stage 0; "
                              f"use stage 1 (ds_configs/zero1_bf16.json) or higher")
        acc = ds.get("data_types", {}).get("grad_accum_dtype", "fp32")
        if acc != "fp32":
            raise ConfigError(f"{where}: field 'data_types.grad_accum_dtype' = {acc!r}: bf16 training "
                              f"accumulates gradients in fp32; set it to \"fp32\"")
        ds.setdefault("data_types", {})["grad_accum_dtype"] = "fp32"
    if ds.get("bf16", {}).get("enabled") and stage in (0, 1) and cfg.reconcile.method != "plain":
        # DeepSpeed's BF16_Optimizer clips by a norm over its full local buffer, which is wrong after a
        # partition-only write-back: the reconciler clips from the Gram matrix instead
        ds["gradient_clipping"] = 0.0
    ds.setdefault("steps_per_print", 10**9)   # massive_mt does its own logging
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def save_resolved(path: os.PathLike, cfg: ExperimentConfig, ds: dict) -> None:
    """Write the resolved experiment config and ds_config next to the run (atomically)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name, text in (("config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False)),
                       ("ds_config.json", json.dumps(ds, indent=2))):
        tmp = path / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path / name)
