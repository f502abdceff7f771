"""`cion-ray tune pretrain`: a CPU search of a tiny backbone where ASHA stops trials early, the
driver killed mid-search and the same command resuming it, best.yaml accepted by pretrain, and bad
search spaces refused before Ray starts. The training data: the tiny world's Market-style training
split as a CION-AL JSON (4 identities, 20 images), evaluated on its query / gallery."""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cion_ray.config import load_config
from cion_ray.pretrain.config import PretrainConfig

pytestmark = pytest.mark.ray

TINY = ["model.arch=test_resnet", "model.out_dim=256", "model.hidden_dim=64", "model.bottleneck_dim=32",
        "views.local_crops=1", "views.global_size=64,32", "views.local_size=32,16", "scale.loader_workers=0",
        "optim.batch_per_worker=8", "optim.k_schedule=0:2", "optim.iters_per_epoch=2", "optim.warmup_epochs=1",
        "scale.cpus_per_worker=1"]


@pytest.fixture(scope="module")
def tiny_al(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_al")
    train = tiny_world / "reid" / "bounding_box_train"
    (out / "images").symlink_to(train)
    entries = [{"file_path": f"images/{f.name}", "id": int(f.name[:4])} for f in sorted(train.glob("*.jpg"))]
    (out / "cion_al.json").write_text(json.dumps(entries))
    return out / "cion_al.json"


def _command(data, out, space, *extra, epochs: int = 3) -> list[str]:
    cmd = [sys.executable, "-m", "cion_ray.cli", "tune", "pretrain", "--data", str(data), "--out", str(out),
           "--space", str(space), "--epochs", str(epochs)]
    for s in TINY:
        cmd += ["--set", s]
    return cmd + list(extra)


def _env() -> dict:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def _trial_lines(text: str) -> list[tuple[str, str]]:
    """(trial id, the rest) of each trial event line."""
    return re.findall(r"^trial \d+/\d+ \((\w+)\) (.*)$", text, flags=re.M)


def _rows(out: Path) -> list[dict]:
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def test_search_stops_weak_trials_early_and_writes_a_best_config(tiny_al, tiny_world, tmp_path):
    """4 trials (a grid over out_dim, the training loss as the metric: a larger head's loss is
    larger at epoch 1 whatever it learns, so ASHA's decision is known), 3 epochs, 2 at once: ASHA
    (grace 1, reduction 2) stops a trial whose epoch-1 loss is above the median so far."""
    space = tmp_path / "space.yaml"
    space.write_text("metric: loss\nmode: min\ntrials: 1\nspace:\n  model.out_dim: {grid: [16, 128, 1024, 4096]}\n")
    out = tmp_path / "search"
    t0 = time.perf_counter()
    p = subprocess.run(_command(tiny_al, out, space, "--no-base", "--eval-data", str(tiny_world / "reid")),
                       capture_output=True, text=True, env=_env(), timeout=400)
    seconds = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr[-3000:]
    events = _trial_lines(p.stdout)
    assert len({t for t, _ in events}) == 4
    assert sum("stopped early (ASHA)" in e for _, e in events) >= 1, p.stdout
    assert sum("completed 3 epochs" in e for _, e in events) >= 1, p.stdout
    assert "Trial status" not in p.stdout and "Configuration for experiment" not in p.stdout  # Tune's tables
    rows = _rows(out)
    assert [r["model.out_dim"] for r in rows] == ["16", "128", "1024", "4096"]
    stopped = [r for r in rows if r["status"] == "stopped early"]
    assert stopped and all(int(r["epochs"]) < 3 for r in stopped)
    assert all(r["status"] in ("completed", "stopped early") for r in rows)
    best = min((r for r in rows if r["status"] == "completed"), key=lambda r: float(r["last_loss"]))
    assert best["model.out_dim"] == "16"
    for name in ("results.md", "best.yaml", "search.json", "asha.json"):
        assert (out / name).stat().st_size > 0
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # each trial is a pre-training run folder: its metrics and log, its Train storage (a stopped
    # trial's workers may finish one more epoch before they are gone: results count what Tune saw)
    for r in rows:
        history = json.loads((out / "trials" / r["trial_id"] / "metrics.json").read_text())
        n = int(r["epochs"])
        assert [m["epoch"] for m in history][:n] == list(range(1, n + 1)) and "eval_mAP" in history[0]
        assert (out / "trials" / r["trial_id"] / "log.txt").read_text().count("epoch 1/3") == 1
    assert "searched in" in p.stdout and "best:     trial 1" in p.stdout
    print(f"search: 4 trials in {seconds:.0f}s")

    # best.yaml is a whole pre-training config: pretrain --config accepts it
    cfg = load_config(PretrainConfig, out / "best.yaml", [f"data={tiny_al}", f"out={tmp_path / 'run'}"])
    assert cfg.model.out_dim == 16 and cfg.model.arch == "test_resnet" and cfg.optim.epochs == 3
    from cion_ray.runtime.pretrain import _check_inputs

    _check_inputs(cfg)
    # the same command again: the search is finished, nothing runs again
    p2 = subprocess.run(_command(tiny_al, out, space, "--no-base", "--eval-data", str(tiny_world / "reid")),
                        capture_output=True, text=True, env=_env(), timeout=300)
    assert p2.returncode == 0, p2.stderr[-3000:]
    assert "resuming the search" in p2.stdout and not _trial_lines(p2.stdout), p2.stdout
    assert _rows(out) == rows


@pytest.mark.slow  # ~2.5 min on 2 cores: a search started, killed, and run again
def test_a_killed_search_resumes_its_unfinished_trials_from_their_checkpoints(tiny_al, tiny_world, tmp_path):
    """The driver (and the local Ray it started) SIGKILLed once a trial has reported an epoch; the
    same command again continues the unfinished trials after their checkpoints and does not run
    the finished or stopped ones again."""
    space = tmp_path / "space.yaml"
    space.write_text("trials: 3\nspace:\n  optim.lr: {loguniform: [0.001, 0.02]}\n"
                     "  optim.teacher_temp: {uniform: [0.01, 0.05]}\n")
    out = tmp_path / "search"
    cmd = _command(tiny_al, out, space, "--eval-data", str(tiny_world / "reid"))
    log1 = tmp_path / "run1.log"
    with open(log1, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, text=True, env=_env(), start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and p.poll() is None:
        if re.search(r"\) epoch 1/3: eval_mAP", log1.read_text()):
            break
        time.sleep(0.5)
    assert p.poll() is None, log1.read_text()[-3000:]
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    first = log1.read_text()
    reported: dict[str, int] = {}
    for t, e in _trial_lines(first):
        m = re.match(r"epoch (\d+)/3", e)
        if m:
            reported[t] = max(reported.get(t, 0), int(m.group(1)))
    finished = {t for t, e in _trial_lines(first) if "completed" in e or "stopped early" in e}
    assert reported, first

    p2 = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=400)
    assert p2.returncode == 0, p2.stderr[-3000:]
    second = _trial_lines(p2.stdout)
    assert "resuming the search" in p2.stdout
    assert not {t for t, _ in second} & finished, "a finished or stopped trial ran again"
    for t, e in reported.items():
        if t in finished:
            continue
        epochs = [int(m.group(1)) for tt, x in second if tt == t and (m := re.match(r"epoch (\d+)/3", x))]
        assert all(k > e for k in epochs), (t, e, epochs)  # continued after its checkpoint, not from 1
        log = (out / "trials" / t / "log.txt").read_text()
        assert "resumed at epoch" in log, log
    rows = _rows(out)
    assert len(rows) == 3 and all(r["status"] in ("completed", "stopped early") for r in rows), rows
    assert [r["base"] for r in rows] == ["yes", "", ""]  # the base config's values, first
    for r in rows:
        history = json.loads((out / "trials" / r["trial_id"] / "metrics.json").read_text())
        n = int(r["epochs"])
        assert [m["epoch"] for m in history][:n] == list(range(1, n + 1))
    assert "base:" in p2.stdout


def _run_cli_without_ray(args: list[str]) -> subprocess.CompletedProcess:
    code = ("import sys; from cion_ray.cli import main; rc = main(sys.argv[1:]); "
            "print('RAY_IMPORTED' if 'ray' in sys.modules else 'NO_RAY'); sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code] + args, capture_output=True, text=True, env=_env(), timeout=120)


@pytest.mark.parametrize("space, message", [
    ("space:\n  optim.lrr: {uniform: [0.001, 0.01]}\n", "space.optim.lrr is not a key of PretrainConfig"),
    ("space:\n  optim.lr: {uniform: [0.01, 0.001]}\n", "empty range"),
    ("metric: val_mAP\nspace:\n  optim.lr: {uniform: [0.001, 0.01]}\n", "metric 'val_mAP' does not exist"),
    ("space:\n  optim.epochs: {randint: [1, 3]}\n", "set by the command itself"),
    ("space:\n  optim.k_schedule: {choice: ['0:2', '0:16']}\n", "optim.k_schedule"),
    ("space:\n  optim.lr: {uniform: [0.001, 0.01]}\nbrackets: 3\n", "unknown top-level key 'brackets'"),
])
def test_a_bad_space_is_a_one_line_error_before_ray_starts(tiny_al, tiny_world, tmp_path, space, message):
    path = tmp_path / "space.yaml"
    path.write_text(space)
    out = tmp_path / "search"
    args = ["tune", "pretrain", "--data", str(tiny_al), "--out", str(out), "--space", str(path),
            "--eval-data", str(tiny_world / "reid")] + [a for s in TINY for a in ("--set", s)]
    p = _run_cli_without_ray(args)
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cion-ray tune: error: ") and message in lines[0], p.stderr
    assert "NO_RAY" in p.stdout
    assert not out.exists()


def test_no_held_out_metric_and_the_shipped_space(tiny_al, tmp_path):
    """Without --validation or --eval-data there is nothing to search on (unless the space names
    a training metric); the shipped space file parses against the small profile."""
    from cion_ray.cli import build_parser
    from cion_ray.tune.pretrain_command import checked_args

    root = Path(__file__).resolve().parents[1]
    p = _run_cli_without_ray(["tune", "pretrain", "--data", str(tiny_al), "--out", str(tmp_path / "s")])
    assert p.returncode == 2 and "nothing held out to search on" in p.stderr and "NO_RAY" in p.stdout, p.stderr
    args = build_parser().parse_args(["tune", "pretrain", "--data", str(tiny_al), "--out", str(tmp_path / "s"),
                                      "--config", str(root / "configs" / "small.yaml"), "--validation", "0.25"])
    s = checked_args(args)
    assert s["spec"].metric == "val_mAP" and s["spec"].mode == "max" and s["grace_period"] == 1
    assert {"optim.lr", "optim.teacher_temp", "optim.student_temp", "optim.momentum_teacher",
            "optim.center_momentum", "optim.k_schedule", "views.local_crops", "model.out_dim"} == set(s["spec"].keys)


def test_concurrency_fits_the_worker_groups():
    from cion_ray.errors import CionError
    from cion_ray.tune.pretrain import concurrency

    small = load_config(PretrainConfig, None, ["scale.cpus_per_worker=1", "scale.workers=1"])
    assert concurrency(small, 0.0, {"CPU": 2.0}) == 2
    assert concurrency(small, 0.0, {"CPU": 2.0}, wanted=1) == 1
    two = load_config(PretrainConfig, None, ["scale.cpus_per_worker=2", "scale.workers=1"])
    assert concurrency(two, 0.0, {"CPU": 2.0}) == 1
    assert concurrency(small, 1.0, {"CPU": 16.0, "GPU": 4.0}) == 4  # one GPU per worker
    big = load_config(PretrainConfig, None, ["scale.cpus_per_worker=2", "scale.workers=2"])
    with pytest.raises(CionError, match="no trial could ever start"):
        concurrency(big, 0.0, {"CPU": 2.0})
