"""Nothing stale, nothing lost: tracking and curation outputs under re-runs, changed inputs, failed
runs and damaged files (issue: integrity defects). Each test here failed before its fix."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import pyarrow.parquet as pq
import pytest

from cion_ray.curation.config import CurateConfig
from cion_ray.errors import CionError
from cion_ray.io import runs
from cion_ray.runtime import curate as curate_rt
from cion_ray.runtime.curate import identities_files, run_curate
from cion_ray.runtime.track import run_track
from cion_ray.tracking.config import DetectorConfig, PoolConfig as TrackPool, TrackConfig

pytestmark = pytest.mark.usefixtures("ray_session")
QUIET = dict(log=lambda m: None)


def _track(world, out, videos=None, overwrite=False):
    return run_track(TrackConfig(videos=str(videos or world / "videos"), out=str(out),
                                 detector=DetectorConfig(kind="mot-det", mot=str(world / "mot")),
                                 pool=TrackPool(actors=2)), overwrite=overwrite, **QUIET)


def _curate(crops, out, gt="", **kw):
    return run_curate(CurateConfig(crops=str(crops), out=str(out), gt=str(gt)), **kw, **QUIET)


def _identities(out):
    return pq.ParquetDataset(identities_files(str(out))).read().sort_by("crop_id")


CACHES = ("embeddings", "videos", "relations", "calibration")


def _tree(root, caches: bool = True) -> dict[str, str]:
    """{relative path: sha256} of every file under root (links followed); without `caches`, only
    the committed output (a dead run may leave valid, content-keyed cache entries behind)."""
    out = {}
    for d, _, names in os.walk(root, followlinks=True):
        for n in names:
            p = os.path.join(d, n)
            rel = os.path.relpath(p, root)
            if caches or rel.split(os.sep)[0] not in CACHES:
                out[rel] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def other_world(tmp_path_factory):
    """A second tiny world: other seed, the same video ids as `tiny_world`."""
    from cion_ray.synth import generate_world, preset

    out = tmp_path_factory.mktemp("other_world")
    generate_world(preset("tiny", seed=1), out, workers=1, log=lambda m: None)
    return out


def test_retracked_world_recurated_in_place_equals_a_fresh_curation(tiny_world, other_world, tmp_path):
    crops, out = tmp_path / "crops", tmp_path / "cur"
    _track(tiny_world, crops)
    _curate(crops, out, gt=tiny_world)
    report_before = (crops / "report.txt").read_bytes()
    # the same ids, other videos: refused before any work, the report left as it was
    with pytest.raises(CionError, match="not the videos of the same names tracked there"):
        _track(other_world, crops)
    assert (crops / "report.txt").read_bytes() == report_before
    _track(other_world, crops, overwrite=True)
    again = _curate(crops, out, gt=other_world)
    assert sorted(again.videos_embedded) == sorted(again.videos_denoised) == sorted(json.loads(
        (crops / "_manifest.json").read_text())["units"])  # every cache was stale: all recomputed
    fresh = _curate(crops, tmp_path / "fresh", gt=other_world)
    assert _identities(out).equals(_identities(tmp_path / "fresh"))
    assert again.identities == fresh.identities and again.report["levels"] == fresh.report["levels"]
    # the exports and the report describe the new run, and every listed image exists
    entries = json.loads((out / "cion_al.json").read_text())
    assert len(entries) == fresh.samples and all((out / e["file_path"]).is_file() for e in entries)
    assert json.loads((out / "report.json").read_text())["counts"] == fresh.report["counts"]
    assert len(list((out / "market" / "bounding_box_train").glob("*.jpg"))) == fresh.samples
    assert len(os.listdir(out / "exports")) == 1  # the superseded export is gone


def test_rerun_over_the_same_inputs_changes_no_committed_byte(tiny_world, tmp_path):
    crops, out = tmp_path / "crops", tmp_path / "cur"
    _track(tiny_world, crops)
    _curate(crops, out, gt=tiny_world)
    before_crops, before_cur = _tree(crops), _tree(out)
    r = _track(tiny_world, crops)
    assert r.videos_done == [] and len(r.videos_skipped_finished) == 4
    again = _curate(crops, out, gt=tiny_world)
    assert again.videos_embedded == [] and again.current
    assert _tree(crops) == before_crops and _tree(out) == before_cur


def test_a_failed_recurate_keeps_the_committed_exports(tiny_world, other_world, tmp_path, monkeypatch):
    crops_a, crops_b, out = tmp_path / "a", tmp_path / "b", tmp_path / "cur"
    _track(tiny_world, crops_a)
    _track(other_world, crops_b)
    first = _curate(crops_a, out)
    committed = _tree(out, caches=False)

    def dies(*a, **k):
        raise RuntimeError("killed while drawing the contact sheet")
    monkeypatch.setattr(curate_rt, "_sheet", dies)
    with pytest.raises(RuntimeError, match="killed"):
        _curate(crops_b, out)
    assert _tree(out, caches=False) == committed  # nothing committed moved, the dead run's files are gone
    entries = json.loads((out / "cion_al.json").read_text())
    assert len(entries) == first.samples and all((out / e["file_path"]).is_file() for e in entries)
    assert _identities(out).num_rows == first.samples
    monkeypatch.undo()
    second = _curate(crops_b, out)
    assert _identities(out).num_rows == second.samples
    entries = json.loads((out / "cion_al.json").read_text())
    assert all((out / e["file_path"]).is_file() for e in entries)
    assert len(os.listdir(out / "exports")) == 1 and len(os.listdir(out / "identities")) == 1


def test_videos_without_crops_are_curated_as_empty(tiny_world, tmp_path):
    mot = tmp_path / "mot"
    shutil.copytree(tiny_world / "mot", mot)
    (mot / "v0001" / "det.txt").write_text("")  # a camera where nobody walked by
    world = tmp_path / "w"
    world.mkdir()
    (world / "mot").symlink_to(mot)
    (world / "videos").symlink_to(tiny_world / "videos")
    _track(world, tmp_path / "crops")
    units = json.loads((tmp_path / "crops" / "_manifest.json").read_text())["units"]
    assert units["v0001"]["crops"] == 0 and len(units) == 4
    r = _curate(tmp_path / "crops", tmp_path / "cur")
    assert r.identities > 0 and r.report["videos"] == 4
    # nobody anywhere: an empty curation, said plainly, not a crash
    for v in ("v0000", "v0002", "v0003"):
        (mot / v / "det.txt").write_text("")
    _track(world, tmp_path / "crops0")
    empty = _curate(tmp_path / "crops0", tmp_path / "cur0")
    assert empty.identities == 0 and empty.samples == 0
    assert "no crops in any video" in " ".join(empty.report["notes"])
    assert not (tmp_path / "cur0" / "cion_al.json").exists() or json.loads(
        (tmp_path / "cur0" / "cion_al.json").read_text()) == []


def test_tracking_where_every_video_is_skipped_commits_nothing_and_says_so(tmp_path, tiny_world):
    vids = tmp_path / "videos"
    vids.mkdir()
    (vids / "v0000.mp4").write_bytes(b"not a video")
    (vids / "v0001.mp4").write_bytes(b"")
    with pytest.raises(CionError, match="no video could be tracked .2 skipped"):
        _track(tiny_world, tmp_path / "crops", videos=vids)
    assert not (tmp_path / "crops" / "_manifest.json").exists()
    assert "v0000" in (tmp_path / "crops" / "report.txt").read_text()


def test_commit_is_decided_by_the_rows_written_not_by_actor_messages(tiny_world, tmp_path):
    from cion_ray.runtime.track import _written_units
    from cion_ray.tracking.manifest import Chunk

    _track(tiny_world, tmp_path / "crops")
    m = json.loads((tmp_path / "crops" / "_manifest.json").read_text())
    files = runs.committed_files(str(tmp_path / "crops"), "track")
    chunks = [Chunk(video_id=v, uri="", fps=10.0, frames=60, width=1, height=1, chunk=0, n_chunks=1, start=0, own_start=0,
                    stop=60, step=1) for v in m["units"]]
    # every "done" message lost: the videos with rows are committed all the same, with the same counts
    units = _written_units(TrackConfig(), chunks, files, [], {}, {}, "r")
    assert {v: u["crops"] for v, u in units.items()} == {v: u["crops"] for v, u in m["units"].items() if u["crops"]}
    # a chunk written twice stops the commit instead of committing duplicate crops
    with pytest.raises(CionError, match="wrote crop .* twice"):
        _written_units(TrackConfig(), chunks, files + files[:1], [], {}, {}, "r")


def test_a_damaged_output_is_refused_by_its_readers(tiny_world, tmp_path):
    crops = tmp_path / "crops"
    _track(tiny_world, crops)
    _curate(crops, tmp_path / "cur")
    (f,) = json.loads((tmp_path / "cur" / "_manifest.json").read_text())["identities"]["files"]
    with open(tmp_path / "cur" / f, "ab") as fh:
        fh.write(b"junk")
    with pytest.raises(CionError, match="damaged.*changed since they were committed"):
        identities_files(str(tmp_path / "cur"))
    from cion_ray.pretrain.data import load_labels
    with pytest.raises(CionError, match="damaged"):  # pre-training reads the same check
        load_labels(str(tmp_path / "cur"))
    first = runs.committed_files(str(crops), "track")[0]
    os.remove(first)
    with pytest.raises(CionError, match=r"committed track output is damaged: 1 of its \d+ files are missing"):
        _curate(crops, tmp_path / "cur2")


def test_a_lost_ledger_costs_the_report_not_the_run():
    import ray

    from cion_ray.runtime.session import RunLedger
    from cion_ray.runtime.track import LEDGER_LOST, TrackResult, _events

    ledger = RunLedger.remote()
    ledger.record.remote({"video_id": "v", "chunk": 0, "done": True})
    result = TrackResult(out="", run_id="r")
    assert _events(ledger, result, lambda m: None)[0]["video_id"] == "v"
    ray.kill(ledger)
    with pytest.raises(ray.exceptions.RayActorError):  # the kill is asynchronous: wait for the death
        for _ in range(600):
            ray.get(ledger.events.remote())
    assert _events(ledger, result, lambda m: None) == [] and _events(ledger, result, lambda m: None) == []
    assert result.warnings == [LEDGER_LOST]


def test_a_failed_overwrite_keeps_the_committed_crops(tiny_world, other_world, tmp_path, monkeypatch):
    import cion_ray.runtime.track as track_rt

    crops = tmp_path / "crops"
    _track(tiny_world, crops)
    committed = _tree(crops)

    def dies(*a, **k):
        raise RuntimeError("killed before the commit")
    monkeypatch.setattr(track_rt.runs, "commit", dies)
    with pytest.raises(RuntimeError, match="killed"):
        _track(other_world, crops, overwrite=True)
    monkeypatch.undo()
    after = {k: v for k, v in _tree(crops).items() if not k.startswith("crops")}
    assert after == {k: v for k, v in committed.items() if not k.startswith("crops")}
    assert all(_tree(crops).get(k) == v for k, v in committed.items())  # every committed file still there
    files = runs.committed_files(str(crops), "track")  # and readable as committed
    assert sum(pq.read_metadata(f).num_rows for f in files) == sum(
        u["crops"] for u in json.loads((crops / "_manifest.json").read_text())["units"].values())
    _track(other_world, crops, overwrite=True)  # the overwrite that commits removes the old run's files
    assert len(os.listdir(crops / "crops")) == 1


def test_an_output_given_as_a_relative_path_commits_and_reads_back(tmp_path, monkeypatch):
    import pyarrow as pa

    monkeypatch.chdir(tmp_path)
    (tmp_path / "out" / "crops" / "run-1").mkdir(parents=True)
    pq.write_table(pa.table({"x": [1, 2, 3]}), tmp_path / "out" / "crops" / "run-1" / "part.parquet")
    m = runs.commit("out", runs.empty_manifest("track", "f", {}), {"run_id": "run-1",
                    "files": ["crops/run-1/part.parquet"]}, {})
    assert m["runs"][0]["records"][0]["path"] == "crops/run-1/part.parquet"
    assert m["runs"][0]["records"][0]["rows"] == 3
    assert runs.committed_files("out", "track") == [os.path.join("out", "crops", "run-1", "part.parquet")]
