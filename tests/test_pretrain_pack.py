"""The pre-training pack (cion_ray/pretrain/pack.py): each worker reads only its own identities'
record batches, a committed pack is reused and a partial one ignored, the bytes a loader decodes
are the crops Parquet's, and the same holds on s3:// (moto's server on loopback)."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cion_ray.config import load_config
from cion_ray.errors import CionError
from cion_ray.pretrain import pack as P
from cion_ray.pretrain.config import PretrainConfig
from cion_ray.pretrain.data import fetch_images, load_labels
from cion_ray.pretrain.sampler import shard_identities

SMALL = ["model.arch=test_resnet_ibn", "model.out_dim=256", "model.hidden_dim=64", "model.bottleneck_dim=32",
         "views.local_crops=2", "views.global_size=64,32", "views.local_size=32,16", "scale.loader_workers=0",
         "optim.batch_per_worker=8", "optim.iters_per_epoch=1", "optim.warmup_epochs=0", "optim.k_schedule=0:2"]


def _jpeg(rng, h=48, w=24) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _curated(root, n_ids=40, per_id=4, n_files=3, seed=0) -> tuple[str, dict[str, bytes]]:
    """A curated output and its crops written by hand: `n_ids` identities of `per_id` crops spread
    over `n_files` crops Parquet files (so no file holds one identity alone). -> (curated URI,
    crop id -> JPEG bytes)."""
    rng = np.random.default_rng(seed)
    rows = {"crop_id": [], "identity": [], "video_id": [], "track_id": []}
    source: dict[str, bytes] = {}
    for pid in range(n_ids):
        for j in range(per_id):
            cid = f"v{j % n_files}/{pid:06d}/{j}"
            rows["crop_id"].append(cid)
            rows["identity"].append(500 + pid)
            rows["video_id"].append(f"v{j % n_files}")
            rows["track_id"].append(pid)
            source[cid] = _jpeg(rng)
    (root / "crops" / "crops").mkdir(parents=True)
    files = []
    for f in range(n_files):
        ids = [c for c in source if c.startswith(f"v{f}/")]
        pq.write_table(pa.table({"crop_id": ids, "crop": pa.array([source[c] for c in ids], pa.binary())}),
                       root / "crops" / "crops" / f"part-{f}.parquet", row_group_size=16)
        files.append(f"crops/part-{f}.parquet")
    (root / "crops" / "_manifest.json").write_text(json.dumps(
        {"stage": "track", "runs": [{"run_id": "r", "files": files}], "units": {}}))
    (root / "curated" / "identities").mkdir(parents=True)
    pq.write_table(pa.table(rows), root / "curated" / "identities" / "part-0.parquet")
    (root / "curated" / "_manifest.json").write_text(json.dumps(
        {"stage": "curate", "identities": {"files": ["identities/part-0.parquet"]},
         "config": {"crops": str(root / "crops")}}))
    return str(root / "curated"), source


@pytest.fixture()
def small_batches(monkeypatch):
    """Shards of about 8 images and record batches of about 2, so that a few workers split them."""
    monkeypatch.setattr(P, "SHARD_BYTES", 8 * 1500)
    monkeypatch.setattr(P, "BATCH_BYTES", 2 * 1500)


def _builds(root) -> list[str]:
    return sorted(p.name for p in root.glob("curated/_pretrain_pack/*/build-*"))


def test_each_worker_reads_only_the_batches_of_its_own_identities(tmp_path, small_batches):
    data, source = _curated(tmp_path)
    table = load_labels(data)
    pack = P.ensure_pack(table, data, log=lambda m: None)
    assert len(pack.shards) >= 4 and pack.manifest["rows"] == len(table.keys)
    total = pack.manifest["bytes"]
    biggest = max(np.diff(s["batches"] + [s["rows"]]).max() for s in pack.shards) * max(map(len, source.values()))
    for workers in (1, 2, 4):
        read_all, files_all = 0, []
        for rank in range(workers):
            mine = shard_identities(table.identity, workers, rank, seed=0)
            rows = np.flatnonzero(np.isin(table.identity, mine))
            stats = P.ReadStats()
            images = pack.images(rows, stats)
            assert [images[i] for i in range(len(rows))] == [source[k] for k in table.keys[rows]]
            # its own images' bytes, at most a shared record batch at each end, and the IPC footers
            own = sum(len(source[k]) for k in table.keys[rows])
            assert own <= stats.bytes <= own + 2 * biggest + 4096 * len(stats.files)
            # only the shard files that hold its rows
            held = {int(np.searchsorted([s["start"] for s in pack.shards], p, side="right")) - 1
                    for p in pack.positions[rows]}
            assert sorted(stats.files) == sorted(f"{pack.root}/{pack.shards[s]['file']}" for s in held)
            read_all += stats.bytes
            files_all += stats.files
        if workers > 1:
            assert read_all < total * 1.5  # not workers x the data set
            assert len(files_all) < workers * len(pack.shards)


def test_a_pack_is_reused_and_a_partial_one_ignored(tmp_path, small_batches):
    data, source = _curated(tmp_path)
    table = load_labels(data)
    first = P.ensure_pack(table, data, log=lambda m: None)
    assert len(_builds(tmp_path)) == 1
    again = P.ensure_pack(load_labels(data), data, log=lambda m: None)
    assert again.root == first.root and again.manifest == first.manifest and len(_builds(tmp_path)) == 1
    # a build killed before its manifest: ignored, and a new one is committed beside it
    (tmp_path / "curated" / "_pretrain_pack" / first.root.rsplit("/", 1)[-1] / "_manifest.json").unlink()
    assert P.find_pack(table, data) is None
    rebuilt = P.ensure_pack(table, data, log=lambda m: None)
    assert len(_builds(tmp_path)) == 2 and rebuilt.manifest["shards"][0]["file"] != first.manifest["shards"][0]["file"]
    rows = np.arange(len(table.keys))
    assert list(rebuilt.images(rows)) == [source[k] for k in table.keys]
    # other labels or other data: another key, another pack
    tracklets = load_labels(data, labels="tracklet")
    assert P.pack_key(tracklets, data) != P.pack_key(table, data)
    # a new pack beside another one says what the other holds, and removes nothing
    said = []
    P.ensure_pack(tracklets, data, log=said.append)
    first_bytes = first.manifest["bytes"] / 1e9
    assert any(f"1 other pack(s) in {P.cache_roots(data)[0]} hold {first_bytes:.2f} GB" in m for m in said), said
    assert list(P.find_pack(table, data).images(rows)) == [source[k] for k in table.keys]


def test_images_decoded_in_loader_processes_are_the_source_crops(tmp_path):
    from cion_ray.io.images import decode_jpeg
    from cion_ray.pretrain.loop import ImageNames

    data, source = _curated(tmp_path, n_ids=12)
    table = load_labels(data)
    pack = P.ensure_pack(table, data, log=lambda m: None)
    rows = np.flatnonzero(table.identity % 2 == 0)
    images, names = pack.images(rows), ImageNames(table.keys[rows])
    assert images.nbytes >= sum(len(source[k]) for k in table.keys[rows])

    class Decoded(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return names[i], torch.from_numpy(np.asarray(decode_jpeg(images[i], names[i])))

    seen = 0
    for batch_names, arrays in torch.utils.data.DataLoader(Decoded(), batch_size=5, num_workers=2):
        for name, arr in zip(batch_names, arrays):
            expect = np.asarray(decode_jpeg(source[name], name))
            assert np.array_equal(arr.numpy(), expect)
            seen += 1
    assert seen == len(rows)
    assert list(images) == fetch_images(table.subset(np.isin(np.arange(len(table.keys)), rows)))


def test_missing_crops_and_a_damaged_pack_are_named(tmp_path, small_batches):
    data, _ = _curated(tmp_path)
    table = load_labels(data)
    # a crops file rewritten without one curated crop: the pack cannot be complete
    part = tmp_path / "crops" / "crops" / "part-1.parquet"
    t = pq.read_table(part)
    pq.write_table(t.slice(1), part)
    with pytest.raises(CionError, match=r"1 curated crops are missing from the crops Parquet .*v1/000000/1"):
        P.ensure_pack(load_labels(data), data, log=lambda m: None)
    pq.write_table(t, part)
    pack = P.ensure_pack(table, data, log=lambda m: None)
    shard = tmp_path / "curated" / "_pretrain_pack" / pack.root.rsplit("/", 1)[-1] / pack.shards[1]["file"]
    shard.unlink()
    with pytest.raises(CionError, match=f"{shard.name}: missing from the pre-training pack"):
        pack.images(np.arange(len(table.keys)))


def test_the_worker_data_is_its_shard_and_training_resumes_exactly(tmp_path, small_batches):
    from cion_ray.pretrain.loop import LocalContext, WorkerData, train

    data, source = _curated(tmp_path, n_ids=24)
    cfg = load_config(PretrainConfig, None, SMALL + [f"data={data}", "optim.epochs=2"])
    parts = [WorkerData(cfg, r, 2, log=lambda m: None) for r in range(2)]
    assert len(_builds(tmp_path)) == 1  # the second worker found the first one's pack
    assert not set(parts[0].labels) & set(parts[1].labels)
    assert sum(p.read.bytes for p in parts) < 1.5 * sum(map(len, source.values()))
    for p in parts:
        assert [p.images[i] for i in range(len(p.images))] == [source[p.names[i]] for i in range(len(p.names))]

    whole = LocalContext(tmp_path / "a")
    train(cfg, whole, log=lambda m: None)

    class StopAfter(LocalContext):
        def report(self, metrics, checkpoint):
            super().report(metrics, checkpoint)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, StopAfter(tmp_path / "b"), log=lambda m: None)
    resumed = LocalContext(tmp_path / "b")
    train(cfg, resumed, log=lambda m: None)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    for k, v in a["student"].items():
        assert torch.equal(v, b["student"][k]), k


@pytest.mark.s3
def test_the_pack_on_s3(tmp_path, s3_endpoint, small_batches):
    import boto3

    _, source = _curated(tmp_path)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="cion-pack")
    for f in sorted(tmp_path.rglob("*")):
        if f.is_file():
            rel = f.relative_to(tmp_path).as_posix()
            body = f.read_bytes()
            if rel == "curated/_manifest.json":
                body = body.replace(str(tmp_path / "crops").encode(), b"s3://cion-pack/crops")
            s3.put_object(Bucket="cion-pack", Key=rel, Body=body)
    data = "s3://cion-pack/curated"
    table = load_labels(data)
    pack = P.ensure_pack(table, data, log=lambda m: None)
    assert pack.root.startswith("s3://cion-pack/curated/_pretrain_pack/")
    assert len(pack.shards) >= 4
    mine = shard_identities(table.identity, 4, 1, seed=0)
    rows = np.flatnonzero(np.isin(table.identity, mine))
    stats = P.ReadStats()
    assert list(pack.images(rows, stats)) == [source[k] for k in table.keys[rows]]
    assert len(stats.files) < len(pack.shards) and stats.files[0].startswith("s3://")
    again = P.ensure_pack(load_labels(data), data, log=lambda m: None)
    assert again.manifest == pack.manifest  # found in the bucket, not rebuilt
