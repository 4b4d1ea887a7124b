"""The catalogue of reconciliation methods: every name that `reconcile.method`, the CLI and
`massive-mt bench` accept, with its kind and the model of the options it reads.

Kinds:
- `plain`: DeepSpeed's own gradient accumulation, no per-task capture (engine/step.py PlainStep);
- `gram`: a method registered in reconcile/methods.py (sum, pcgrad, gradvac, ...), a pure
  function of the step's Gram matrices, weighed by `MethodWeigher`;
- `scales`: CATS, which learns per-task scales of the corrected gradients of a Gram method, its base
  (`reconcile.cats.base`), weighed by `CATSWeigher` around the base's `MethodWeigher`.

Options. Each method's options are a pydantic model (`MethodOptions`: GradVac's `GradVacOptions`,
CATS's `CATSOptions`, none for the others) whose fields are fields of the `reconcile` section.
A method reads its own options, and CATS also its base's. An option that the chosen method does
not read is refused by the config (engine/config.py `check`) with `unread_option_error`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

from pydantic import BaseModel

from massive_mt.reconcile.cats import CATSOptions
from massive_mt.reconcile.methods import METHODS, MethodOptions
from massive_mt.reconcile.weighers import CATSWeigher, MethodWeigher

Kind = Literal["plain", "gram", "scales"]     # scales: learns task scales over a base method (cats)


@dataclass(frozen=True)
class Entry:
    name: str
    kind: Kind
    options: type     # its MethodOptions model


def catalogue() -> dict[str, Entry]:
    """Every method by name, in report order: plain, the registered Gram methods, cats."""
    return {"plain": Entry("plain", "plain", MethodOptions),
            **{name: Entry(name, "gram", m.options) for name, m in METHODS.items()},
            "cats": Entry("cats", "scales", CATSOptions)}


def names() -> tuple[str, ...]:
    return tuple(catalogue())


def kind(method: str) -> Kind:
    return catalogue()[method].kind


def option_models() -> list[type]:
    """The distinct options models that have fields: together, the option fields of the `reconcile` section."""
    return list(dict.fromkeys(e.options for e in catalogue().values() if e.options.model_fields))


def option_fields() -> dict[str, Any]:
    """Every option field of the `reconcile` section -> its default."""
    return {name: f.get_default(call_default_factory=True) for model in option_models()
            for name, f in model.model_fields.items()}


def read_options(method: str, base: str) -> set[str]:
    """The option fields `method` reads (a `scales` method: its own and those of its base `base`)."""
    cat = catalogue()
    fields = set(cat[method].options.model_fields)
    if cat[method].kind == "scales":
        fields |= set(cat[base].options.model_fields)
    return fields


def _readers(option: str) -> str:
    """'method gradvac (or cats with base gradvac)': the methods that read `option`."""
    cat = catalogue()
    grams = [n for n, e in cat.items() if e.kind != "scales" and option in e.options.model_fields]
    own = [n for n, e in cat.items() if e.kind == "scales" and option in e.options.model_fields]
    said = [f"method {' or '.join(grams + own)}"] if grams or own else []
    scaled = [n for n, e in cat.items() if e.kind == "scales" and n not in own]
    if grams and scaled:
        said.append(f"(or {' or '.join(scaled)} with base {' or '.join(grams)})")
    return " ".join(said)


def _changed(value: Any, default: Any, name: str) -> Optional[str]:
    """The dotted name of the first value that differs from its default (within a sub-section), or None."""
    if isinstance(value, BaseModel) and isinstance(default, BaseModel):
        return next((f"{name}.{f}" for f in type(value).model_fields if getattr(value, f) != getattr(default, f)),
                    None)
    return None if value == default else name


def unread_option_error(cfg) -> Optional[tuple[str, str]]:
    """(field, message) for the first option of the reconcile section `cfg` that differs from its
    default while the chosen method does not read it, or None."""
    read = read_options(cfg.method, cfg.cats.base)
    for option, default in option_fields().items():
        field = None if option in read else _changed(getattr(cfg, option), default, option)
        if field is not None:
            method = (f"{cfg.method!r} with base {cfg.cats.base!r}" if kind(cfg.method) == "scales"
                      else repr(cfg.method))
            return f"reconcile.{field}", f"only applies to {_readers(option)}; method is {method}"
    return None


def unread_option_defaults(method: str, base: str = "sum") -> dict[str, Any]:
    """The defaults of the options `method` (with base `base`) does not read, as Python values: overrides
    that let settings shared by several methods (a demo config, a benchmark's) serve any of them.
    Nothing for a name not in the catalogue: the config refuses it, naming the field."""
    cat = catalogue()
    if method not in cat or (cat[method].kind == "scales" and base not in cat):
        return {}
    read = read_options(method, base)
    return {name: d.model_dump() if isinstance(d, BaseModel) else d
            for name, d in option_fields().items() if name not in read}


def options_of(method: str, cfg) -> MethodOptions:
    """`method`'s options model filled from the (validated) reconcile section `cfg`."""
    model = catalogue()[method].options
    return model.model_construct(**{f: getattr(cfg, f) for f in model.model_fields})


def weigher(cfg, n_groups: int, tasks: list[str], train_sizes: dict[str, int], seed: int, n_gas: int,
            lr: Callable[[], float], clip_norm: float):
    """The weigher of the reconcile section `cfg` for a run over `tasks` (reconcile/weighers.py);
    `n_gas`, `lr` and `clip_norm` are CATS's (world size x accumulation steps, the step's
    learning rate, the update's clipping threshold)."""
    k = kind(cfg.method)
    if k == "plain":
        raise ValueError("reconcile.method plain captures no task gradients: it has no weigher")
    name = cfg.cats.base if k == "scales" else cfg.method
    base = MethodWeigher(name, n_groups, len(tasks), options_of(name, cfg).keywords(tasks, train_sizes), seed)
    return base if k == "gram" else CATSWeigher(base, cfg.cats, len(tasks), n_gas, lr, clip_norm)
