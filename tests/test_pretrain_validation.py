"""The validation split carved from the training data (pretrain/validation.py): held-out identities
seeded and disjoint from training, fractions nesting among the rest, tracklets as cameras, and the
plain loop reporting val_mAP on a tiny hand-written curated output (no Ray)."""
from __future__ import annotations

import argparse
import io
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cion_ray.config import load_config
from cion_ray.errors import CionError, ConfigError
from cion_ray.pretrain.config import PretrainConfig
from cion_ray.pretrain.data import select_identities, split_identities
from cion_ray.pretrain.validation import (holdout_identities, score_split, tracklet_cameras, val_metrics,
                                          validation_split)

SMALL = ["model.arch=test_resnet_ibn", "model.out_dim=256", "model.hidden_dim=64", "model.bottleneck_dim=32",
         "views.local_crops=2", "views.global_size=64,32", "views.local_size=32,16", "scale.loader_workers=0"]


# ---------------------------------------------------------------- held-out identities


def test_holdout_is_seeded_nested_and_never_everything():
    ident = np.repeat(np.arange(100), 3)
    a = holdout_identities(ident, 0.1, seed=4)
    assert len(a) == 10 and np.array_equal(a, np.sort(a))
    assert np.array_equal(a, holdout_identities(ident, 0.1, seed=4))
    assert not np.array_equal(a, holdout_identities(ident, 0.1, seed=5))
    assert set(a) <= set(holdout_identities(ident, 0.3, seed=4))
    assert len(holdout_identities(ident, 0.0, seed=4)) == 0
    assert len(holdout_identities(ident, 0.001, seed=4)) == 2  # at least two identities to retrieve among
    # its own seed sequence: not the data fraction's first identities
    assert not np.array_equal(a, select_identities(ident, 0.1, seed=4))
    with pytest.raises(CionError, match="my data: 2 identities are too few"):
        holdout_identities(np.array([0, 0, 1]), 0.5, seed=0, source="my data")


def test_split_identities_disjoint_nested_and_unchanged_without_validation():
    ident = np.repeat(np.arange(200), 2)
    for f in (0.1, 0.5, 1.0):
        assert np.array_equal(split_identities(ident, f, 0.0, 3)[0], select_identities(ident, f, 3))
    held = holdout_identities(ident, 0.2, 3)
    smaller = None
    for f in (0.25, 0.5, 1.0):
        train, val = split_identities(ident, f, 0.2, 3)
        assert np.array_equal(val, held)  # the same validation identities for every fraction
        assert not set(train) & set(val)
        assert len(train) == math.ceil(f * 160 - 1e-9)
        # select_identities' nesting holds among the identities left to train on
        assert np.array_equal(train, select_identities(ident[~np.isin(ident, held)], f, 3))
        if smaller is not None:
            assert set(smaller) <= set(train)
        smaller = train
    assert set(split_identities(ident, 1.0, 0.2, 3)[0]) | set(held) == set(range(200))


# ---------------------------------------------------------------- cameras and the split


def test_tracklets_are_the_cameras_of_crops_and_each_file_its_own():
    keys = np.array(["a/000001/3", "a/000002/3", "a/000001/4", "b/000001/3", "cam/x/000007/3"], dtype=object)
    c = tracklet_cameras(keys, "parquet")
    assert c[0] == c[1] and len({c[0], c[2], c[3], c[4]}) == 4
    assert np.array_equal(tracklet_cameras(np.array(["x.jpg", "y.jpg", "z.jpg"], dtype=object), "files"),
                          np.arange(3))


def _held_out(seed=0):
    """6 identities; identity i in 1 + i % 4 tracklets of 3 frames each."""
    rng = np.random.default_rng(seed)
    ident, cams = [], []
    cam = 0
    for pid in range(6):
        for _ in range(1 + pid % 4):
            ident += [pid] * 3
            cams += [cam] * 3
            cam += 1
    order = rng.permutation(len(ident))
    return np.asarray(ident)[order], np.asarray(cams)[order]


def test_split_queries_one_per_tracklet_and_always_have_a_match():
    ident, cams = _held_out()
    s = validation_split(ident, cams, seed=1)
    assert np.array_equal(np.sort(np.concatenate([s.query, s.gallery])), np.arange(len(ident)))
    for pid in np.unique(ident):
        q = s.query[ident[s.query] == pid]
        n_cams = len(np.unique(cams[ident == pid]))
        assert len(q) == min(4, n_cams - 1)  # identities in one tracklet stay in the gallery as distractors
        assert len(np.unique(cams[q])) == len(q)  # one query per tracklet
        for r in q:  # a true match in another tracklet
            assert ((ident[s.gallery] == pid) & (cams[s.gallery] != cams[r])).any()
    again = validation_split(ident, cams, seed=1)
    assert np.array_equal(s.query, again.query)
    assert not np.array_equal(s.query, validation_split(ident, cams, seed=2).query)
    with pytest.raises(CionError, match="mine: the validation split has no query"):
        validation_split(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]), 0, "mine")  # one tracklet each


def test_score_split_perfect_features_and_metric_names():
    ident, cams = _held_out()
    feats = np.eye(6, dtype=np.float32)[ident] + 0.01 * np.random.default_rng(0).normal(size=(len(ident), 6))
    s = validation_split(ident, cams, seed=0)
    m = val_metrics(score_split(feats.astype(np.float32), s))
    assert set(m) == {"val_mAP", "val_rank1", "val_mINP", "val_queries"}
    assert m["val_mAP"] == pytest.approx(1.0) and m["val_rank1"] == 1.0 and m["val_queries"] == len(s.query)


# ---------------------------------------------------------------- config and CLI


def test_config_validation_range_and_fingerprint():
    import hashlib
    from dataclasses import asdict

    with pytest.raises(ConfigError, match="validation"):
        PretrainConfig(validation=1.0)
    with pytest.raises(ConfigError, match="validation"):
        PretrainConfig(validation=-0.1)
    cfg = PretrainConfig(data="x", seed=2)
    # off: the fingerprint of a config without the field (runs from before it still resume)
    d = asdict(cfg)
    for k in ("out", "fault_drill_iteration", "eval_data", "validation"):
        d.pop(k)
    d["scale"] = {"workers": cfg.scale.workers}
    assert cfg.fingerprint() == hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:16]
    assert PretrainConfig(data="x", seed=2, validation=0.1).fingerprint() != cfg.fingerprint()
    assert PretrainConfig(data="x", seed=2, validation=0.1).fingerprint() != \
        PretrainConfig(data="x", seed=2, validation=0.2).fingerprint()


def test_cli_validation_flag():
    from cion_ray.cli import add_pretrain_args, pretrain_config_from_args

    p = argparse.ArgumentParser()
    add_pretrain_args(p)
    assert pretrain_config_from_args(p.parse_args(["--data", "d", "--out", "o", "--validation", "0.2"])).validation \
        == 0.2
    assert pretrain_config_from_args(p.parse_args(["--data", "d", "--out", "o"])).validation == 0.0


# ---------------------------------------------------------------- a tiny curated output, the loop


def _jpeg(colour, rng) -> bytes:
    from PIL import Image

    img = np.clip(np.asarray(colour)[None, None] + rng.normal(0, 25, (64, 32, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny_curated(tmp_path_factory):
    """A curated output written by hand (the layout load_labels reads): 10 identities, each in 2 or 3
    tracklets (videos v0..v2) of 4 frames; a colour per identity."""
    root = tmp_path_factory.mktemp("tiny_curated")
    rng = np.random.default_rng(0)
    rows = {"crop_id": [], "identity": [], "video_id": [], "track_id": []}
    crops = []
    for pid in range(10):
        colour = rng.integers(0, 255, 3)
        for t in range(2 + pid % 2):
            video, track = f"v{t}", 100 + pid
            for frame in range(1, 5):
                cid = f"{video}/{frame:06d}/{track}"
                rows["crop_id"].append(cid)
                rows["identity"].append(1000 + pid)
                rows["video_id"].append(video)
                rows["track_id"].append(track)
                crops.append(_jpeg(colour, rng))
    (root / "crops" / "crops").mkdir(parents=True)
    pq.write_table(pa.table({"crop_id": rows["crop_id"], "crop": pa.array(crops, pa.binary())}),
                   root / "crops" / "crops" / "part-0.parquet")
    (root / "crops" / "_manifest.json").write_text(json.dumps(
        {"stage": "track", "runs": [{"run_id": "r", "files": ["crops/part-0.parquet"]}], "units": {}}))
    (root / "curated" / "identities").mkdir(parents=True)
    pq.write_table(pa.table(rows), root / "curated" / "identities" / "part-0.parquet")
    (root / "curated" / "_manifest.json").write_text(json.dumps(
        {"stage": "curate", "identities": {"files": ["identities/part-0.parquet"]},
         "config": {"crops": str(root / "crops")}}))
    return root / "curated"


def _cfg(data, *extra):
    return load_config(PretrainConfig, None, SMALL + [f"data={data}", "optim.batch_per_worker=8",
                                                      "optim.iters_per_epoch=1", "optim.warmup_epochs=0",
                                                      "optim.k_schedule=0:2", "optim.epochs=2", *extra])


def test_loop_reports_validation_retrieval_every_checkpoint_and_resumes(tmp_path, tiny_curated):
    from cion_ray.pretrain.loop import LocalContext, WorkerData, train

    cfg = _cfg(tiny_curated, "validation=0.3")
    data = WorkerData(cfg, 0, 1, log=lambda s: None)
    held = set(np.unique(data.validation.split.pids))
    assert len(held) == 3 and not held & set(np.unique(data.labels)) and data.total_identities == 7
    assert len(data.validation.images) == len(data.validation.split.pids)

    logs: list[str] = []
    ctx = LocalContext(tmp_path / "a")
    m = train(cfg, ctx, log=logs.append)
    assert [x["epoch"] for x in ctx.metrics] == [1, 2] and m["identities"] == 7
    for x in ctx.metrics:
        assert 0 < x["val_mAP"] <= 1 and 0 <= x["val_rank1"] <= 1 and 0 < x["val_mINP"] <= 1
        assert x["val_queries"] == len(data.validation.split.query) > 0
        assert x["val_mAP_init"] == ctx.metrics[0]["val_mAP_init"]
    assert any("val mAP" in line for line in logs if line.startswith("epoch 2/2"))
    state = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    assert state["val_init"]["val_mAP_init"] == m["val_mAP_init"]

    class StopAfter(LocalContext):
        def report(self, metrics, checkpoint):
            super().report(metrics, checkpoint)
            raise KeyboardInterrupt

    # stopped after epoch 1 and resumed: the before-training figure comes from the checkpoint
    with pytest.raises(KeyboardInterrupt):
        train(cfg, StopAfter(tmp_path / "b"), log=lambda s: None)
    resumed = LocalContext(tmp_path / "b")
    train(cfg, resumed, log=lambda s: None)
    assert [x["epoch"] for x in resumed.metrics] == [2]
    assert resumed.metrics[0]["val_mAP_init"] == m["val_mAP_init"]
    assert resumed.metrics[0]["val_mAP"] == pytest.approx(m["val_mAP"])

    # off: no validation metrics, all 10 identities trained on
    plain = LocalContext()
    train(_cfg(tiny_curated, "optim.epochs=1"), plain, log=lambda s: None)
    assert not any(k.startswith("val_") for k in plain.metrics[0]) and plain.metrics[0]["identities"] == 10


def test_driver_check_refuses_an_empty_or_greedy_split(tiny_curated):
    from cion_ray.runtime.pretrain import _check_inputs

    assert _check_inputs(_cfg(tiny_curated, "validation=0.3")).crops
    with pytest.raises(CionError, match="validation split has no query"):
        _check_inputs(_cfg(tiny_curated, "validation=0.3", "labels=tracklet"))
    with pytest.raises(CionError, match=f"{tiny_curated}: 10 identities are too few to hold out"):
        _check_inputs(_cfg(tiny_curated, "validation=0.95"))
    with pytest.raises(CionError, match="held out for validation"):
        _check_inputs(_cfg(tiny_curated, "validation=0.6", "optim.batch_per_worker=10"))
