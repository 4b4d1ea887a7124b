"""Experiment configuration: YAML file + `section.field=value` overrides, validated at load.

The experiment config owns everything about the experiment (data, sampling, model,
optimisation, schedule, checkpoints); the DeepSpeed config (ds_config JSON) owns how it is
executed (ZeRO stage, precision, communication). Fields that both could set
(`gradient_accumulation_steps`, `gradient_clipping`, `train_micro_batch_size_per_gpu`,
`optimizer`, `scheduler`) are derived from the experiment config; a ds_config that
contradicts them is an error that names the field, never silently overridden.

Each section is a pydantic model: typed fields with their bounds, unknown fields refused (with
the new name of a renamed one); the rules between fields are in `check`. Every error is one
ConfigError line naming the file and the field, e.g. `exp.yaml: field 'sampling.temperature': ...`.
A ds_config is checked the same way (`check_ds_config`): its top-level keys against the ones DeepSpeed
reads, its sections through DeepSpeed's own config parsing.

Length: one pydantic section per config section and the cross-field checks that need several
sections; the ds_config consistency sits beside them because it reads the same fields.
"""
from __future__ import annotations

import copy
import difflib
import json
import logging
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator,
                      model_validator)

from massive_mt.engine.distributed import COLLECTIVE_TIMEOUT_S
from massive_mt.errors import ConfigError
from massive_mt.engine.model import ATTN_IMPLEMENTATIONS, PRESETS, check_attn_implementation
from massive_mt.engine.preemption import parse_signals
from massive_mt.reconcile import catalogue
from massive_mt.reconcile.groups import GRANULARITIES

DIRECTIONS = ("one_to_many", "many_to_one", "many_to_many")
RECONCILE_METHODS = catalogue.names()   # plain (no per-task capture), the registered Gram methods, cats
# renamed keys and option values: an old config is refused with the new name
RENAMED = {"reconcile.beta": "reconcile.ema_rate", "reconcile.cats.lr_lambda": "reconcile.cats.lr_lam",
           "reconcile.cats.dev_max_tokens": "reconcile.cats.valid_max_tokens",
           "reconcile.cats.meta_data=dev": "reconcile.cats.meta_data=valid"}


class Section(BaseModel):
    """A config section: typed fields (no coercion of strings, bools or floats into other types),
    bounds, floats finite (inf/nan refused unless a field says otherwise), unknown fields refused;
    an empty section (`model:` alone in YAML) takes the defaults."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_subsections(cls, data):
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or not _is_section(cls, k)}
        return data


# a path or name that must say something: "" (or blanks) would mean the current directory
NONEMPTY = r"\S"
NonEmpty = Annotated[str, Field(pattern=NONEMPTY)]
Seed = Annotated[int, Field(ge=0)]   # numpy's SeedSequence and torch.manual_seed take non-negative seeds


def _is_section(cls, name: str) -> bool:
    f = cls.model_fields.get(name)
    return f is not None and isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)


class DataConfig(Section):
    data_bin: NonEmpty = "data-bin"          # output of `massive-mt prepare`
    direction: Literal[DIRECTIONS] = "one_to_many"  # one_to_many (en->xx) | many_to_one | many_to_many
    # explicit task list, e.g. ["en-fr", "en-de"]; overrides direction
    tasks: Optional[Annotated[list[Annotated[str, Field(pattern=r"^[^-]+-[^-]+$")]], Field(min_length=1)]] = None
    langs: Optional[Annotated[list[NonEmpty], Field(min_length=1)]] = None   # restrict to these non-pivot languages
    max_len: int = Field(128, ge=4)     # tokens per side incl. language tag and </s>; longer is truncated (counted)


class SamplingConfig(Section):
    temperature: float = Field(5.0, gt=0, allow_inf_nan=True)   # p_i ∝ (n_i/N)^(1/T); inf: uniform (nan: refused by gt)
    tasks_per_step: int = Field(4, ge=1)            # K distinct tasks per optimizer step
    micro_batches_per_task: int = Field(1, ge=1)    # m micro-batches of each task per rank per step
    max_tokens: int = Field(2048, ge=8)             # token budget of one micro-batch on one rank (padding included)
    seed: Seed = 1


class ModelConfig(Section):
    preset: Literal[tuple(PRESETS)] = "tiny"
    from_pretrained: Optional[str] = None  # local HF directory (e.g. an M2M100 checkpoint); overrides preset
    dropout: float = Field(0.1, ge=0, lt=1)
    attention_dropout: float = Field(0.0, ge=0, lt=1)
    activation_dropout: float = Field(0.0, ge=0, lt=1)
    attn_implementation: Literal[ATTN_IMPLEMENTATIONS] = "sdpa"   # flash_attention_2 needs flash-attn
    activation_checkpointing: bool = False  # recompute each Transformer layer in the backward pass
    # parameters left untrained, by name pattern (massive_mt/engine/model.py `matches`), e.g. [shared, encoder.layers.0]
    freeze: Optional[Annotated[list[NonEmpty], Field(min_length=1)]] = None

    @field_validator("from_pretrained")
    @classmethod
    def _local_model(cls, path: Optional[str]) -> Optional[str]:
        if path is not None and not Path(path, "config.json").is_file():
            raise ValueError("not a local Hugging Face model directory (no config.json)")
        return path


class OptimConfig(Section):
    lr: float = Field(5e-4, gt=0)
    betas: Annotated[list[Annotated[float, Field(ge=0, lt=1)]], Field(min_length=2, max_length=2)] = [0.9, 0.98]
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(4000, ge=0)   # inverse-sqrt schedule (fairseq): linear warm-up, then lr*sqrt(warmup/step)
    warmup_init_lr: float = Field(1e-7, ge=0)
    clip_norm: float = Field(1.0, ge=0)     # 0 disables clipping
    label_smoothing: float = Field(0.1, ge=0, lt=1)


class WandbConfig(Section):
    """Optional Weights & Biases logging of what TensorBoard gets (pip install 'massive_mt[wandb]')."""
    project: NonEmpty
    name: Optional[NonEmpty] = None          # default: the run directory's name
    mode: Literal["offline", "online", "disabled"] = "offline"   # offline: files in RUN/wandb, `wandb sync` later


class TrainConfig(Section):
    output_dir: NonEmpty = "runs/experiment"
    max_steps: int = Field(1000, ge=1)
    log_interval: int = Field(10, ge=1)
    save_interval: int = Field(0, ge=0)     # 0: only at the end
    keep_last: int = Field(2, ge=1)         # DeepSpeed checkpoints kept (older ones deleted after a save completes)
    resume: NonEmpty = "auto"               # auto: the newest complete checkpoint in output_dir/checkpoints | never | <path>
    reshard: Literal["auto", "never"] = "auto"   # a checkpoint of another world size / ZeRO stage / precision: auto converts it (docs/failures.md) | never refuses
    tensorboard: bool = True
    seed: Seed = 1                          # model initialisation
    stop_signals: list[Union[str, int]] = ["USR1", "TERM"]   # checkpoint, exit 75 (massive_mt/engine/preemption.py)
    collective_timeout_s: int = Field(COLLECTIVE_TIMEOUT_S, ge=1)   # a rank waiting longer for its peers fails (docs/failures.md)
    max_nonfinite_steps: int = Field(5, ge=0)   # consecutive non-finite steps tolerated; the next stops the run (docs/failures.md)
    # validation, best checkpoint, early stopping (massive_mt/engine/validation.py, docs/training.md#validation)
    valid_interval: int = Field(0, ge=0)        # validate every N steps (0: never)
    valid_max_sentences: int = Field(500, ge=1)  # the first N valid sentences of every task
    valid_decode: bool = False                  # also greedy BLEU/chrF on valid_decode_sentences per task
    valid_decode_sentences: int = Field(100, ge=1)
    best_metric: Literal["valid_nll", "valid_bleu", "valid_chrf"] = "valid_nll"
    best_average: Literal["tasks", "buckets"] = "tasks"   # buckets: high/medium/low weigh the same
    patience: int = Field(0, ge=0)              # stop after N validations without improvement (0: never)
    best_min_delta: float = Field(0.0, ge=0)    # an improvement must exceed this (in the metric's unit)
    wandb: Optional[WandbConfig] = None         # also log to Weights & Biases (TensorBoard stays the default)


class ReconcileConfig(Section, *catalogue.option_models()):
    """The method, its granularity, the telemetry interval, and every method's options: the fields
    of the options models of reconcile/catalogue.py (GradVac's `ema_rate`, `vaccinate`,
    `low_resource_quantile`; CATS's `cats` section), each refused by `check` unless the method reads it."""

    method: Literal[RECONCILE_METHODS] = "plain"     # plain (no per-task capture) | a registered method | cats
    granularity: Literal[GRANULARITIES] = "whole_model"
    log_interval: int = Field(0, ge=0)      # cosine/correction telemetry every N steps (0 = train.log_interval)


class ExperimentConfig(Section):
    data: DataConfig = DataConfig()
    sampling: SamplingConfig = SamplingConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    reconcile: ReconcileConfig = ReconcileConfig()

    def to_dict(self) -> dict:
        return self.model_dump()


# ----------------------------------------------------------------------------- loading

class _Loader(yaml.SafeLoader):
    """YAML 1.2 numbers: PyYAML (YAML 1.1) reads 3e-3 (no dot) and inf as strings."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$|^[-+]?inf$"),
                              list("-+0123456789.i"))


def _load_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: a nested config dict by dotted field names."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _set_dotted(d: dict, key: str, value: Any):
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        if cur.get(p) is None:
            cur[p] = {}
        if not isinstance(cur[p], dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
        cur = cur[p]
    cur[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    out = []
    for o in overrides or []:
        if "=" not in o:
            raise ConfigError(f"override {o!r}: expected section.field=value")
        k, v = o.split("=", 1)
        try:
            value = _load_yaml(v) if v != "" else ""
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
            raw = _load_yaml(p.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    raw = copy.deepcopy(raw)
    for k, v in parse_overrides(list(overrides)):
        _set_dotted(raw, k, v)
    try:
        try:
            cfg = ExperimentConfig.model_validate(raw)
        except ValidationError as e:
            raise ConfigError(_first_error(e)) from None
        check(cfg)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return cfg


def _first_error(e: ValidationError) -> str:
    """One line naming the field of the first validation error."""
    err = e.errors(include_url=False)[0]
    name = ".".join(map(str, err["loc"]))
    if err["type"] == "extra_forbidden":
        model = ExperimentConfig
        for part in err["loc"][:-1]:
            model = model.model_fields[part].annotation
        hint = f"renamed to '{RENAMED[name]}'" if name in RENAMED else f"known: {', '.join(model.model_fields)}"
        return f"field '{name}': unknown field; {hint}"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "string_pattern_mismatch" and err["ctx"]["pattern"] == NONEMPTY:
        msg = "must not be empty"
    renamed = RENAMED.get(f"{name}={err['input']}")
    hint = f" (renamed: use {renamed})" if renamed else ""
    return f"field '{name}': {msg[:1].lower() + msg[1:]}, got {err['input']!r}{hint}"


def shared_overrides(overrides: list[str]) -> list[str]:
    """Overrides shared by several methods (a benchmark's), completed for the one they select (the last
    `reconcile.method` and `reconcile.cats.base` among them): the options it does not read go back
    to their defaults, so that each method takes the options it reads and ignores the others."""
    given = dict(parse_overrides(overrides))
    return [*overrides, *unread_option_overrides(str(given.get("reconcile.method", "plain")),
                                                 str(given.get("reconcile.cats.base", "sum")))]


def unread_option_overrides(method: str, base: str = "sum") -> list[str]:
    """`reconcile.FIELD=DEFAULT` for every option `method` (with CATS's `base`) does not read, to put
    after settings shared by several methods (the demo config, a benchmark's or a test's common
    overrides) so that they load with any method."""
    return [f"reconcile.{k}={json.dumps(v)}" for k, v in catalogue.unread_option_defaults(method, base).items()]


def _require(cond: bool, field_name: str, msg: str):
    if not cond:
        raise ConfigError(f"field '{field_name}': {msg}")


def check(cfg: ExperimentConfig) -> None:
    """The rules between fields (each field's own type and bounds are checked on construction)."""
    parse_signals(cfg.train.stop_signals)
    check_attn_implementation(cfg.model.attn_implementation)
    r = cfg.reconcile
    t = cfg.train
    _require(t.best_metric == "valid_nll" or t.valid_decode, "train.best_metric",
             f"{t.best_metric} needs train.valid_decode: true (greedy decoding of the valid sample)")
    _require(t.patience == 0 or t.valid_interval > 0, "train.patience",
             "early stopping needs validation: set train.valid_interval")
    unread = catalogue.unread_option_error(r)
    _require(unread is None, *(unread or ("", "")))
    _require(r.low_resource_quantile == catalogue.option_fields()["low_resource_quantile"]
             or r.vaccinate == ["low_resource"], "reconcile.low_resource_quantile",
             f"only applies with reconcile.vaccinate: [low_resource]; vaccinate is {r.vaccinate}")
    if r.method != "cats":
        return
    _require(cfg.sampling.tasks_per_step >= 2, "sampling.tasks_per_step",
             f"must be >= 2 with reconcile.method cats (one task per step leaves nothing to weigh), "
             f"got {cfg.sampling.tasks_per_step}")


# ----------------------------------------------------------------------------- ds_config

DERIVED_DS_FIELDS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping")

# The top-level keys DeepSpeed 0.19.8 reads: DeepSpeedConfig._initialize_params and the get_* helpers it
# calls (deepspeed/runtime/config.py, constants.py, precision_config.py, monitor/config.py, ...), less the
# keys it rejects as removed features, plus the two deepspeed.initialize reads for its device mesh.
# tests/test_config.py traces DeepSpeedConfig's reads and checks this list against them.
DS_SECTIONS = ("activation_checkpointing", "aio", "autotuning", "bf16", "bfloat16", "checkpoint", "comet",
               "comms_logger", "compile", "csv_monitor", "data_efficiency", "data_types", "datastates_ckpt",
               "expert_parallel", "flops_profiler", "fp16", "hybrid_engine", "optimizer", "pipeline", "scheduler",
               "tensor_parallel", "tensorboard", "timers", "torch_autocast", "wandb", "weight_quantization",
               "zero_optimization")     # JSON objects


class DSScalars(BaseModel):
    """The top-level scalars of a ds_config, typed (DeepSpeed reads them unchecked)."""

    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)

    train_batch_size: Union[Annotated[StrictInt, Field(ge=1)], Literal["auto"], None] = None
    train_micro_batch_size_per_gpu: Union[Annotated[StrictInt, Field(ge=1)], Literal["auto"], None] = None
    gradient_accumulation_steps: Union[Annotated[StrictInt, Field(ge=1)], Literal["auto"], None] = None
    gradient_clipping: Union[Annotated[float, Field(ge=0)], Literal["auto"]] = 1.0
    gradient_predivide_factor: Annotated[float, Field(gt=0)] = 1.0
    steps_per_print: Optional[Annotated[StrictInt, Field(ge=1)]] = None
    vocabulary_size: Optional[Annotated[StrictInt, Field(ge=1)]] = None
    sequence_parallel_size: Annotated[StrictInt, Field(ge=1)] = 1
    data_parallel_size: Annotated[StrictInt, Field(ge=1)] = 1
    communication_data_type: Optional[str] = None
    seq_parallel_communication_data_type: Optional[str] = None
    gradient_allreduce_op: str = "mean"
    log_level: Optional[str] = None
    dataloader_drop_last: StrictBool = False
    disable_allgather: StrictBool = False
    disable_python_gc: StrictBool = False
    dump_state: StrictBool = False
    managed_gradient_accumulation: StrictBool = True
    memory_breakdown: StrictBool = False
    prescale_gradients: StrictBool = False
    use_data_before_expert_parallelism: StrictBool = False
    wall_clock_breakdown: StrictBool = False
    zero_allow_untested_optimizer: StrictBool = False
    zero_force_ds_cpu_optimizer: StrictBool = True


DS_TOP_LEVEL_KEYS = DS_SECTIONS + tuple(DSScalars.model_fields)
# read by massive_mt itself: JSON booleans only (DeepSpeed's models would read the string "false" as False)
DS_FLAGS = (("fp16", "enabled"), ("bf16", "enabled"), ("bfloat16", "enabled"), ("torch_autocast", "enabled"))
# not given to DeepSpeed's parsing by check_ds_config: set by massive_mt (DERIVED_DS_FIELDS, train_batch_size),
# refused by resolve_ds_config (optimizer, scheduler), or read only by deepspeed.initialize (typed in DSScalars)
DS_NOT_PARSED = (*DERIVED_DS_FIELDS, "train_batch_size", "optimizer", "scheduler", "sequence_parallel_size",
                 "data_parallel_size")
FP16_NAMES = ("fp16", "float16", "half", "torch.float16")     # DeepSpeed's DtypeEnum names of float16


def check_ds_config(ds: dict, where: str = "ds_config") -> None:
    """Every top-level key known to DeepSpeed 0.19.8, every section an object, the scalars typed, and each
    section read by DeepSpeed's own config parsing (its pydantic models), each error one ConfigError line."""
    for k in ds:
        if k not in DS_TOP_LEVEL_KEYS:
            close = difflib.get_close_matches(k, DS_TOP_LEVEL_KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else "; see docs/training.md#ds_configs"
            raise ConfigError(f"{where}: field '{k}': unknown top-level key for DeepSpeed 0.19.8{hint}")
        if k in DS_SECTIONS and not isinstance(ds[k], dict):
            raise ConfigError(f"{where}: field '{k}' must be a JSON object, got {ds[k]!r}")
    try:
        DSScalars.model_validate(ds)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        name = err["loc"][0]       # the rest of loc names the member of a union, e.g. 'constrained-int'
        auto = " (or \"auto\")" if "auto" in str(DSScalars.model_fields[name].annotation) else ""
        raise ConfigError(f"{where}: field '{name}': {err['msg'][:1].lower()}{err['msg'][1:]}{auto}, "
                          f"got {err['input']!r}") from None
    for section, flag in DS_FLAGS:
        v = ds.get(section, {}).get(flag, False)
        if not isinstance(v, bool):
            raise ConfigError(f"{where}: field '{section}.{flag}' must be true or false, got {v!r}")
    acc = ds.get("data_types", {}).get("grad_accum_dtype")
    if acc is not None and not isinstance(acc, str):
        raise ConfigError(f"{where}: field 'data_types.grad_accum_dtype' must be a dtype name such as \"fp32\", "
                          f"got {acc!r}")
    from deepspeed.runtime.config import DeepSpeedConfig
    from deepspeed.utils import logger
    level = logger.level
    logger.setLevel(logging.WARNING)       # DeepSpeedConfig logs its world size at INFO on every call
    try:
        for k, v in ds.items():
            if k not in DS_NOT_PARSED:
                try:
                    DeepSpeedConfig({k: v, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1})
                except ValidationError as e:
                    err = e.errors(include_url=False)[0]
                    loc = [str(x) for x in err["loc"]]
                    path = ".".join(loc if loc[:1] == [k] else [k, *loc])
                    raise ConfigError(f"{where}: field '{path}': {err['msg'].removeprefix('Value error, ')}, "
                                      f"got {err['input']!r}") from None
                except Exception as e:     # DeepSpeed's other checks: DeepSpeedConfigError, ValueError, ...
                    raise ConfigError(f"{where}: field '{k}': {' '.join(str(e).split())}") from None
    finally:
        logger.setLevel(level)


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
    check_ds_config(ds, str(path))
    return ds


def resolve_ds_config(ds: dict, cfg: ExperimentConfig, world_size: int, where: str = "ds_config") -> dict:
    """Fill the fields the experiment config owns; refuse a ds_config that contradicts it."""
    check_ds_config(ds, where)
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
    auto = ds.get("torch_autocast", {})
    if auto.get("enabled") and auto.get("dtype") in (*FP16_NAMES, None):
        raise ConfigError(f"{where}: field 'torch_autocast.dtype' = {auto.get('dtype')!r}: float16 autocast "
                          f"(torch's default on CUDA when dtype is absent) is not supported; bf16 is the "
                          f"supported reduced precision: set \"dtype\": \"bf16\" or use the bf16 section")
    bf16 = ds["bf16"] if ds.get("bf16") is not None else ds.get("bfloat16", {})   # DeepSpeed's old name
    zero = ds.get("zero_optimization", {})
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"{where}: field 'zero_optimization.stage' must be 0, 1, 2 or 3, got {stage!r}")
    for off in ("offload_optimizer", "offload_param"):
        dev = (zero.get(off) or {}).get("device", "none")
        if dev not in (None, "none"):
            raise ConfigError(f"{where}: field 'zero_optimization.{off}.device' = {dev!r}: CPU/NVMe offload "
                              f"is not supported by massive_mt's training step")
    if bf16.get("enabled"):
        if stage == 0:
            raise ConfigError(f"{where}: field 'bf16.enabled' with 'zero_optimization.stage' 0: DeepSpeed "
                              f"0.19.8 has no bf16 path with fp32 gradient accumulation at stage 0; "
                              f"use stage 1 (ds_configs/zero1_bf16.json) or higher")
        acc = ds.get("data_types", {}).get("grad_accum_dtype", "fp32")
        if acc != "fp32":
            raise ConfigError(f"{where}: field 'data_types.grad_accum_dtype' = {acc!r}: bf16 training "
                              f"accumulates gradients in fp32; set it to \"fp32\"")
        ds.setdefault("data_types", {})["grad_accum_dtype"] = "fp32"
    if cfg.reconcile.method != "plain":
        from massive_mt.engine.zero_adapter import layout_for

        if layout_for(stage, bool(bf16.get("enabled"))).clip_from_gram:   # the reconciler clips instead
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
