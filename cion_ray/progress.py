"""Progress a person can read: one line per stage with counts, rate and time left.

Where stdout and stderr are a terminal the line is a tqdm bar that updates in place; elsewhere
(log files, `ray job logs`) a plain line every `CION_RAY_PROGRESS_EVERY` seconds (default 10,
0 = every update) and a final line with the totals. Listeners (`add_listener`) receive the same
state as a dict at most once a second per stage and at the end: what a status file or a
dashboard needs. Pure Python, no Ray: a Ray stage feeds it from the driver.

`verbose()` reads `CION_RAY_VERBOSE` (set by the CLI's --verbose): Ray's own INFO logs and Ray
Data's progress dumps are shown only then.
"""
from __future__ import annotations

import math
import os
import sys
import threading
import time
from typing import Callable

EVERY_ENV = "CION_RAY_PROGRESS_EVERY"
VERBOSE_ENV = "CION_RAY_VERBOSE"
DEFAULT_EVERY_S = 10.0
LISTENER_EVERY_S = 1.0

Listener = Callable[[dict], None]
_listeners: list[Listener] = []
_listeners_lock = threading.Lock()


def verbose() -> bool:
    """True when CION_RAY_VERBOSE asks for Ray's own logs (1, true, yes, on)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def report_every() -> float:
    """Seconds between plain progress lines: CION_RAY_PROGRESS_EVERY, else 10 (0 = every update)."""
    raw = os.environ.get(EVERY_ENV, "").strip()
    if not raw:
        return DEFAULT_EVERY_S
    try:
        v = float(raw)
    except ValueError:
        return DEFAULT_EVERY_S
    return v if v >= 0 and math.isfinite(v) else DEFAULT_EVERY_S


def add_listener(fn: Listener) -> None:
    """fn(state) on every stage's progress: {"stage", "done", "total", "unit", "rate", "eta_s",
    "finished"} (rate in units/s; eta_s None when unknown), at most once a second per stage
    and once when the stage closes."""
    with _listeners_lock:
        if fn not in _listeners:
            _listeners.append(fn)


def remove_listener(fn: Listener) -> None:
    with _listeners_lock:
        if fn in _listeners:
            _listeners.remove(fn)


def interactive() -> bool:
    """A terminal on both stdout and stderr (the bar is drawn on stderr, beside the stage logs)."""
    try:
        return sys.stdout.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def format_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _default_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Progress:
    """Counts of one stage. `with Progress("curate/embed", total=1548, unit="crops") as p:
    p.update(256)`. Thread-safe: a poller thread may call update/set_total.

    stage: the listeners' name for it ("curate/embed"); label: what a person reads (default: stage).
    log: where plain lines go (a stage's own log callback, so they carry its prefix); bar: force
    the terminal bar on or off (default: `interactive()`); every: seconds between plain lines
    (default `report_every()`); initial: units already done before this run (a resumed stage),
    left out of the rate; final_line: False where the stage logs its own summary; also: (factor,
    unit) for a second rate (iterations -> images: (batch, "img")). The bar is removed at close,
    leaving the final line: one line per stage in the terminal as in a log."""

    def __init__(self, stage: str, total: int | None = None, unit: str = "it", *,
                 label: str | None = None, log: Callable[[str], None] | None = None, bar: bool | None = None,
                 every: float | None = None, initial: int = 0, also: tuple[float, str] | None = None,
                 final_line: bool = True,
                 clock: Callable[[], float] = time.monotonic):
        self.stage, self.unit, self.label = stage, unit, label or stage
        self.total = None if total is None else int(total)
        self.done = self.initial = int(initial)
        self.also, self.final_line = also, final_line
        self._log = log or _default_log
        self._every = report_every() if every is None else float(every)
        self._clock = clock
        self._t0 = clock()
        self._last_line = self._t0
        self._last_notify = -math.inf
        self._lock = threading.Lock()
        self._closed = False
        self._bar = None
        if interactive() if bar is None else bar:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.initial, desc=self.label, unit=f" {unit}", file=sys.stderr,
                             dynamic_ncols=True, leave=False, mininterval=0.2)
        self._notify(force=True)

    # -- state ---------------------------------------------------------------------------------
    def state(self, finished: bool = False) -> dict:
        """The listeners' dict for now."""
        elapsed = max(self._clock() - self._t0, 1e-9)
        rate = (self.done - self.initial) / elapsed
        eta = None
        if self.total is not None and rate > 0:
            eta = max(0.0, (self.total - self.done) / rate)
        elif self.total is not None and self.done >= self.total:
            eta = 0.0
        return {"stage": self.stage, "done": self.done, "total": self.total, "unit": self.unit,
                "rate": rate, "eta_s": eta, "finished": finished}

    def line(self) -> str:
        """One plain progress line: `stage: 120/1548 crops (8%), 35.2 crops/s, 0:41 left`."""
        s = self.state()
        if s["total"]:
            head = f"{s['done']}/{s['total']} {self.unit} ({100.0 * s['done'] / s['total']:.0f}%)"
        else:
            head = f"{s['done']} {self.unit}"
        tail = f", {format_seconds(s['eta_s'])} left" if s["total"] else ""
        return f"{self.label}: {head}, {_rate(s['rate'])} {self.unit}/s{self._also(s['rate'])}{tail}"

    def _also(self, rate: float) -> str:
        return f", {_rate(rate * self.also[0])} {self.also[1]}/s" if self.also else ""

    # -- updates -------------------------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        with self._lock:
            if self._closed:
                return
            self.done += int(n)
            if self._bar is not None:
                if self.also:
                    self._bar.set_postfix_str(self._also(self.state()["rate"]).lstrip(", "), refresh=False)
                self._bar.update(int(n))
            else:
                now = self._clock()
                # all done: the final line follows at close, no need for a periodic one now
                finished = self.total is not None and self.done >= self.total
                if now - self._last_line >= self._every and not finished:
                    self._last_line = now
                    self._log(self.line())
        self._notify()

    def set_total(self, total: int | None) -> None:
        with self._lock:
            self.total = None if total is None else int(total)
            if self._bar is not None:
                self._bar.total = self.total
                self._bar.refresh()
        self._notify()

    def set_label(self, label: str) -> None:
        """What a person reads from now on (e.g. the epoch in a pre-training line)."""
        with self._lock:
            self.label = label
            if self._bar is not None:
                self._bar.set_description(label, refresh=False)

    def close(self, failed: bool = False) -> None:
        """The final line (totals, time, mean rate) and the listeners' last call. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._bar is not None:
                self._bar.close()
            elapsed = self._clock() - self._t0
            if not failed and self.final_line:
                of = f"/{self.total}" if self.total is not None else ""
                rate = (self.done - self.initial) / max(elapsed, 1e-9)
                self._log(f"{self.label}: {self.done}{of} {self.unit} in {format_seconds(elapsed)} "
                          f"({_rate(rate)} {self.unit}/s{self._also(rate)})")
        self._notify(force=True, finished=not failed, failed=failed)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)

    # -- listeners -----------------------------------------------------------------------------
    def _notify(self, force: bool = False, finished: bool = False, failed: bool = False) -> None:
        with _listeners_lock:
            listeners = list(_listeners)
        if not listeners:
            return
        now = self._clock()
        with self._lock:
            if not force and now - self._last_notify < LISTENER_EVERY_S:
                return
            self._last_notify = now
            state = self.state(finished)
        if failed:
            state["failed"] = True
        for fn in listeners:
            try:
                fn(dict(state))
            except Exception as e:  # a broken status writer must not stop the stage it watches
                print(f"progress listener {getattr(fn, '__name__', fn)!r} failed: {type(e).__name__}: {e}",
                      file=sys.stderr, flush=True)


def _rate(r: float) -> str:
    return f"{r:.1f}" if r < 100 else f"{r:.0f}"
