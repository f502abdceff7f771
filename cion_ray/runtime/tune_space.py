"""A search space (cion_ray.tune.space) as the param_space Ray Tune samples from."""
from __future__ import annotations

from typing import Any

from ray import tune

from cion_ray.tune.space import SearchSpec


def to_tune(spec: SearchSpec) -> dict[str, Any]:
    """The param_space Tune samples from: dotted key -> a Tune domain."""
    out: dict[str, Any] = {}
    for d in spec.space:
        if d.kind == "uniform":
            out[d.key] = tune.uniform(*d.args)
        elif d.kind == "loguniform":
            out[d.key] = tune.loguniform(*d.args)
        elif d.kind == "randint":
            out[d.key] = tune.randint(d.args[0], d.args[1] + 1)  # Tune's upper bound is exclusive
        elif d.kind == "choice":
            out[d.key] = tune.choice(list(d.args))
        else:
            out[d.key] = tune.grid_search(list(d.args))
    return out
