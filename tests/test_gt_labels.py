"""Ground-truth labels as a pre-training data source (load_labels(..., labels="gt", gt=...)):
worked cases on hand-written crops and gt.txt, then the tiny world tracked and curated through
Ray, where the labels must agree with the curation report's own ground-truth matching."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cion_ray.errors import CionError
from cion_ray.evaluate.clustering import pairwise_prf
from cion_ray.pretrain.data import gt_labels, load_labels

QUIET = dict(log=lambda m: None)


# ---------------------------------------------------------------- worked cases, no Ray


def _crops(path, rows):
    """rows: (video, frame, track, x1, y1, x2, y2) -> a crops Parquet with those columns."""
    cols = list(zip(*rows))
    pq.write_table(pa.table({
        "crop_id": [f"{v}/{f:06d}/{t}" for v, f, t, *_ in rows], "video_id": list(cols[0]),
        "frame": pa.array(cols[1], pa.int32()), "track_id": pa.array(cols[2], pa.int64()),
        **{k: pa.array(cols[3 + i], pa.float32()) for i, k in enumerate(("x1", "y1", "x2", "y2"))}}), path)
    return str(path)


def _world(root, gt: dict[str, str], identities: list[dict] | None):
    for v, text in gt.items():
        (root / "mot" / v).mkdir(parents=True)
        (root / "mot" / v / "gt.txt").write_text(text)
    if identities is not None:
        (root / "identities.json").write_text(json.dumps(identities))
    return str(root)


# two people side by side in frame 1 of video a; person 7 of b is person 3 of a (identities.json)
GT = {"a": "1,3,10,10,20,40,1,1,1\n1,4,40,10,20,40,1,1,1\n2,3,12,10,20,40,1,1,1\n",
      "b": "1,7,100,100,20,40,1,1,1\n"}
IDS = [{"video_id": "a", "track_id": 3, "identity": 50}, {"video_id": "a", "track_id": 4, "identity": 9},
       {"video_id": "b", "track_id": 7, "identity": 50}]
ROWS = [("a", 1, 1, 41, 11, 61, 50),  # person 4 (IoU ~0.9)
        ("a", 1, 2, 10, 10, 30, 50),  # person 3, exactly
        ("a", 1, 5, 12, 12, 31, 49),  # also on person 3, who is taken: the one-to-one match leaves it out
        ("a", 2, 2, 12, 10, 32, 50),  # person 3
        ("a", 2, 6, 200, 200, 220, 240),  # nobody there: a false detection
        ("b", 1, 1, 101, 101, 121, 140)]  # person 7 of b = person 3 of a


def test_gt_labels_match_one_to_one_and_use_global_identities(tmp_path):
    files = [_crops(tmp_path / "crops.parquet", ROWS)]
    world = _world(tmp_path / "world", GT, IDS)
    t = gt_labels("test crops", world, files, "crops")
    assert list(t.keys) == ["a/000001/1", "a/000001/2", "a/000002/2", "b/000001/1"]
    assert t.identity.dtype == np.int64 and t.dropped == 2
    assert list(t.identity) == [1, 0, 0, 0]  # dense: "50" -> 0, "9" -> 1 (in the order of the labels)
    assert "2 matching no gt box dropped" in t.source and t.crop_files == files
    # without identities.json (a MOT folder): (video, gt track) pairs, so b's person is another one
    _world(tmp_path / "mot_only", GT, None)
    t = gt_labels("test crops", str(tmp_path / "mot_only" / "mot"), files, "crops")
    assert list(t.identity) == [1, 0, 0, 2]


def test_kept_crops_keep_their_order_and_are_matched_among_all_tracked(tmp_path):
    files = [_crops(tmp_path / "crops.parquet", ROWS)]
    world = _world(tmp_path / "world", GT, IDS)
    # the curation kept crop a/1/5 (not a/1/2): matched among all crops it stays unmatched, as in the
    # curation report, and is dropped; the curated order is kept
    keep = np.array(["b/000001/1", "a/000001/5", "a/000002/6", "a/000001/1"], dtype=object)
    t = gt_labels("curated test", world, files, "crops", keep)
    assert list(t.keys) == ["b/000001/1", "a/000001/1"] and t.dropped == 2
    assert list(t.identity) == [0, 1]
    with pytest.raises(CionError, match=r"curated test: 1 curated crops are missing .*\(a/000009/1\)"):
        gt_labels("curated test", world, files, "crops", np.array(["a/000009/1"], dtype=object))


def test_gt_errors_name_the_folder(tmp_path):
    files = [_crops(tmp_path / "crops.parquet", ROWS)]
    with pytest.raises(CionError, match=f"gt {tmp_path / 'nowhere'}: not found"):
        gt_labels("test crops", str(tmp_path / "nowhere"), files, "crops")
    world = _world(tmp_path / "world", {"a": GT["a"]}, IDS)
    with pytest.raises(CionError, match=f"gt {tmp_path / 'world' / 'mot'}: no gt.txt for 1 videos .*\\(b\\)"):
        gt_labels("test crops", world, files, "crops")
    far = _world(tmp_path / "far", {"a": "1,1,500,500,5,5,1,1,1\n", "b": "1,1,500,500,5,5,1,1,1\n"}, None)
    with pytest.raises(CionError, match="no crop of test crops matches a ground-truth box"):
        gt_labels("test crops", far, files, "crops")
    with pytest.raises(CionError, match="labels=gt needs gt"):
        load_labels(str(tmp_path), labels="gt")
    (tmp_path / "al.json").write_text(json.dumps([{"file_path": "x.jpg", "id": 0}]))
    with pytest.raises(CionError, match="no boxes to match with ground truth"):
        load_labels(str(tmp_path / "al.json"), labels="gt", gt=world)


# ---------------------------------------------------------------- the tiny world through Ray


@pytest.fixture(scope="module")
def curated(ray_session, tiny_world, tmp_path_factory):
    """(tracking output, curated output) of the tiny world, curated with its ground truth."""
    from cion_ray.curation.config import CurateConfig, PoolConfig
    from cion_ray.runtime.curate import run_curate
    from cion_ray.runtime.track import run_track
    from cion_ray.tracking.config import DetectorConfig, PoolConfig as TrackPool, TrackConfig

    root = tmp_path_factory.mktemp("gt_labels")
    run_track(TrackConfig(videos=str(tiny_world / "videos"), out=str(root / "crops"), pool=TrackPool(actors=1),
                          detector=DetectorConfig(kind="mot-det", mot=str(tiny_world / "mot"))), **QUIET)
    run_curate(CurateConfig(crops=str(root / "crops"), out=str(root / "curated"), gt=str(tiny_world),
                            pool=PoolConfig(actors=1), export_market=False), **QUIET)
    return root / "crops", root / "curated"


def _report_gt(curated_out) -> dict[str, str]:
    """crop id -> the person the curation report matched it to (its own gt matching), matched only."""
    from cion_ray.curation.store import load_levels

    out = {}
    for f in sorted((curated_out / "videos").glob("*.npz")):
        d = load_levels(str(f))
        assert len(d["gt"]) == len(d["crop_id"]), "the curation ran with ground truth"
        out.update({c: g for c, g in zip(d["crop_id"].tolist(), d["gt"].tolist()) if "/fp" not in g})
    return out


def test_curated_gt_labels_agree_with_the_curation_report(curated, tiny_world):
    _, out = curated
    ident = load_labels(str(out), "identity")
    t = load_labels(str(out), "gt", gt=str(tiny_world))
    assert t.kind == "parquet" and t.crops == ident.crops and t.crop_files == ident.crop_files
    # the kept crops of the curation, in its order, less those matching no gt box
    assert set(t.keys) <= set(ident.keys) and len(t.keys) + t.dropped == len(ident.keys)
    assert list(t.keys) == [k for k in ident.keys if k in set(t.keys)]
    assert t.identity.dtype == np.int64 and np.array_equal(np.unique(t.identity), np.arange(t.n_identities))
    report = _report_gt(out)
    assert set(t.keys) == set(ident.keys) & set(report), "dropped = the crops the report matched to nobody"
    truth = np.array([report[k] for k in t.keys])
    q = pairwise_prf(truth, t.identity)
    assert q["precision"] > 0.999 and q["recall"] > 0.999, q
    # global identities of the world (identities.json), not per-video gt tracks
    world = {r["identity"] for r in json.loads((tiny_world / "identities.json").read_text())}
    assert t.n_identities <= len(world)


def test_tracking_output_gt_labels_use_every_tracked_crop(curated, tiny_world):
    crops, out = curated
    tracked = load_labels(str(crops), "tracklet")
    t = load_labels(str(crops), "gt", gt=str(tiny_world))
    assert len(t.keys) + t.dropped == len(tracked.keys) and t.crops == str(crops)
    assert "tracked crops of tracking output" in t.source
    report = _report_gt(out)
    assert set(t.keys) == set(report)
    q = pairwise_prf(np.array([report[k] for k in t.keys]), t.identity)
    assert q["precision"] > 0.999 and q["recall"] > 0.999, q
    # global identities: someone seen in several videos is one identity
    videos_per_identity = [len({str(k).split("/")[0] for k in t.keys[t.identity == i]}) for i in range(t.n_identities)]
    assert max(videos_per_identity) >= 2


def test_missing_gt_files_on_the_tiny_world_name_the_folder(curated, tiny_world, tmp_path):
    crops, out = curated
    with pytest.raises(CionError, match=f"gt {tmp_path / 'none'}: not found"):
        load_labels(str(out), "gt", gt=str(tmp_path / "none"))
    partial = tmp_path / "partial"
    shutil.copytree(tiny_world / "mot", partial / "mot")
    shutil.rmtree(partial / "mot" / "v0001")
    with pytest.raises(CionError, match=f"gt {partial / 'mot'}: no gt.txt for 1 videos of curated .*v0001"):
        load_labels(str(out), "gt", gt=str(partial))
    with pytest.raises(CionError, match=f"gt {tmp_path}: no gt.txt for 4 videos of tracking output"):
        load_labels(str(crops), "gt", gt=str(tmp_path))
