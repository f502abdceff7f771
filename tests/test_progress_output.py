"""What a person sees from `cion-ray track` / `cion-ray curate` run with stdout not a terminal
(a log, a Ray job): progress lines and the stage's own lines, none of Ray's INFO logs or Ray
Data's progress dumps; CION_RAY_VERBOSE=1 brings Ray's lines back."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

CLI = str(Path(sys.executable).parent / "cion-ray")
RAY_LINE = re.compile(r"\bINFO\b|Total Progress|Running Dataset|Starting execution of Dataset|Execution plan of "
                      r"Dataset|will hang|\(RayTrainWorker pid=|\(MapWorker\(")
# a warning or error of Ray's native layer about the machine or its own internals (a disk almost full, an
# actor's restart caveat): shown to the user as Ray prints it, not counted as the stage's own output
RAY_NATIVE = re.compile(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [WEF] \d+ \d+\] ")


def _run(args: list[str], **env) -> list[str]:
    e = {k: v for k, v in os.environ.items()
         if k not in ("RAY_ADDRESS", "CION_RAY_VERBOSE", "CION_RAY_PROGRESS_EVERY")}
    e.update(RAY_USAGE_STATS_ENABLED="0", YOLO_OFFLINE="1", **env)
    r = subprocess.run([CLI, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, env=e, timeout=600)
    assert r.returncode == 0, r.stdout
    return r.stdout.splitlines()


@pytest.fixture(scope="module")
def tracked(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("progress_output") / "crops"
    lines = _run(["track", "--videos", str(tiny_world / "videos"), "--out", str(out), "--detector", "mot-det",
                  "--mot", str(tiny_world / "mot"), "--actors", "2"])
    return out, lines


def test_tracking_prints_progress_and_no_ray_lines(tracked):
    _, lines = tracked
    ray_lines = [ln for ln in lines if RAY_LINE.search(ln)]
    assert not ray_lines, "\n".join(lines)
    assert any(re.match(r"\[track\] tracking: 240/240 frames in \d+:\d\d \(", ln) for ln in lines), "\n".join(lines)


def test_curate_default_output_is_short_and_free_of_ray_logs(tracked, tiny_world, tmp_path):
    crops, _ = tracked
    lines = _run(["curate", "--crops", str(crops), "--out", str(tmp_path / "curated"), "--gt", str(tiny_world),
                  "--actors", "2"])
    text = "\n".join(lines)
    ours = [ln for ln in lines if not RAY_NATIVE.search(ln)]
    assert len(ours) <= 34, f"{len(ours)} lines:\n{text}"  # 18 of them the report
    assert not [ln for ln in lines if RAY_LINE.search(ln)], text
    for stage in ("embedding", "denoising", "labelling and exporting"):
        assert any(ln.startswith(f"[curate] {stage}: ") and " in " in ln for ln in lines), text  # its final line
    assert any(re.match(r"\[curate\] embedding: 1548/1548 crops in \d+:\d\d \(", ln) for ln in lines), text


def test_verbose_brings_ray_lines_back(tracked, tiny_world, tmp_path):
    crops, _ = tracked
    lines = _run(["curate", "--crops", str(crops), "--out", str(tmp_path / "curated"), "--gt", str(tiny_world),
                  "--actors", "2", "--no-export"], CION_RAY_VERBOSE="1")
    text = "\n".join(lines)
    assert any(re.search(r"Starting execution of Dataset|Running Dataset|Total Progress", ln) for ln in lines), text
    assert any("INFO" in ln for ln in lines), text
