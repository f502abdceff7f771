"""`cion-ray finetune`: bad arguments give one line and exit 2; the data-efficiency protocol runs
in this process (--local), writes its table, plot, per-fraction runs and exports, and a re-run
with --resume reuses finished fractions."""
from __future__ import annotations

import json

import pytest
import torch

from cion_ray.cli import main

TINY = ["--arch", "test_resnet", "--size", "32,16", "--pk", "4,2", "--set", "scale.loader_workers=0", "--set", "threads=1",
        "--set", "eval.flip=false", "--set", "log_every=2"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("extra,message", [
    ([], "choose the initialisation"),
    (["--random-init", "--fractions", "0,0.5"], "--fractions"),
    (["--random-init", "--pk", "16"], "--pk"),
    (["--random-init", "--arch", "no_such_net"], "unknown backbone"),
    (["--random-init", "--compare", "elsewhere"], "needs --fractions"),
    (["--weights", "/nonexistent/w.pth"], "not found"),
    (["--random-init", "--set", "optim.nope=1"], "unknown key"),
])
def test_bad_arguments_exit_2_with_one_line(default_world, tmp_path, capsys, extra, message):
    argv = ["finetune", "--data", str(default_world / "reid"), "--out", str(tmp_path / "o"), "--local", *TINY, *extra]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_missing_data_and_missing_eval_split(default_world, tmp_path, capsys):
    code, _, err = run_cli(capsys, "finetune", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                           "--random-init", "--local", *TINY)
    assert code == 2 and "not found" in err
    # a folder of training images alone has nothing to evaluate on
    train = default_world / "reid" / "bounding_box_train"
    code, _, err = run_cli(capsys, "finetune", "--data", str(train), "--out", str(tmp_path / "o"), "--random-init",
                           "--local", *TINY)
    assert code == 2 and "--eval-data" in err and len(err.strip().splitlines()) == 1, err


def test_protocol_locally_then_resume_and_compare(default_world, tmp_path, capsys):
    reid = default_world / "reid"
    out = tmp_path / "proto"
    base = ["finetune", "--data", str(reid / "bounding_box_train"), "--eval-data", str(reid), "--random-init",
            "--local", "--steps", "4", "--fractions", "0.25,1", "--label", "tiny", *TINY]
    code, text, err = run_cli(capsys, *base, "--out", str(out))
    assert code == 0, err
    rows = (out / "protocol.csv").read_text().splitlines()
    assert rows[0].startswith("label,fraction,percent,identities") and len(rows) == 3
    assert (out / "protocol.png").read_bytes()[:4] == b"\x89PNG" and "| tiny | 0.2500 | 25 | 4 |" in text
    small, full = (json.loads((out / d / "result.json").read_text()) for d in ("fraction-25pc", "fraction-100pc"))
    assert small["metrics"]["identities"] == 4 and full["metrics"]["identities"] == 16
    assert small["metrics"]["step"] == full["metrics"]["step"] == 4
    # the initialisation is evaluated once and carried to every row
    assert full["metrics"]["eval_mAP_init"] == small["metrics"]["eval_mAP_init"]
    assert [m["step"] for m in json.loads((out / "fraction-100pc" / "metrics.json").read_text())] == [2, 4]
    state = torch.load(out / "fraction-100pc" / "export" / "model.pth", weights_only=True)
    assert state["num_classes"] == 16 and state["arch"] == "test_resnet"

    code, _, err = run_cli(capsys, *base, "--out", str(out))
    assert code == 2 and "--resume" in err
    code, text, err = run_cli(capsys, *base, "--out", str(out), "--resume")
    assert code == 0 and text.count("reused") == 2, text + err
    # the eval split is not in the fingerprint: finished runs are not reused for another one
    code, _, err = run_cli(capsys, *base, "--out", str(out), "--resume", "--eval-data", str(default_world))
    assert code == 2 and f"evaluated on {reid}, not {default_world}" in err, err

    code, _, err = run_cli(capsys, *base[:-2], "--label", "other", "--out", str(tmp_path / "p2"),
                           "--compare", str(out), "--set", "optim.lr=1e-3")
    assert code == 0, err
    assert "| other |" in (tmp_path / "p2" / "protocol.md").read_text()


def test_job_entry_point_runs_one_finetuning(default_world, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("job", Path(__file__).resolve().parents[1] / "jobs" / "finetune.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    argv = ["--data", str(default_world), "--random-init", "--local", "--steps", "2", *TINY]
    assert job.main(argv + ["--out", str(tmp_path / "one")]) == 0
    assert "fine-tuned: mAP" in capsys.readouterr().out
    result = json.loads((tmp_path / "one" / "result.json").read_text())
    assert result["metrics"]["step"] == 2 and "eval_mAP" in result["metrics"] and result["workers"] == 0
    assert job.main(argv + ["--out", str(tmp_path / "one")]) == 2  # the run is there: --resume or another --out
    assert "--resume" in capsys.readouterr().err
