"""The capacity plan is computed from RESULTS.md's rates: it follows them, and says which are missing."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cion_ray.capacity import Assumptions, plan, plan_markdown, rates
from cion_ray.errors import CionError

ROOT = Path(__file__).resolve().parents[1]
RESULTS = (ROOT / "benchmarks" / "RESULTS.md").read_text()


def test_rates_come_from_the_newest_sections():
    r = rates(RESULTS)
    assert {"track_cpu", "link", "embed_cpu", "gpu_step", "train_loop_gpu"} <= set(r)
    assert all(x.value > 0 and x.source for x in r.values())
    older = "## bench_link: x (2026-01-01 00:00 UTC)\n\n- machine: y, 2 cores\n\n" \
            "| tracklets | videos | ranges (s) | reducer (s) | total (s) |\n|---|---|---|---|---|\n" \
            "| 1000000 | 10 | 1 | 1 | 1000 |\n"
    newer = older.replace("2026-01-01", "2026-01-02").replace("| 1000 |", "| 10 |")
    assert rates(RESULTS + older)["link"].value == pytest.approx(1000)
    assert rates(RESULTS + older + newer)["link"].value == pytest.approx(100_000)


def test_plan_follows_rates_and_assumptions():
    r = rates(RESULTS)
    base = plan(r, Assumptions())
    more = plan(r, Assumptions(gpus=16, minutes_per_video=20))
    assert more["train_loop_s"] == pytest.approx(base["train_loop_s"] / 2)
    assert more["detect_gpu_s"] == pytest.approx(base["detect_gpu_s"])  # twice the frames on twice the GPUs
    assert more["track_cpu_s"] == pytest.approx(base["track_cpu_s"] * 2)
    assert base["reference_per_gpu"] == pytest.approx(3_898_086 * 100 / (5 * 86400 * 8))


def test_missing_rate_names_its_benchmark():
    text = "\n".join(line for line in RESULTS.splitlines() if not line.startswith("## bench_link"))
    # without its headings the bench_link tables join the previous section, which is not bench_link
    with pytest.raises(CionError, match="link .*bench_link"):
        rates(text)


def test_script_writes_the_plan(tmp_path):
    out = tmp_path / "capacity.md"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "capacity.py"), "--out", str(out), "--gpus", "4"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    text = out.read_text()
    assert text == plan_markdown(RESULTS, Assumptions(gpus=4), command="python benchmarks/capacity.py --out "
                                 f"{out} --gpus 4")
    assert "| reference (paper) | 8 V100 |" in text and "4 GPUs" in text
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "capacity.py"), "--results", str(tmp_path / "no"),
                          "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "capacity:" in bad.stderr


def test_bench_scale_rates_are_used_when_newer():
    scale = ("## bench_scale: the pre-training data path and curate's export by size (2099-01-01 00:00 UTC)\n\n"
             "- machine: y, 2 cores\n\nPre-training.\n\n"
             "| crops | data GB | pack build s | pack crops/s | workers | images per worker | MB read per worker "
             "| read / data set | worker peak RSS MB | worker + loaders Pss MB | loader private MB | first batch s |\n"
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
             "| 100,000 | 0.63 | 4 | 25,000 | 1 | 100,000 | 631 | 1.00 | 1,633 | 1,593 | 8 | 1.8 |\n"
             "| | | | | 2 | 50,000 | 319 | 0.51 | 1,322 | 1,281 | 8 | 0.6 |\n"
             "| 4,000,000 | 25.19 | 100 | 40,000 | 1 | skipped: shard 25.2 GB > 23.8 GB free | | | | | | |\n\n"
             "Export.\n\n| crops | identities | actors | median s | crops/s | min-max s | vs 1 actor |\n"
             "|---:|---:|---:|---:|---:|---:|---:|\n"
             "| 100,000 | 11,000 | 1 | 100.0 | 1,000 | 100.0-100.0 | 1.00x |\n"
             "| 1,000,000 | 110,000 | 1 | 1000.0 | 1,000 | 1000.0-1000.0 | 1.00x |\n"
             "| 1,000,000 | 110,000 | 2 | 500.0 | 2,000 | 500.0-500.0 | 2.00x |\n")
    r = rates(RESULTS + scale)
    assert r["pack"].value == pytest.approx(40_000) and "4,000,000 crops in 100 s" in r["pack"].how
    assert r["export"].value == pytest.approx(1000) and "2 actor(s) at 1,000,000" in r["export"].how
    # an older bench_scale section does not override newer bench_export / pretrain data path ones
    old = rates(scale.replace("2099-01-01", "2000-01-01") + RESULTS)
    assert old["export"].source == rates(RESULTS)["export"].source and old["pack"].value == rates(RESULTS)["pack"].value
