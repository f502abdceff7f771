"""Search spaces for `cion-ray tune`: a YAML file of the stage config's dotted keys, each with a
distribution, checked against the stage's config class before any trial starts (pure code).

    metric: val_mAP            # what the search maximises (mode: max) or minimises (mode: min)
    mode: max
    trials: 8                  # configurations sampled (Tune's num_samples; a grid counts once)
    space:
      optim.lr: {loguniform: [0.001, 0.01]}
      optim.teacher_temp: {uniform: [0.01, 0.05]}
      optim.k_schedule: {choice: ["0:2", "0:4"]}
      views.local_crops: {randint: [0, 4]}      # integers low..high, both included
      model.out_dim: {grid: [512, 1024]}        # every value, once per sample

A key that is not a field of the stage's config, an empty range (low >= high, no values), an
unknown distribution, or a value its field cannot hold is a one-line ConfigError naming the file
and the key. Every sampled configuration is also built once with the range's ends before the search
starts (`check_space`), so a value the stage refuses (a K larger than the batch) fails here.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cion_ray.config import _field_types, from_dict, plain, set_path, suggest, to_dict
from cion_ray.errors import ConfigError

DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice", "grid")


@dataclass(frozen=True)
class Dimension:
    """One searched key: `kind` in DISTRIBUTIONS; `args` (low, high) or the values."""
    key: str
    kind: str
    args: tuple

    def ends(self) -> list:
        """The values a check builds the config with: a range's ends, or every value."""
        if self.kind in ("uniform", "loguniform", "randint"):
            return [self.args[0], self.args[1]]
        return list(self.args)

    def describe(self) -> str:
        if self.kind in ("choice", "grid"):
            return f"{self.kind} of {', '.join(map(str, self.args))}"
        return f"{self.kind} [{self.args[0]:g}, {self.args[1]:g}]"


@dataclass
class SearchSpec:
    """A search: its space, the metric and direction, and how many configurations to sample."""
    space: list[Dimension]
    metric: str
    mode: str = "max"
    trials: int = 4
    source: str = ""  # the YAML file (for messages)
    extra: dict = field(default_factory=dict)  # the file's other top-level keys, for the command to read

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.space]


def leaf_keys(cls) -> dict[str, Any]:
    """Every dotted path of a value field of dataclass `cls` -> its type."""
    out: dict[str, Any] = {}
    for name, tp in _field_types(cls).items():
        if dataclasses.is_dataclass(tp):
            out.update({f"{name}.{k}": t for k, t in leaf_keys(tp).items()})
        else:
            out[name] = tp
    return out


def _number(v, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{where}: expected a number, got {v!r}")
    return v


def parse_dimension(key: str, spec, where: str) -> Dimension:
    w = f"{where}: space.{key}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{w}: expected one distribution, e.g. {{uniform: [low, high]}} or {{choice: [a, b]}} "
                          f"(one of {', '.join(DISTRIBUTIONS)}), got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{w}: unknown distribution {kind!r} (one of {', '.join(DISTRIBUTIONS)})")
    if not isinstance(args, list):
        raise ConfigError(f"{w}: {kind} needs a list, got {args!r}")
    if kind in ("choice", "grid"):
        if not args:
            raise ConfigError(f"{w}: {kind} has no values")
        return Dimension(key, kind, tuple(args))
    if len(args) != 2:
        raise ConfigError(f"{w}: {kind} needs [low, high], got {args!r}")
    low, high = (_number(a, w) for a in args)
    if kind == "randint":
        if int(low) != low or int(high) != high:
            raise ConfigError(f"{w}: randint needs integers, got {args!r}")
        low, high = int(low), int(high)
        if low > high:
            raise ConfigError(f"{w}: empty range [{low}, {high}]")
    elif not low < high:
        raise ConfigError(f"{w}: empty range [{low:g}, {high:g}] (low must be below high)")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{w}: loguniform needs low > 0, got {low:g}")
    return Dimension(key, kind, (low, high))


def parse_spec(data: dict, config_class, source: str = "search space", metrics: tuple[str, ...] = (),
               default_metric: str = "", fixed: tuple[str, ...] = ()) -> SearchSpec:
    """A SearchSpec from the YAML mapping `data`, checked against `config_class` (the stage's
    config). metrics: the names the search may optimise (empty: any); fixed: keys the command
    sets itself, which a space may not search (the output folder, the data)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with a 'space' key")
    known = {"space", "metric", "mode", "trials"}
    extra = {k: v for k, v in data.items() if k not in known}
    space = data.get("space")
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{source}: 'space' must map config keys to distributions (it is empty or missing)")
    leaves = leaf_keys(config_class)
    dims = []
    for key, spec in space.items():
        key = str(key)
        if key not in leaves:
            hint = suggest(config_class, key.rsplit(".", 1)[-1])
            raise ConfigError(f"{source}: space.{key} is not a key of {config_class.__name__}"
                              + (f" (did you mean {hint}?)" if hint else "") + "; every key: docs/config.md")
        if key in fixed:
            raise ConfigError(f"{source}: space.{key} is set by the command itself and cannot be searched")
        dims.append(parse_dimension(key, spec, source))
    metric = str(data.get("metric") or default_metric)
    if not metric:
        raise ConfigError(f"{source}: no metric (e.g. metric: {metrics[0] if metrics else 'val_mAP'})")
    if metrics and metric not in metrics:
        raise ConfigError(f"{source}: metric {metric!r} does not exist: one of {', '.join(metrics)}")
    mode = str(data.get("mode", "max"))
    if mode not in ("max", "min"):
        raise ConfigError(f"{source}: mode must be max or min, got {mode!r}")
    trials = data.get("trials", 4)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"{source}: trials must be an integer >= 1, got {trials!r}")
    return SearchSpec(dims, metric, mode, trials, source, extra)


def load_spec(path: str | Path, config_class, **kw) -> SearchSpec:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"search space {p}: not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"search space {p}: not valid YAML ({str(e).splitlines()[0]})") from None
    return parse_spec(data, config_class, str(p), **kw)


def apply_params(base, params: dict[str, Any], where: str = "trial"):
    """`base` (a config dataclass) with the dotted keys of `params` set, rebuilt through from_dict
    so every value is coerced and checked as a config file's would be."""
    data = to_dict(base)
    for key, value in params.items():
        data = set_path(data, key, value)
    return from_dict(type(base), data, where)


def check_space(spec: SearchSpec, base) -> None:
    """Build `base` with each end of each dimension (the others at their first end): a value the
    stage refuses is an error naming the key, before any trial starts."""
    first = {d.key: d.ends()[0] for d in spec.space}
    for d in spec.space:
        for v in d.ends():
            where = f"{spec.source}: space.{d.key}={v!r}"
            try:
                apply_params(base, {**first, d.key: v}, where)
            except ConfigError as e:
                msg = str(e)
                raise ConfigError(msg if msg.startswith(where) else f"{where}: {msg}") from None


def params_yaml(base, params: dict[str, Any], header: str = "", drop: tuple[str, ...] = ()) -> str:
    """The whole config with `params` applied, as the YAML a stage's --config accepts; the
    top-level keys in `drop` (the output folder, the data: the command line gives them) left out."""
    cfg = apply_params(base, params)
    data = {k: v for k, v in to_dict(cfg).items() if k not in drop}
    text = yaml.safe_dump(plain(data), sort_keys=False)
    return (header if header.endswith("\n") or not header else header + "\n") + text

