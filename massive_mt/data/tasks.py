"""Translation tasks: a task is a direction ``src -> tgt`` named ``"src-tgt"``; the pair file
``{split}.{a}-{b}.*`` serves both ``a-b`` and ``b-a``. The tasks of a run come from the
translation direction around the pivot language, or from an explicit list."""
from __future__ import annotations

import math

from collections.abc import Sequence

from massive_mt.errors import ConfigError, DataError

DIRECTIONS = ("one_to_many", "many_to_one", "many_to_many")


def task_name(task: tuple[str, str]) -> str:
    """``("en", "fr")`` -> ``"en-fr"``."""
    return f"{task[0]}-{task[1]}"


def parse_task(name: str) -> tuple[str, str]:
    """``"en-fr"`` -> ``("en", "fr")``; ConfigError unless the name is two languages joined by one '-'."""
    parts = name.split("-") if isinstance(name, str) else []
    if len(parts) != 2 or not all(parts):
        hint = (" (language codes use '_' between subtags, such as pt_BR or zh_Hans: '-' only separates "
                "the source from the target)" if len(parts) > 2 else "")
        raise ConfigError(f"task {name!r}: expected 'src-tgt' such as 'en-fr'{hint}")
    return parts[0], parts[1]


def resolve_tasks(manifest: dict, direction: str = "one_to_many", tasks: Sequence[str] | None = None,
                  langs: Sequence[str] | None = None, source: str = "the data") -> list[tuple[str, str]]:
    """The (src, tgt) tasks of a run over a corpus or data-bin ``manifest`` (its ``pivot`` and its
    ``pairs``: name -> {"src", "tgt", ...}).

    ``tasks`` (the field ``data.tasks``), when given, is the list, each checked against the pairs.
    Otherwise ``direction`` decides, over every language ``xx`` paired with the pivot (restricted to
    ``langs``, the field ``data.langs``): ``one_to_many`` pivot->xx, ``many_to_one`` xx->pivot,
    ``many_to_many`` all pivot->xx then all xx->pivot. Pairs without the pivot are tasks only when
    listed. ``source`` names the manifest's owner in errors, e.g. ``"the data-bin (data-bin/)"``.
    """
    pairs = manifest["pairs"]
    pivot = manifest.get("pivot", "en")
    if tasks is not None:
        available = {(p["src"], p["tgt"]) for p in pairs.values()} | {(p["tgt"], p["src"]) for p in pairs.values()}
        chosen = [parse_task(t) for t in tasks]
        for t in chosen:
            if t not in available:
                raise ConfigError(f"field 'data.tasks': {task_name(t)} is not a pair of {source}; "
                                  f"available: {', '.join(sorted(pairs))}")
        return chosen
    if direction not in DIRECTIONS:
        raise ConfigError(f"field 'data.direction': must be one of {DIRECTIONS}, got {direction!r}")
    others = sorted({p["tgt"] if p["src"] == pivot else p["src"]
                     for p in pairs.values() if pivot in (p["src"], p["tgt"])})
    if not others:
        raise DataError(f"{source}: no language pair includes the pivot language {pivot!r}")
    if langs is not None:
        unknown = sorted(set(langs) - set(others))
        if unknown:
            raise ConfigError(f"field 'data.langs': {unknown} not in {source}")
        others = [x for x in others if x in set(langs)]
    out = []
    if direction in ("one_to_many", "many_to_many"):
        out += [(pivot, x) for x in others]
    if direction in ("many_to_one", "many_to_many"):
        out += [(x, pivot) for x in others]
    return out


def resource_buckets(train_sizes: dict[str, int]) -> dict[str, str]:
    """high / medium / low by training size: the top, middle and bottom thirds of the tasks."""
    if not train_sizes:
        return {}
    names = sorted(train_sizes, key=lambda t: (-train_sizes[t], t))
    n = len(names)
    out = {}
    for i, t in enumerate(names):
        out[t] = "high" if i < math.ceil(n / 3) else ("medium" if i < math.ceil(2 * n / 3) else "low")
    return out
