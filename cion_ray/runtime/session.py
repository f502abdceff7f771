"""Connecting to Ray, and small task helpers shared by the stages."""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterable

import ray


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect once: to `address` ("auto" for a running cluster), else to $RAY_ADDRESS (set inside
    `ray job submit`), else start a local instance. A no-op when Ray is already initialised."""
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = dict(logging_level=logging.WARNING, log_to_driver=True)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 0.0))


def fit_actor_cpus(actors: int, cpus_per_actor: float, reserve: float = 1.0) -> float:
    """CPUs to ask per actor so an actor pool leaves `reserve` CPUs for Ray Data's read and write
    tasks: a pool holding every CPU would starve them and the pipeline would wait forever."""
    total = cluster_cpus()
    if actors * cpus_per_actor <= total - reserve:
        return cpus_per_actor
    return max(0.1, (total - reserve) / actors) if total > reserve else max(0.1, total / (actors + 1))


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0.0))


def parallel_map(fn: Callable, items: Iterable, num_cpus: float = 0.5, max_in_flight: int = 64) -> list:
    """[fn(x) for x in items] as Ray tasks, in order, with a bounded number in flight."""
    remote = ray.remote(num_cpus=num_cpus)(fn)
    items = list(items)
    results: list = [None] * len(items)
    pending: dict = {}
    for i, x in enumerate(items):
        if len(pending) >= max_in_flight:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                results[pending.pop(ref)] = ray.get(ref)
        pending[remote.remote(x)] = i
    for ref, i in pending.items():
        results[i] = ray.get(ref)
    return results


def root_message(e: BaseException) -> str:
    """The innermost cause's last line, without the error class prefix of our own errors: what a
    user needs from an exception that a Ray worker raised and Ray wrapped."""
    seen = e
    while seen.__cause__ is not None:
        seen = seen.__cause__
    lines = str(seen).strip().splitlines()
    msg = lines[-1] if lines else type(seen).__name__
    for prefix in ("cion_ray.errors.CionError: ", "cion_ray.errors.ConfigError: "):
        msg = msg.replace(prefix, "")
    return msg


@ray.remote(num_cpus=0)
class RunLedger:
    """Collects per-chunk events (done, failed, warnings) from actors during one run."""

    def __init__(self):
        self._events: list[dict] = []

    def record(self, event: dict) -> None:
        self._events.append(event)

    def events(self) -> list[dict]:
        return list(self._events)


def train_storage(out: str) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for a Ray Train RunConfig writing under out (a local
    folder or an object-store URI)."""
    from pathlib import Path

    from cion_ray.io import fs

    if fs.is_remote(out):
        afs, path = fs.arrow_fs(out)
        return path, afs
    return str(Path(out).resolve()), None
