"""Shared benchmark helpers: the machine, medians, and appending to RESULTS.md."""
from __future__ import annotations

import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    gpu = "no GPU"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            gpu = out.stdout.strip().replace("\n", ", ")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}, {gpu}, Python {platform.python_version()}"


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def append_results(title: str, body: str) -> None:
    """Append a dated section with the command and the machine to benchmarks/RESULTS.md."""
    head = "" if RESULTS.exists() else "# Benchmark results\n\nEach section: what ran, where, when, and the numbers.\n"
    section = (f"\n## {title} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n\n"
               f"- command: `{command_line()}`\n- machine: {machine()}\n\n{body.rstrip()}\n")
    with RESULTS.open("a") as f:
        f.write(head + section)
    print(section)
