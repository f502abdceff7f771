"""The curation stage through Ray: the whole track -> curate path on the default world,
re-runs, incremental curation, the timm embedder and bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cion_ray.curation.config import CalibrateConfig, CurateConfig, EmbedConfig, ExportConfig, LinkConfig, PoolConfig
from cion_ray.errors import CionError
from cion_ray.io import runs
from cion_ray.io.market import parse_market_name
from cion_ray.io.schemas import IDENTITIES
from cion_ray.runtime.curate import identities_files, run_curate
from cion_ray.runtime.track import run_track
from cion_ray.tracking.config import DetectorConfig, PoolConfig as TrackPool, TrackConfig

pytestmark = pytest.mark.usefixtures("ray_session")
QUIET = dict(log=lambda m: None)


def _track(videos, mot, out):
    return run_track(TrackConfig(videos=str(videos), out=str(out), detector=DetectorConfig(kind="mot-det", mot=str(mot)),
                                 pool=TrackPool(actors=2)), **QUIET)


def _partition(out) -> set[frozenset]:
    groups: dict[int, set] = {}
    for f in identities_files(str(out)):
        t = pq.read_table(f)
        for c, i in zip(t.column("crop_id").to_pylist(), t.column("identity").to_pylist()):
            groups.setdefault(i, set()).add(c)
    return {frozenset(g) for g in groups.values()}


@pytest.fixture(scope="module")
def curated(default_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("curated")
    _track(default_world / "videos", default_world / "mot", root / "crops")
    result = run_curate(CurateConfig(crops=str(root / "crops"), out=str(root / "out"), gt=str(default_world),
                                     pool=PoolConfig(actors=2)), **QUIET)
    return root, result


def test_track_then_curate_reaches_f1_on_default_world(curated):
    root, r = curated
    lv = r.report["levels"]
    for name in ("tracker", "L1", "L2", "L3"):
        assert {"precision", "recall", "f1", "nmi", "samples", "identities"} <= set(lv[name])
    assert lv["L3"]["f1"] >= 0.9, lv
    assert lv["L3"]["f1"] > lv["tracker"]["f1"] and lv["L3"]["f1"] > lv["L2"]["f1"]
    c = r.report["counts"]
    assert c["links"] > 0 and c["identities_out"] == r.identities and c["samples_out"] == r.samples
    assert c["global_links"] > 0 and len(list((root / "out" / "relations").glob("global-*.npy"))) == 1
    text = (root / "out" / "report.txt").read_text()
    assert "L3" in text and "tracklet merges" in text and "found by the global pass" in text
    # the global pass reaches link.global_scale x the (calibrated) link threshold, and the report says how far
    limit = 2 * r.report["calibration"]["thresholds"]["threshold"]
    assert c["global_limit"] == pytest.approx(limit) and f"closer than {limit:.3f})" in text


def test_outputs_identities_json_market_and_sheet(curated):
    root, r = curated
    out = root / "out"
    files = identities_files(str(out))
    t = pq.ParquetDataset(files).read()
    assert t.schema.equals(IDENTITIES, check_metadata=False)
    assert t.num_rows == r.samples and len(set(t.column("identity").to_pylist())) == r.identities
    assert len(set(t.column("crop_id").to_pylist())) == t.num_rows
    entries = json.loads((out / "cion_al.json").read_text())
    assert len(entries) == r.samples and {"file_path", "id"} == set(entries[0])
    assert all((out / e["file_path"]).is_file() for e in entries[:: max(1, len(entries) // 50)])
    market = sorted((out / "market" / "bounding_box_train").glob("*.jpg"))
    parsed = [parse_market_name(p.name) for p in market]
    assert len(market) == r.samples and all(parsed)
    assert len({p.pid for p in parsed}) == r.identities
    assert (out / "sheet.png").stat().st_size > 10_000
    # the thresholds came from the world's own distances, and the report says which and from what
    cal = json.loads((out / "report.json").read_text())["calibration"]
    assert cal["applied"] and cal["counts"]["diff_centroid"] >= 30 and 0.5 < cal["stats"]["s"] < 2
    assert r.report["calibration"] == cal
    text = (out / "report.txt").read_text()
    assert "thresholds calibrated: radius" in text and "calibration.png" in text
    assert "samples all keep" in text and "common" in r.report["levels"]["L3"]
    assert (out / "calibration.png").stat().st_size > 10_000


def test_rerun_reuses_every_step(curated, default_world):
    root, first = curated
    before = _partition(root / "out")
    cfg = CurateConfig(crops=str(root / "crops"), out=str(root / "out"), gt=str(default_world),
                       pool=PoolConfig(actors=2))
    again = run_curate(cfg, **QUIET)  # nothing changed: the committed output is the answer
    assert again.current and again.videos_embedded == [] and again.report == first.report
    # another export choice re-runs the last step only, on every cache
    bare = run_curate(CurateConfig(**{**cfg.__dict__, "export_market": False}), **QUIET)
    assert bare.videos_embedded == [] and bare.videos_denoised == []
    assert bare.ranges_computed == 0 and bare.ranges_reused == first.ranges_computed
    assert _partition(root / "out") == before and bare.report["levels"] == first.report["levels"]
    assert not (root / "out" / "cion_al.json").exists() and not (root / "out" / "market").exists()
    assert bare.exports == []
    back = run_curate(cfg, **QUIET)
    assert back.ranges_computed == 0 and (root / "out" / "market" / "bounding_box_train").is_dir()
    assert back.exports == [str(root / "out" / "cion_al.json"), str(root / "out" / "market" / "bounding_box_train")]


def test_incremental_curation_equals_from_scratch(tiny_world, tmp_path):
    vids = tmp_path / "videos"
    vids.mkdir()
    link = LinkConfig(window=2, stride=1, min_images=4)
    fixed = CalibrateConfig(enabled=False)  # thresholds that do not move when videos are added

    def curate(out: str, calibrate: CalibrateConfig):
        return run_curate(CurateConfig(crops=str(tmp_path / "crops"), out=str(tmp_path / out), link=link,
                                       calibrate=calibrate), **QUIET)

    for v in ("v0000", "v0001", "v0002"):
        shutil.copy(tiny_world / "videos" / f"{v}.mp4", vids)
    _track(vids, tiny_world / "mot", tmp_path / "crops")
    first = curate("inc", fixed)
    cal_first = curate("inc-cal", CalibrateConfig())
    shutil.copy(tiny_world / "videos" / "v0003.mp4", vids)  # a new upload
    _track(vids, tiny_world / "mot", tmp_path / "crops")
    inc = curate("inc", fixed)
    assert inc.videos_embedded == ["v0003"] and inc.videos_denoised == ["v0003"]
    assert inc.ranges_reused == first.ranges_computed == 2 and inc.ranges_computed == 1
    scratch = curate("scratch", fixed)
    assert scratch.ranges_computed == 3
    assert _partition(tmp_path / "inc") == _partition(tmp_path / "scratch")
    assert _identities(tmp_path / "inc").equals(_identities(tmp_path / "scratch"))  # ids too: numbered canonically
    # above link.global_max identities the global pass is skipped, and the report says so
    capped = run_curate(CurateConfig(crops=str(tmp_path / "crops"), out=str(tmp_path / "capped"),
                                     link=LinkConfig(window=2, stride=1, min_images=4, global_max=2),
                                     calibrate=fixed), **QUIET)
    assert capped.report["counts"]["global_links"] == 0 and "global_limit" not in capped.report["counts"]
    assert any("global linking pass was skipped" in n for n in capped.report["notes"])
    assert not any("global" in n for n in scratch.report["notes"])
    # calibrated, the new video's distances may move the thresholds (then every video is denoised
    # again); only the new video is embedded, and the result is the fresh curation's
    cal_inc = curate("inc-cal", CalibrateConfig())
    assert cal_inc.videos_embedded == ["v0003"] and "v0003" in cal_inc.videos_denoised
    if cal_inc.report["calibration"]["thresholds"] == cal_first.report["calibration"]["thresholds"]:
        assert cal_inc.videos_denoised == ["v0003"]
    cal_scratch = curate("scratch-cal", CalibrateConfig())
    assert cal_inc.report["calibration"] == cal_scratch.report["calibration"]
    assert _identities(tmp_path / "inc-cal").equals(_identities(tmp_path / "scratch-cal"))


def _identities(out: Path):
    return pq.ParquetDataset(identities_files(str(out))).read().sort_by("crop_id")


def test_timm_embedder_with_given_weights(tiny_world, tmp_path):
    import torch

    from cion_ray.zoo.factory import create_backbone
    model = create_backbone("test_resnet")
    torch.save({"teacher": {f"module.backbone.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "w.pth")
    _track(tiny_world / "videos", tiny_world / "mot", tmp_path / "crops")
    cfg = CurateConfig(crops=str(tmp_path / "crops"), out=str(tmp_path / "out"), export_market=False,
                       embed=EmbedConfig(embedder="timm:test_resnet", weights=str(tmp_path / "w.pth"), height=128,
                                         width=64, dtype="float16"))
    r = run_curate(cfg, **QUIET)
    emb = pq.ParquetDataset(runs.committed_files(str(tmp_path / "out" / "embeddings"), "embed")).read()
    assert emb.schema.field("embedding").type.value_type == "halffloat"
    v = np.asarray(emb.column("embedding").combine_chunks().values.to_numpy(zero_copy_only=False), np.float32)
    v = v.reshape(emb.num_rows, -1)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-2)
    assert r.report["counts"]["samples_in"] == emb.num_rows


def test_bad_inputs(tiny_world, tmp_path):
    with pytest.raises(CionError, match="no committed tracking output"):
        run_curate(CurateConfig(crops=str(tmp_path / "nothing"), out=str(tmp_path / "o")), **QUIET)
    with pytest.raises(CionError, match="needs --weights"):
        run_curate(CurateConfig(crops=str(tmp_path), out=str(tmp_path / "o"),
                                embed=EmbedConfig(embedder="timm:test_resnet")), **QUIET)
    with pytest.raises(CionError, match="weights /nope.pth: not found"):
        run_curate(CurateConfig(crops=str(tmp_path), out=str(tmp_path / "o"),
                                embed=EmbedConfig(embedder="timm:test_resnet", weights="/nope.pth")), **QUIET)
    # a crops output whose manifest lists a copy of its file holds every crop twice
    crops = tmp_path / "crops"
    vids = tmp_path / "videos"
    vids.mkdir()
    shutil.copy(tiny_world / "videos" / "v0000.mp4", vids)
    _track(vids, tiny_world / "mot", crops)
    m = json.loads((crops / "_manifest.json").read_text())
    (f,) = m["runs"][0]["files"]
    shutil.copy(crops / f, crops / (f + ".copy.parquet"))
    m["runs"][0]["files"] = [f, f + ".copy.parquet"]
    (crops / "_manifest.json").write_text(json.dumps(m))
    with pytest.raises(CionError, match="duplicate crop id"):
        run_curate(CurateConfig(crops=str(crops), out=str(tmp_path / "dup")), **QUIET)


def test_an_interrupted_export_leaves_the_committed_one(curated, default_world, monkeypatch):
    """A re-run with other export settings (WebDataset on, a held-out Market split) that dies
    while writing its CION-AL JSON: the committed manifest, views and export stay whole and
    readable, and nothing of the failed run is left."""
    from cion_ray.curation import export as export_mod

    root, _ = curated
    out = root / "out"
    cfg = CurateConfig(crops=str(root / "crops"), out=str(out), gt=str(default_world), pool=PoolConfig(actors=2))
    before = run_curate(cfg, **QUIET)  # the committed default curation (current after the other tests)
    manifest = (out / "_manifest.json").read_text()
    entries = (out / "cion_al.json").read_text()
    exports = sorted(p.name for p in (out / "exports").iterdir())
    real = export_mod.write_cion_al_json

    def dies(stream, table, chunk=65536):
        real(stream, table.slice(0, table.num_rows // 2), chunk)  # half of it, then the failure
        raise OSError("disk full")

    monkeypatch.setattr(export_mod, "write_cion_al_json", dies)
    changed = CurateConfig(**{**cfg.__dict__, "export": ExportConfig(webdataset=True, market_test_fraction=0.2)})
    with pytest.raises(OSError, match="disk full"):
        run_curate(changed, **QUIET)
    assert (out / "_manifest.json").read_text() == manifest and (out / "cion_al.json").read_text() == entries
    assert sorted(p.name for p in (out / "exports").iterdir()) == exports  # the failed run's folder is gone
    assert not list(out.glob(".*partial"))
    listed = json.loads(entries)
    assert len(listed) == before.samples and all((out / e["file_path"]).is_file() for e in listed)
    assert len(list((out / "market" / "bounding_box_train").glob("*.jpg"))) == before.samples
    monkeypatch.undo()
    after = run_curate(changed, **QUIET)  # the same run, not interrupted, is published whole
    assert not after.current and (out / "market" / "query").is_dir()
    assert any(p.endswith("webdataset/index.json") for p in after.exports)
    assert sorted(p.name for p in (out / "exports").iterdir()) != exports and len(list((out / "exports").iterdir())) == 1
