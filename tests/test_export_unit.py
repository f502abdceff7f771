"""The curation's exports as pure code: the streamed CION-AL JSON, Market naming and the
held-out split, WebDataset shards, the plan (Market skipped above 9999 identities), the
contact sheet's picks and the export settings' compatibility. No Ray."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pytest

from cion_ray.config import load_config
from cion_ray.curation.config import CurateConfig, ExportConfig
from cion_ray.curation.export import (MARKET_NAMING, cion_al_path, cion_al_table, export_plan, held_out_split,
                                      market_camera, market_path, plan_pieces, shard_bytes, write_cion_al_json)
from cion_ray.curation.sheet import sheet_picks
from cion_ray.errors import ConfigError
from cion_ray.io import stage
from cion_ray.io.market import parse_market_name


def _identities(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    ident = rng.integers(0, n // 3 + 1, n)
    vids = [f"v{int(v):04d}" for v in rng.integers(0, 20, n)]
    frames, tracks = rng.integers(0, 2_000_000, n), rng.integers(0, 300, n)
    cids = [f"{v}/{f}/{t}" for v, f, t in zip(vids, frames, tracks)]
    return pa.table({"crop_id": cids, "identity": pa.array(ident, pa.int64())})


def test_streamed_cion_al_json_is_complete_sorted_and_named_like_the_images():
    t = _identities(5000)
    ref = []
    for cid, i in zip(t.column("crop_id").to_pylist(), t.column("identity").to_pylist()):
        v, f, tr = cid.split("/")
        ref.append({"file_path": "exports/r1/cion_al/" + cion_al_path(i, v, int(f), int(tr)), "id": i})
    ref.sort(key=lambda e: (e["id"], e["file_path"]))
    buf = io.BytesIO()
    assert write_cion_al_json(buf, cion_al_table(t, prefix="exports/r1/"), chunk=333) == 5000  # many chunks
    assert json.loads(buf.getvalue()) == ref
    empty = io.BytesIO()
    write_cion_al_json(empty, cion_al_table(t.slice(0, 0)))
    assert json.loads(empty.getvalue()) == []


def test_market_names_carry_a_camera_per_video():
    assert [market_camera(p) for p in (0, 1, 8, 9, 20)] == [(1, 1), (2, 1), (9, 1), (1, 2), (3, 3)]
    name = parse_market_name(market_path(12, 10, 345, 102, "query").split("/")[-1])
    assert (name.pid, name.camera, name.session, name.frame, name.index) == (12, 2, 2, 345, 2)
    assert market_path(1, 0, 1, 1).startswith("market/bounding_box_train/0001_c1s1_")


def test_held_out_split_is_seeded_and_every_query_has_a_cross_camera_match():
    rng = np.random.default_rng(1)
    ident = np.repeat(np.arange(200), 6)
    pos = rng.integers(0, 12, len(ident))
    pos[ident == 7] = 3  # one camera only: no query from it
    cid = np.array([f"c{i}" for i in range(len(ident))])
    test, query = held_out_split(ident, pos, cid, 0.25, seed=5)
    assert len(test) == 50 and (test, query) == held_out_split(ident, pos, cid, 0.25, seed=5)
    assert test != held_out_split(ident, pos, cid, 0.25, seed=6)[0]
    cam = np.array([market_camera(int(p))[0] for p in pos])
    is_q = np.isin(cid, list(query))
    assert query and set(ident[is_q].tolist()) <= test
    for q in np.flatnonzero(is_q):  # the gallery: held-out crops that are not queries
        gallery = (ident == ident[q]) & ~is_q & (cam != cam[q])
        assert gallery.any()
    if 7 in test:
        assert not is_q[ident == 7].any()
    assert held_out_split(ident, pos, cid, 0.0, 0) == (frozenset(), frozenset())


def _levels(n_ids: int):
    levels = [{"video_id": "a", "crop_id": np.array([f"a/{i}/0" for i in range(n_ids)])},
              {"video_id": "b", "crop_id": np.array([f"b/{i}/0" for i in range(n_ids)])}]
    final = [np.arange(n_ids), np.arange(n_ids)]
    return levels, final


def test_plan_skips_market_above_9999_identities_with_a_note():
    levels, final = _levels(10)
    plan, notes = export_plan(ExportConfig(), "/x", ["a", "b"], levels, final, 10_000)
    assert plan.cion_al and not plan.market and len(notes) == 1 and "10000 identities" in notes[0]
    plan, notes = export_plan(ExportConfig(), "/x", ["a", "b"], levels, final, 9999)
    assert plan.market and notes == [] and plan.positions == {"a": 0, "b": 1}
    assert export_plan(None, "/x", ["a"], levels, final, 5) == (None, [])
    plan, _ = export_plan(ExportConfig(market_test_fraction=0.5, market_seed=3), "/x", ["a", "b"], levels, final, 10)
    assert len(plan.test_ids) == 5 and len(plan.query) == 0  # one crop per camera: all gallery


def test_webdataset_shard_holds_each_sample_with_its_label():
    data = shard_bytes([("000003_v1_000010_2", b"\xff\xd8jpg", 3, {"crop_id": "v1/10/2"}),
                        ("000004_v1_000011_0", b"\xff\xd8jp2", 4, {"crop_id": "v1/11/0"})])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        assert names == ["000003_v1_000010_2.jpg", "000003_v1_000010_2.cls", "000003_v1_000010_2.json",
                         "000004_v1_000011_0.jpg", "000004_v1_000011_0.cls", "000004_v1_000011_0.json"]
        assert tar.extractfile("000004_v1_000011_0.cls").read() == b"4"
        assert json.loads(tar.extractfile("000003_v1_000010_2.json").read()) == {"crop_id": "v1/10/2"}


def test_pieces_are_numbered_in_file_order():
    tasks = plan_pieces([("f1", [5, 3]), ("f2", [0, 4])], shard_size=2)
    assert [[(p.file, p.row_group, p.start, p.stop, p.shard) for p in t] for t in tasks] == [
        [("f1", 0, 0, 2, 0), ("f1", 0, 2, 4, 1), ("f1", 0, 4, 5, 2)], [("f1", 1, 0, 2, 3), ("f1", 1, 2, 3, 4)],
        [("f2", 1, 0, 2, 5), ("f2", 1, 2, 4, 6)]]


def test_sheet_picks_identities_seen_in_most_videos_round_robin():
    levels = [{"video_id": "a", "crop_id": np.array(["a1", "a2", "a3", "a4"])},
              {"video_id": "b", "crop_id": np.array(["b1", "b2"])}]
    final = [np.array([0, 0, 0, 1]), np.array([1, -1])]
    picks = sheet_picks(levels, final, rows=10, cols=3)
    assert [(g, n, v) for g, n, v, _ in picks] == [(1, 2, 2), (0, 3, 1)]
    assert picks[0][3] == [("a", "a4"), ("b", "b1")] and picks[1][3] == [("a", "a2"), ("a", "a3"), ("a", "a1")]


def test_export_settings_keep_old_configs_and_keys(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("export_market: false\n")
    cfg = load_config(CurateConfig, str(old), [])
    assert not cfg.export_market and cfg.export == ExportConfig()
    # the committed output's inputs key with exports off is what it always was
    levels = [("v0", "k0")]
    assert (stage.content_key(levels, cfg.fingerprint(), *cfg.export_key(MARKET_NAMING))
            == stage.content_key(levels, cfg.fingerprint(), False))
    on = CurateConfig()
    assert on.fingerprint() == cfg.fingerprint()  # export settings never ask for --overwrite
    # how many actors write is not a setting of the result; what is written is
    assert on.export_key("m") == CurateConfig(export=ExportConfig(writers=7)).export_key("m")
    assert on.export_key("m") != CurateConfig(export=ExportConfig(webdataset=True)).export_key("m")
    assert on.export_key("m") != CurateConfig(export=ExportConfig(market_test_fraction=0.1)).export_key("m")
    with pytest.raises(ConfigError, match="export.market_test_fraction"):
        ExportConfig(market_test_fraction=1.0)
