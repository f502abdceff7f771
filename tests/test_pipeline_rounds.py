"""Curation rounds in the pipeline (`rounds`): round 2 re-curates the crops with round 1's
pre-trained backbone as the embedder, pre-trains and evaluates again; rounds.csv holds each
round's quality; a re-run skips every stage of every round; a round-1 run trained again is a
new embedder for round 2. And `cion-ray curate --embedder cion:RUN`'s argument errors."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cion_ray.errors import CionError
from cion_ray.pipeline.command import main
from cion_ray.pipeline.config import load_pipeline
from test_pipeline import LAPTOP, settings


@pytest.mark.parametrize("overrides, names", [
    (["rounds=0"], "rounds must be >= 1"),
    (["rounds=2", "stages=[track]"], "stages must include curate and pretrain"),
    (["rounds=2", "stages=[pretrain,evaluate]", "pretrain.data=x"], "stages must include curate and pretrain"),
])
def test_rounds_are_checked_before_ray(overrides, names, capsys, tmp_path):
    rc = main(["--config", str(LAPTOP), "--set", f"out={tmp_path}", *[a for o in overrides for a in ("--set", o)]])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and names in err, err
    assert not any(tmp_path.iterdir())


def test_a_study_with_rounds_runs_in_the_last_round(capsys, tmp_path):
    assert main(["--config", str(LAPTOP), "--set", f"out={tmp_path}", "--set", "rounds=3",
                 "--set", "fractions=[0.5,1.0]", "--dry-run"]) == 0
    assert "rounds: 3" in capsys.readouterr().out


def test_a_round_row_without_ground_truth_or_evaluation_and_a_studys_last_round(tmp_path):
    from cion_ray.pipeline.rounds import csv_text, md_text, round_row, write_rounds

    plain = round_row(1, "handcrafted", "o/curated", {"identities": 5, "images": 40, "levels": {"L3": {}}}, None)
    study = round_row(2, "cion:o/pretrain/abc", "o/curated-r2", {"identities": 6, "images": 50},
                      {"per_fraction": [{"fraction": 1.0, "mAP": 0.5, "rank1": 0.6, "mINP": 0.1},
                                        {"fraction": 0.5, "mAP": 0.3, "rank1": 0.4, "mINP": 0.05}]})
    assert plain["L3_f1"] is None and plain["mAP"] is None and plain["fraction"] is None
    assert (study["mAP"], study["fraction"]) == (0.5, 1.0)  # the run on all the data stands for the round
    md = md_text([plain, study])
    assert "| 2 | cion:abc | 6 | 50 | - | - | - | - | - | 0.500 | 0.600 |" in md
    assert csv_text([plain, study]).splitlines()[1].startswith("1,handcrafted,o/curated,5,40,,")
    files = write_rounds(str(tmp_path), [plain, study], "t")
    assert Path(files["rounds.png"]).read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def two_rounds(ray_session, tiny_world, tmp_path_factory):
    from cion_ray.pipeline.run import run_pipeline

    out = tmp_path_factory.mktemp("rounds")
    lines: list[str] = []
    r = run_pipeline(load_pipeline(LAPTOP, settings(tiny_world, out, "rounds=2")), log=lines.append)
    return out, r, lines


def test_round_two_curates_with_round_ones_backbone(two_rounds):
    out, r, lines = two_rounds
    assert [(s.round, s.name) for s in r.stages] == [(1, "track"), (1, "curate"), (1, "pretrain"), (1, "evaluate"),
                                                     (2, "curate"), (2, "pretrain"), (2, "evaluate")]
    assert all(s.state == "done" for s in r.stages), [(s.round, s.name, s.state) for s in r.stages]
    run1 = r.stages[2].outputs["run"]
    m = json.loads((out / "curated-r2" / "_manifest.json").read_text())
    assert m["config"]["embed"]["embedder"] == f"cion:{run1}"
    assert m["config"]["crops"] == str(out / "crops")  # the same crops, tracked once
    assert json.loads((out / "curated" / "_manifest.json").read_text())["config"]["embed"]["embedder"] == "handcrafted"
    assert r.stages[5].outputs["run"] != run1  # pre-trained on round 2's curation: its own run
    assert Path(r.stages[6].outputs["result"]).exists()
    assert "== curate (round 2/2, 5/7) ==" in lines


def test_rounds_table_status_and_summary(two_rounds, tiny_world, capsys):
    out, r, _ = two_rounds
    rows = list(csv.DictReader((out / "rounds.csv").open()))
    assert [row["round"] for row in rows] == ["1", "2"]
    for row in rows:
        for key in ("tracker_f1", "L1_f1", "L2_f1", "L3_f1", "L3_nmi", "mAP", "rank1"):
            assert 0 <= float(row[key]) <= 1, (key, row)
        assert float(row["link_threshold"]) > 0  # what the round curated with (its embedder's scale)
    assert rows[1]["embedder"].startswith("cion:") and rows[0]["embedder"] == "handcrafted"
    assert (out / "rounds.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "rounds.md").read_text().startswith("| round | embedder |")
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "SUCCEEDED" and status["rounds"]["current"] is None
    assert [d["round"] for d in status["rounds"]["done"]] == [1, 2]
    assert status["rounds"]["done"][1]["mAP"] == pytest.approx(float(rows[1]["mAP"]), abs=1e-4)
    assert set(status["stages"]) == {"track", "curate", "pretrain", "evaluate", "curate-r2", "pretrain-r2",
                                     "evaluate-r2"}
    # the CLI's summary: a re-run (every stage skipped) prints the per-round table
    assert main(["--config", str(LAPTOP), *[a for s in settings(tiny_world, out, "rounds=2")
                                            for a in ("--set", s)]]) == 0
    printed = capsys.readouterr().out
    assert "0 stage(s) ran, 7 skipped" in printed and "r2 curate" in printed
    assert "| round | embedder |" in printed and "rounds.csv" in printed


def test_a_rerun_skips_every_stage_of_every_round(two_rounds, tiny_world):
    from cion_ray.pipeline.run import run_pipeline

    out, first, _ = two_rounds
    r = run_pipeline(load_pipeline(LAPTOP, settings(tiny_world, out, "rounds=2")), log=lambda m: None)
    assert [s.state for s in r.stages] == ["skipped"] * 7
    assert r.rounds["rows"] == first.rounds["rows"]


def test_round_one_trained_again_is_another_embedder_for_round_two(two_rounds, tiny_world):
    import torch

    from cion_ray.pipeline.config import round_configs
    from cion_ray.pipeline.run import run_pipeline
    from cion_ray.runtime.curate import EMBED_STAGE, run_curate
    from cion_ray.io import runs
    from cion_ray.zoo.checkpoints import find_checkpoint_file

    out, first, _ = two_rounds
    run1 = first.stages[2].outputs["run"]
    emb = out / "curated-r2" / "embeddings"
    before = runs.load_manifest(str(emb), EMBED_STAGE)
    ckpt = find_checkpoint_file(run1)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["trained_again"] = 1  # other bytes, the same loadable backbone
    torch.save(state, ckpt)
    cfg = load_pipeline(LAPTOP, settings(tiny_world, out, "rounds=2"))
    # the curate stage itself refuses the folder its old embeddings are in
    with pytest.raises(CionError, match="different configuration"):
        run_curate(round_configs(cfg, 2, run1)["curate"], log=lambda m: None)
    # the pipeline curates round 2 again with the backbone as it is now
    lines: list[str] = []
    r = run_pipeline(cfg, log=lines.append)
    assert [s.state for s in r.stages[:4]] == ["skipped"] * 4 and r.stages[4].state == "done"
    assert any("curated with another backbone of round 1" in m for m in lines), lines
    after = runs.load_manifest(str(emb), EMBED_STAGE)
    assert after["fingerprint"] != before["fingerprint"]
    assert {u["run"] for u in after["units"].values()}.isdisjoint({u["run"] for u in before["units"].values()})


def test_curate_cli_refuses_a_missing_run_and_weights_with_a_run(tmp_path, capsys):
    from cion_ray.cli import main as cli

    missing = str(tmp_path / "missing" / "run")
    assert cli(["curate", "--crops", str(tmp_path), "--out", str(tmp_path / "out"), "--embedder",
                f"cion:{missing}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and missing in err and err.startswith("cion-ray curate: error: "), err
    assert cli(["curate", "--crops", str(tmp_path), "--out", str(tmp_path / "out2"), "--embedder",
                f"cion:{missing}", "--weights", "w.pth"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "embed.weights" in err, err
    assert not (tmp_path / "out2").exists()
