"""Connecting to Ray, and small task helpers shared by the stages."""
from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable, Iterable

import ray

from cion_ray.progress import Progress, verbose


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect once: to `address` ("auto" for a running cluster), else to $RAY_ADDRESS (set inside
    `ray job submit`), else start a local instance. A no-op when Ray is already initialised,
    except that Ray's own console output is set to this process's verbosity (`quiet_ray`)."""
    if not ray.is_initialized():
        if not verbose():
            # the notice that a local instance turned token auth on (the safe default) on every run;
            # the warning that it is off stays
            logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_AUTH_ON_NOTICE)
        level = logging.INFO if verbose() else logging.WARNING
        kwargs: dict[str, Any] = dict(logging_level=level, log_to_driver=True)
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, **kwargs)
        else:
            # with its dashboard: Ray Train's placement-group cleaner asks the state API whether the
            # controller lives, and without one it warns every few seconds for the whole run
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, **kwargs)
    quiet_ray()


# Ray Data warnings that are noise for our stages, dropped from the console (kept in ray-data.log):
# - Dataset._execute warns "The Dataset job will hang unless more CPUs are freed up" whenever
#   ray.available_resources() shows no free CPU at that instant. Every write_parquet passes
#   through it twice (Dataset.materialize), the second time after its own execution has ended,
#   on data already in memory that needs no CPU, while the actor pool and write tasks that just
#   finished are still counted as holding their CPUs. Our pools are sized to leave CPUs for
#   Ray Data's tasks (fit_actor_cpus); a genuinely starved pipeline is still reported by Ray
#   Data's starvation check ("Cluster resources are not enough to run any task ... may hang").
# - "Progress bars disabled": we disable them on purpose (quiet_ray).
_NOISE = ("Warning: The Ray cluster currently does not have any available CPUs",
          "Progress bars disabled")


class _QuietRayData(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        return not str(record.msg).startswith(_NOISE)


_QUIET = _QuietRayData()


class _AuthOnNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Token authentication is enabled for this Ray cluster")


_AUTH_ON_NOTICE = _AuthOnNotice()


def quiet_ray() -> None:
    """Ray's own console output at this process's verbosity (`cion_ray.progress.verbose()`, i.e.
    CION_RAY_VERBOSE). Quiet (the default): no Ray Data progress dumps or execution-plan lines,
    no Ray Data INFO logs on the console (they stay in the session's ray-data.log), and none of
    the warnings in _NOISE. Verbose: Ray's output as Ray prints it. Idempotent."""
    import ray.data  # configures the "ray.data" logger on import

    ctx = ray.data.DataContext.get_current()
    handlers = [h for h in logging.getLogger("ray.data").handlers if getattr(h, "name", "") == "console"]
    if verbose():
        for h in handlers:
            h.removeFilter(_QUIET)
        return
    ctx.enable_progress_bars = False  # also the "Total Progress: 0/?" lines logged when stdout is not a TTY
    ctx.print_on_execution_start = False
    for h in handlers:
        h.addFilter(_QUIET)  # a second add of the same filter is a no-op


def train_log_level() -> str:
    """Ray Train's console log level (RunConfig.logging_config) at this process's verbosity."""
    return "INFO" if verbose() else "WARNING"


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

    def done_frames(self) -> int:
        """Frames of the chunks reported done so far (a progress poll: no copy of the events)."""
        done = {(e.get("video_id"), e.get("chunk")): e.get("frames", 0) for e in self._events if e.get("done")}
        return sum(done.values())  # a retried chunk once


@ray.remote(num_cpus=0)
class ProgressCounter:
    """A count that actors and tasks add to (fire and forget) and the driver polls."""

    def __init__(self):
        self._n = 0

    def add(self, n: int) -> None:
        self._n += int(n)

    def value(self) -> int:
        return self._n


class Poller:
    """A thread that calls `_sync()` every `poll_s` seconds while the driver waits in a blocking
    Ray call, as a context manager; at the end `_finish(failed)` (after the thread has stopped)."""

    def __init__(self, poll_s: float, name: str):
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def _sync(self) -> None:
        raise NotImplementedError

    def _finish(self, failed: bool) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._sync()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        self._thread.join()
        self._finish(exc_type is not None)


class PolledProgress(Poller):
    """A driver-side `Progress` fed by polling a count kept elsewhere (an actor) while the driver
    waits in a blocking Ray call (write_parquet, take_all, trainer.fit).

        with PolledProgress(Progress("curate/embed", total, "crops", log=log)) as pp:
            ... actors call pp.counter.add.remote(n) ...

    `read` (default: the counter it creates, beside the driver) returns the count so far;
    polled every `poll_s` seconds on a thread, and once more at the end."""

    def __init__(self, progress: Progress, read: Callable[[], int] | None = None, poll_s: float = 0.5):
        super().__init__(poll_s, f"progress-{progress.stage}")
        self.progress = progress
        self.counter = None
        if read is None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            here = ray.get_runtime_context().get_node_id()
            self.counter = ProgressCounter.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)).remote()
            counter = self.counter
            read = lambda: ray.get(counter.value.remote(), timeout=10)  # noqa: E731
        self._read = read

    def _sync(self) -> None:
        try:
            n = int(self._read())
        except Exception:  # a lost counter costs the progress line, never the stage
            return
        if n != self.progress.done:
            self.progress.update(n - self.progress.done)

    def _finish(self, failed: bool) -> None:
        if not failed:
            self._sync()
        self.progress.close(failed=failed)
        # not killed: adds still in flight would fail, each an "unhandled error" logged by a
        # worker; the counter goes when the last handle does (the dataset's, the stage's)
        self.counter = None


def train_storage(out: str) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for a Ray Train RunConfig writing under out (a local
    folder or an object-store URI)."""
    from pathlib import Path

    from cion_ray.io import fs

    if fs.is_remote(out):
        afs, path = fs.arrow_fs(out)
        return path, afs
    return str(Path(out).resolve()), None
