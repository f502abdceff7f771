"""The data-percentage scaling study (`cion-ray scale`, cion_ray.scaling): argument errors in one
line before Ray starts, a tiny two-fraction study run as two parallel Ray Train runs (one CPU each
on the 2-CPU Ray) that writes the table and the plot, nested identities, a re-run that skips the
complete runs, a run of other settings started afresh; the table shared with `cion-ray run`."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
TINY = """\
model: {arch: test_resnet, out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, head_bn: true}
views: {global_size: [32, 16], local_size: [16, 8], local_crops: 1}
optim: {epochs: 1, iters_per_epoch: 2, batch_per_worker: 8, k_schedule: "0:4", warmup_epochs: 0,
        centering: sinkhorn, teacher_temp: 0.02, warmup_teacher_temp: 0.02, momentum_teacher: 0.95}
scale: {workers: 1, cpus_per_worker: 1, loader_workers: 0}
"""


def scale_args(curated, world, out, profile, *extra) -> list[str]:
    return ["scale", "--data", str(curated), "--eval-data", str(Path(world) / "reid"), "--out", str(out),
            "--config", str(profile), *extra]


def run_scale_cli(argv: list[str]) -> list[str]:
    """The command as `cion-ray scale` runs it, its printed lines collected."""
    from cion_ray.cli import build_parser
    from cion_ray.scaling import command

    lines: list[str] = []
    assert command.run(build_parser().parse_args(argv), log=lines.append) == 0
    return lines


@pytest.mark.parametrize("extra, expect", [
    (["--fractions", "0.25,1.5"], "(0, 1]"),
    (["--fractions", "0"], "(0, 1]"),
    (["--fractions", "0.5,0.5"], "0.5 is given twice"),
    (["--fractions", "a,b"], "expected numbers"),
    (["--arch", "resnet18,no_such_net"], "no_such_net"),
    (["--arch", "resnet18,resnet18"], "resnet18 is given twice"),
    (["--max-parallel", "-1"], "--max-parallel"),
])
def test_bad_arguments_fail_in_one_line(extra, expect, tmp_path, capsys):
    from cion_ray.cli import main

    profile = tmp_path / "tiny.yaml"
    profile.write_text(TINY)
    assert main(scale_args(tmp_path, tmp_path, tmp_path / "study", profile, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cion-ray scale: error: ") and expect in err[0], err
    assert not (tmp_path / "study").exists()


def test_missing_inputs_fail_before_ray_starts(default_world, tmp_path):
    """Missing data or held-out split: one line, exit 2, and Ray was never imported."""
    profile = tmp_path / "tiny.yaml"
    profile.write_text(TINY)
    cases = [(scale_args(tmp_path / "none", default_world, tmp_path / "s", profile), "--data"),
             (scale_args(tmp_path, tmp_path / "none", tmp_path / "s", profile), "--eval-data")]
    for argv, expect in cases:
        code = ("import sys; from cion_ray.cli import main; rc = main(%r); "
                "print(rc, 'ray' in sys.modules)" % (argv,))
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
        assert r.stdout.split() == ["2", "False"], r.stdout + r.stderr[-2000:]
        err = r.stderr.strip().splitlines()
        assert len(err) == 1 and expect in err[0], err
    assert not (tmp_path / "s").exists()


def test_a_fraction_too_small_for_the_batch_fails_before_ray(default_curated, default_world, tmp_path, capsys):
    from cion_ray.cli import main

    profile = tmp_path / "tiny.yaml"
    profile.write_text(TINY)
    argv = scale_args(default_curated, default_world, tmp_path / "s", profile, "--fractions", "0.01,1",
                      "--set", "optim.batch_per_worker=64")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fraction 0.01" in err[0] and "too few" in err[0], err
    assert not (tmp_path / "s").exists()


@pytest.fixture(scope="module")
def study(ray_session, default_curated, default_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    profile = root / "tiny.yaml"
    profile.write_text(TINY)
    out = root / "study"
    argv = scale_args(default_curated, default_world, out, profile, "--fractions", "0.25,1")
    return argv, out, run_scale_cli(argv)


def test_two_fractions_run_in_parallel_and_write_the_table_and_plot(study):
    argv, out, lines = study
    assert any("2 run(s) to do of 2, 2 at a time" in m for m in lines), lines  # the parallel path
    assert sum(m.startswith("started test_resnet") for m in lines) == 2
    assert (out / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "scale.csv").open()))
    assert list(rows[0]) == ["arch", "fraction", "identities", "images", "mAP", "rank1", "mINP"]
    assert [(r["arch"], r["fraction"]) for r in rows] == [("test_resnet", "0.25"), ("test_resnet", "1")]
    assert all(0 < float(r["mAP"]) <= 1 and 0 <= float(r["rank1"]) <= 1 for r in rows)
    md = (out / "scale.md").read_text()
    assert md.startswith("| backbone | data | identities | images | mAP | rank-1 | mINP |") and "| 25% |" in md
    assert md.strip() in "\n".join(lines)  # the summary table is printed
    for f in ("0.25", "1"):
        run = out / "runs" / "test_resnet" / f"f{f}"
        assert (run / "export" / "backbone.pth").exists() and (run / "evaluation.json").exists()
        assert "pre-training test_resnet" in (run / "log.txt").read_text()  # each run's own log


def test_fractions_are_nested_and_counted(study, default_curated):
    import numpy as np

    from cion_ray.pretrain.data import load_labels

    _, out, _ = study
    small, full = (json.loads((out / "runs" / "test_resnet" / f / "identities.json").read_text())
                   for f in ("f0.25", "f1"))
    assert set(small["identities"]) < set(full["identities"])
    table = load_labels(str(default_curated))
    assert full["count"] == len(np.unique(table.identity)) and full["images"] == len(table.keys)
    assert small["count"] == len(small["identities"]) < full["count"]
    assert small["images"] == int(np.isin(table.identity, small["identities"]).sum())
    rows = list(csv.DictReader((out / "scale.csv").open()))
    assert [int(r["identities"]) for r in rows] == [small["count"], full["count"]]
    assert [int(r["images"]) for r in rows] == [small["images"], full["images"]]
    # the pre-training itself trained on those identities
    record = json.loads((out / "runs" / "test_resnet" / "f0.25" / "scale_run.json").read_text())
    assert record["pretrain"]["identities"] == small["count"]


def test_a_rerun_skips_the_complete_runs(study):
    argv, out, first = study
    exports = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("backbone.pth")}
    before = (out / "scale.csv").read_text()
    lines = run_scale_cli(argv)
    assert sum("(skipped)" in m for m in lines) == 2, lines
    assert not any("run(s) to do" in m for m in lines)
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("backbone.pth")} == exports
    assert (out / "scale.csv").read_text() == before


def test_a_run_of_other_settings_is_started_afresh(study):
    """Another seed changes every run's key: the runs there are replaced, not resumed or reused."""
    argv, out, _ = study
    lines = run_scale_cli(argv[:-2] + ["--fractions", "1", "--seed", "1"])
    assert any("a run of other data or settings: starting afresh" in m for m in lines), lines
    record = json.loads((out / "runs" / "test_resnet" / "f1" / "scale_run.json").read_text())
    assert record["seed"] == 1 and record["pretrain"]["epoch"] == 1


@pytest.mark.slow
def test_an_interrupted_run_resumes_and_finetune_adds_columns(ray_session, default_curated, default_world, tmp_path):
    """A pre-training killed after its first checkpoint resumes on the next call (epoch 1 is not
    trained again); --finetune adds the fine-tuned columns without pre-training again."""
    from cion_ray.cli import build_parser
    from cion_ray.errors import CionError
    from cion_ray.scaling import command

    profile = tmp_path / "tiny.yaml"
    profile.write_text(TINY)
    base = scale_args(default_curated, default_world, tmp_path / "s", profile, "--fractions", "1",
                      "--set", "optim.epochs=2", "--set", "scale.max_failures=0")
    with pytest.raises(CionError, match="1 of 1 runs failed"):
        command.run(build_parser().parse_args(base + ["--set", "fault_drill_iteration=3"]), log=lambda m: None)
    lines = run_scale_cli(base)
    assert any("resuming the interrupted pre-training" in m for m in lines), lines
    run = tmp_path / "s" / "runs" / "test_resnet" / "f1"
    assert [m["epoch"] for m in json.loads((run / "metrics.json").read_text())] == [1, 2]
    lines = run_scale_cli(base + ["--finetune", "--finetune-steps", "4"])
    assert not any("pre-training test_resnet" in m for m in lines)
    rows = list(csv.DictReader((tmp_path / "s" / "scale.csv").open()))
    assert 0 < float(rows[0]["ft_mAP"]) <= 1 and "fine-tuned mAP" in (tmp_path / "s" / "scale.md").read_text()


def test_the_table_is_the_pipelines_too(tmp_path):
    """Rows without backbone or counts (cion-ray run's study) keep its columns; several backbones
    are ordered backbone by backbone, smallest fraction first."""
    from cion_ray.scaling.report import table_csv, table_markdown, write_study

    plain = [{"fraction": 1.0, "mAP": 0.5, "rank1": 0.6, "mINP": 0.2},
             {"fraction": 0.25, "mAP": 0.4, "rank1": 0.5, "mINP": 0.1}]
    assert table_csv(plain).splitlines() == ["fraction,mAP,rank1,mINP", "0.25,0.4000,0.5000,0.1000",
                                             "1,0.5000,0.6000,0.2000"]
    assert table_markdown(plain).splitlines()[:3] == ["| data | mAP | rank-1 | mINP |", "|---:|---:|---:|---:|",
                                                      "| 25% | 0.400 | 0.500 | 0.100 |"]
    two = [{"arch": a, "fraction": f, "identities": 10, "images": 90, "mAP": 0.3, "rank1": 0.4, "mINP": 0.1,
            "ft_mAP": None, "ft_rank1": None, "ft_mINP": None} for a in ("b", "a") for f in (1.0, 0.5)]
    assert [(r.split(",")[0], r.split(",")[1]) for r in table_csv(two).splitlines()[1:]] == \
        [("b", "0.5"), ("b", "1"), ("a", "0.5"), ("a", "1")]
    files = write_study(str(tmp_path), two, "scale", "t")
    assert (tmp_path / "scale.png").read_bytes()[:4] == b"\x89PNG" and set(files) == {"scale.csv", "scale.md",
                                                                                       "scale.png"}


def test_the_command_module_imports_neither_ray_nor_torch():
    code = "import sys, cion_ray.scaling.command; print(any(m in sys.modules for m in ('ray', 'torch')))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.strip() == "False", r.stderr[-2000:]
