"""The curation's exports through the runtime's actor pool, on synthetic curated crops (real
JPEG bytes, no video): more than 9999 identities (CION-AL complete, Market skipped with a
note), the held-out Market split read by our own evaluation loader, and WebDataset shards."""
from __future__ import annotations

import json
import tarfile

import pyarrow.parquet as pq
import pytest

from cion_ray.curation.config import ExportConfig
from cion_ray.curation.export import CropLabeler, export_plan, finish_export
from cion_ray.evaluate.datasets import load_market1501
from cion_ray.io.market import parse_market_name
from cion_ray.io.schemas import IDENTITIES
from cion_ray.runtime.curate import label_and_export
from cion_ray.synth.crop_tables import write_curated_crops

pytestmark = pytest.mark.usefixtures("ray_session")
QUIET = dict(log=lambda m: None)


def _export(tmp_path, crops, settings: ExportConfig, writers: int = 2):
    n_ids = int(crops.identity_of.max()) + 1
    plan, notes = export_plan(settings, str(tmp_path / "exports" / "r1"), crops.video_ids, crops.levels, crops.final,
                              n_ids)
    labeler = CropLabeler(crops.level_uris, crops.identity_of, crops.offsets)
    files, shards = label_and_export(crops.crop_files, labeler, plan, str(tmp_path / "identities"), writers=writers,
                                     shard_size=settings.shard_size, **QUIET)
    finish_export(plan, files, shards)
    return plan, notes, files


def test_more_than_9999_identities_export_cion_al_and_skip_market(tmp_path):
    crops = write_curated_crops(str(tmp_path), 10_100, per_identity=2, videos=10, dropped_every=97)
    plan, notes, files = _export(tmp_path, crops, ExportConfig())
    assert not plan.market and len(notes) == 1 and "10100 identities" in notes[0]
    t = pq.ParquetDataset(files).read()
    assert t.schema.equals(IDENTITIES, check_metadata=False)
    assert dict(zip(t.column("crop_id").to_pylist(), t.column("identity").to_pylist())) == crops.expected
    root = tmp_path / "exports" / "r1"
    entries = json.loads((root / "cion_al.json").read_text())
    assert len(entries) == len(crops.expected) and {e["id"] for e in entries} == set(crops.expected.values())
    assert len(set(crops.expected.values())) > 9999
    assert entries == sorted(entries, key=lambda e: (e["id"], e["file_path"]))
    images = sorted(str(p.relative_to(root)) for p in (root / "cion_al").rglob("*.jpg"))
    assert images == sorted(e["file_path"] for e in entries)
    assert not (root / "market").exists() and not (root / "webdataset").exists()


def test_market_test_split_loads_in_our_evaluation_and_webdataset_shards_hold_every_crop(tmp_path):
    crops = write_curated_crops(str(tmp_path), 300, per_identity=5, videos=12, dropped_every=11, row_group=400)
    settings = ExportConfig(market_test_fraction=0.2, market_seed=1, webdataset=True, shard_size=150)
    plan, notes, _ = _export(tmp_path, crops, settings)
    assert plan.market and notes == [] and len(plan.test_ids) == round(0.2 * len(set(crops.expected.values())))
    market = tmp_path / "exports" / "r1" / "market"
    ds = load_market1501(str(market))
    assert set(ds.train.pids.tolist()).isdisjoint(ds.query.pids.tolist() + ds.gallery.pids.tolist())
    assert {p - 1 for p in ds.train.pids.tolist()} | plan.test_ids == set(crops.expected.values())
    assert len(ds.train) + len(ds.query) + len(ds.gallery) == len(crops.expected)
    assert len(ds.query) > 20
    for pid, cam in zip(ds.query.pids, ds.query.cams):  # a valid query: a match from another camera
        assert ((ds.gallery.pids == pid) & (ds.gallery.cams != cam)).any()
    assert all(parse_market_name(f.rsplit("/", 1)[-1]).pid - 1 in plan.test_ids for f in ds.query.files)
    # WebDataset: every kept crop once, with its identity, in the shards the index lists
    wds = tmp_path / "exports" / "r1" / "webdataset"
    index = json.loads((wds / "index.json").read_text())
    assert sorted(p.name for p in wds.glob("*.tar")) == sorted(s["url"] for s in index["shards"])
    seen = {}
    for s in index["shards"]:
        with tarfile.open(wds / s["url"]) as tar:
            members = tar.getnames()
            assert len(members) == 3 * s["samples"]
            for name in members:
                if name.endswith(".json"):
                    meta = json.loads(tar.extractfile(name).read())
                    cls = int(tar.extractfile(name[:-5] + ".cls").read())
                    assert meta["crop_id"] not in seen and cls == meta["identity"]
                    assert tar.extractfile(name[:-5] + ".jpg").read()[:2] == b"\xff\xd8"
                    seen[meta["crop_id"]] = cls
    assert seen == crops.expected and index["samples"] == len(seen)
