"""The pipeline job (cion-ray run / jobs/pipeline.py): config checks before any Ray work, a whole
run on the tiny world, a re-run that skips every stage, a data-percentage study that reuses the
matching run, and an interrupted pre-training resumed by the next submission."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cion_ray.errors import CionError, ConfigError
from cion_ray.pipeline.command import main
from cion_ray.pipeline.config import load_pipeline

ROOT = Path(__file__).resolve().parents[1]
LAPTOP = ROOT / "configs" / "pipeline-laptop.yaml"


def settings(world: Path, out: Path, *extra: str) -> list[str]:
    """The laptop example on the tiny world, with a pre-training of a few iterations."""
    return [f"out={out}", f"videos={world / 'videos'}", f"track.detector.mot={world / 'mot'}",
            f"curate.gt={world}", "pretrain.eval_data=", f"evaluate.data={world / 'reid'}",
            "curate.link.min_images=2", "pretrain.optim.epochs=2", "pretrain.optim.iters_per_epoch=3",
            "pretrain.optim.warmup_epochs=1", "pretrain.optim.batch_per_worker=32",
            "pretrain.scale.cpus_per_worker=1", *extra]


@pytest.mark.parametrize("override, names", [
    ("window=3", "curate.link.window"),  # a key under the wrong section: the error says where it belongs
    ("curate.window=3", "link.window"),
    ("track.out=/tmp/x", "track.out"),  # paths between stages are the pipeline's
    ("curate.crops=/tmp/x", "curate.crops"),
    ("stages=[curate,track]", "stages"),
    ("stages=[track,pretrain]", "stages"),
    ("stages=[track,dedupe]", "dedupe"),
    ("evaluate.data=", "evaluate.data"),
    ("fractions=[0.5,1.5]", "fractions"),
    ("track.detector.kind=yolo", "track.detector.weights"),
    ("curate.pool.actors=0", "actors"),
    ("name=has space", "name"),
])
def test_a_malformed_config_fails_before_ray_naming_the_key(override, names, capsys, tmp_path):
    rc = main(["--config", str(LAPTOP), "--set", f"out={tmp_path}", "--set", override])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and names in err, err
    # nothing imported Ray, so nothing could have started it
    probe = subprocess.run([sys.executable, "-c", "import sys; from cion_ray.pipeline.command import main; "
                            f"main(['--config', {str(LAPTOP)!r}, '--set', 'out={tmp_path}', '--set', {override!r}]);"
                            " print('ray' in sys.modules)"], capture_output=True, text=True, cwd=ROOT)
    assert probe.stdout.strip() == "False", probe.stderr[-2000:]
    assert not any(tmp_path.iterdir())  # and nothing was written


def test_example_configs_resolve():
    for name in ("laptop", "gpu", "scaling"):
        cfg = load_pipeline(ROOT / "configs" / f"pipeline-{name}.yaml")
        assert cfg.stages == ["track", "curate", "pretrain", "evaluate"]
    assert load_pipeline(ROOT / "configs" / "pipeline-scaling.yaml").fractions == [0.25, 0.5, 1.0]
    assert load_pipeline(ROOT / "configs" / "pipeline-gpu.yaml").track.detector.kind == "yolo"


def test_overwrite_is_refused_for_keyed_stages(tmp_path):
    from cion_ray.pipeline.run import run_pipeline

    cfg = load_pipeline(LAPTOP, [f"out={tmp_path}"])
    with pytest.raises(CionError, match="--overwrite pretrain"):
        run_pipeline(cfg, overwrite=("pretrain",))


@pytest.fixture(scope="module")
def first_run(ray_session, tiny_world, tmp_path_factory):
    from cion_ray.pipeline.run import run_pipeline

    out = tmp_path_factory.mktemp("pipeline")
    lines: list[str] = []
    r = run_pipeline(load_pipeline(LAPTOP, settings(tiny_world, out)), log=lines.append)
    return out, r, lines


def test_a_run_writes_every_stage_under_one_prefix(first_run):
    out, r, lines = first_run
    assert [s.name for s in r.stages] == ["track", "curate", "pretrain", "evaluate"]
    assert all(s.state == "done" for s in r.stages), [(s.name, s.state) for s in r.stages]
    assert json.loads((out / "crops" / "_manifest.json").read_text())["units"]
    assert (out / "curated" / "cion_al.json").exists()
    pre = r.stages[2].outputs
    assert Path(pre["backbone.pth"]).exists() and Path(pre["run"]).parent == out / "pretrain"
    result = json.loads(Path(r.stages[3].outputs["result"]).read_text())
    assert 0 <= result["metrics"]["mAP"] <= 1 and result["model"]["arch"] == "resnet18"
    assert result["settings"]["size"] == [64, 32]  # evaluated at the size it was trained at
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "SUCCEEDED" and status["stage"] is None
    assert {k: v["state"] for k, v in status["stages"].items()} == dict.fromkeys(status["stages"], "done")
    resolved = load_pipeline(out / "pipeline.yaml")  # the resolved config, written beside the outputs, re-runs
    assert resolved.out == str(out) and resolved.pretrain.optim.iters_per_epoch == 3
    assert "== pretrain (3/4) ==" in lines


def test_a_rerun_skips_every_stage_without_starting_work(first_run, tiny_world):
    from cion_ray.pipeline.run import run_pipeline

    out, first, _ = first_run
    before = {p: p.stat().st_mtime_ns for p in (out / "crops").rglob("*.parquet")}
    r = run_pipeline(load_pipeline(LAPTOP, settings(tiny_world, out)), log=lambda m: None)
    assert [s.state for s in r.stages] == ["skipped"] * 4
    assert r.stages[3].metrics == first.stages[3].metrics
    assert {p: p.stat().st_mtime_ns for p in (out / "crops").rglob("*.parquet")} == before
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "SUCCEEDED" and {v["state"] for v in status["stages"].values()} == {"skipped"}


def test_other_settings_get_their_own_run_and_a_damaged_output_is_redone(first_run, tiny_world):
    from cion_ray.pipeline.run import run_pipeline

    out, first, _ = first_run
    # evaluation settings changed: the checkpoint is evaluated again, into another file
    r = run_pipeline(load_pipeline(LAPTOP, settings(tiny_world, out, "evaluate.features.flip=false")),
                     log=lambda m: None)
    assert [s.state for s in r.stages] == ["skipped", "skipped", "skipped", "done"]
    assert r.stages[3].outputs["result"] != first.stages[3].outputs["result"]
    assert Path(first.stages[3].outputs["result"]).exists()  # the earlier result is kept
    # a recorded output that no longer matches its record is not taken as done
    Path(first.stages[3].outputs["result"]).write_text("{}")
    r = run_pipeline(load_pipeline(LAPTOP, settings(tiny_world, out)), log=lambda m: None)
    assert r.stages[3].state == "done" and r.stages[3].metrics == first.stages[3].metrics


def test_a_study_reuses_the_matching_run_and_draws_the_curve(first_run, tiny_world):
    from cion_ray.pipeline.run import run_pipeline

    out, first, _ = first_run
    r = run_pipeline(load_pipeline(LAPTOP, settings(tiny_world, out, "fractions=[0.6,1.0]")), log=lambda m: None)
    pre = r.stages[2]
    assert pre.state == "done"
    assert [m["fraction"] for m in pre.metrics["per_fraction"]] == [0.6, 1.0]
    assert pre.metrics["runs"]["1"] == first.stages[2].outputs["backbone.pth"]  # all the data: the run before
    assert (out / "study.png").read_bytes()[:4] == b"\x89PNG"
    rows = (out / "study.csv").read_text().splitlines()
    assert rows[0] == "fraction,mAP,rank1,mINP" and [r.split(",")[0] for r in rows[1:]] == ["0.6", "1"]


def test_an_interrupted_pretraining_resumes_on_resubmission(ray_session, tiny_world, tmp_path, first_run):
    from cion_ray.pipeline.run import run_pipeline

    out, _, _ = first_run
    extra = ["pretrain.optim.epochs=3", "pretrain.scale.max_failures=0"]
    with pytest.raises(CionError, match="pre-training failed"):
        run_pipeline(load_pipeline(LAPTOP, settings(tiny_world, out, *extra, "pretrain.fault_drill_iteration=5")),
                     log=lambda m: None)
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "FAILED" and status["stages"]["pretrain"]["state"] == "failed"
    lines: list[str] = []
    r = run_pipeline(load_pipeline(LAPTOP, settings(tiny_world, out, *extra)), log=lines.append)
    assert any("resuming the interrupted pre-training run" in m for m in lines), lines
    assert r.stages[2].state == "done" and r.stages[2].metrics["epoch"] == 3
    history = json.loads((Path(r.stages[2].outputs["run"]) / "metrics.json").read_text())
    assert [m["epoch"] for m in history] == [1, 2, 3]  # epoch 1 was not trained again


def test_config_error_type_is_the_cli_contract():
    with pytest.raises(ConfigError):
        load_pipeline(LAPTOP, ["out=", "videos="])


def test_status_json_follows_the_running_stage_and_its_progress(tmp_path):
    from cion_ray import progress
    from cion_ray.pipeline.run import STATUS_FILE, Status, _listen, _unlisten

    cfg = load_pipeline(LAPTOP, [f"out={tmp_path}"])
    status = Status(str(tmp_path), "run-1", cfg, every=0)
    listener = _listen(status)
    try:
        status.start("curate")
        with progress.Progress("embedding", total=10, unit="crops", log=lambda m: None) as p:
            p.update(4)
            doc = json.loads((tmp_path / STATUS_FILE).read_text())
            assert doc["stage"] == "curate" and doc["stages"]["curate"]["state"] == "running"
            assert doc["stages"]["curate"]["progress"]["total"] == 10
            assert doc["stages"]["track"]["state"] == "pending"
    finally:
        _unlisten(listener)
    status.finish("FAILED", "curate: something broke")
    doc = json.loads((tmp_path / STATUS_FILE).read_text())
    assert doc["state"] == "FAILED" and doc["stages"]["curate"]["state"] == "failed" and "broke" in doc["error"]
