"""The tracking stage reading videos from and writing Parquet to S3 (moto's server on loopback)."""
from __future__ import annotations

import boto3
import pyarrow.parquet as pq
import pytest

from cion_ray.io import fs, runs
from cion_ray.runtime.track import run_track
from cion_ray.tracking.config import DetectorConfig, TrackConfig

pytestmark = pytest.mark.usefixtures("ray_session")
VIDEOS = ("v0000", "v0003")


@pytest.fixture(scope="module")
def bucket(s3_endpoint, tiny_world):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="cion")
    for v in VIDEOS:
        s3.upload_file(str(tiny_world / "videos" / f"{v}.mp4"), "cion", f"in/videos/{v}.mp4")
        for name in ("det.txt", "gt.txt"):
            s3.upload_file(str(tiny_world / "mot" / v / name), "cion", f"in/mot/{v}/{name}")
    return "s3://cion"


def _rows(out: str):
    files = runs.committed_files(out, "track")
    tables = []
    for f in files:
        pa_fs, path = fs.arrow_fs(f)
        tables.append(pq.read_table(path, filesystem=pa_fs))
    import pyarrow as pa
    t = pa.concat_tables(tables).sort_by([("video_id", "ascending"), ("frame", "ascending"), ("track_id", "ascending")])
    return t


def test_s3_run_equals_local_run(bucket, tiny_world, tmp_path):
    local_videos = tmp_path / "videos"
    local_videos.mkdir()
    for v in VIDEOS:
        (local_videos / f"{v}.mp4").write_bytes((tiny_world / "videos" / f"{v}.mp4").read_bytes())
    local = TrackConfig(videos=str(local_videos), out=str(tmp_path / "out"),
                        detector=DetectorConfig(kind="mot-det", mot=str(tiny_world / "mot")))
    remote = TrackConfig(videos=f"{bucket}/in/videos", out=f"{bucket}/out",
                         detector=DetectorConfig(kind="mot-det", mot=f"{bucket}/in/mot"))
    r_local = run_track(local, log=lambda m: None)
    r_s3 = run_track(remote, log=lambda m: None)
    assert r_s3.videos_done == list(VIDEOS) == r_local.videos_done
    a, b = _rows(str(tmp_path / "out")), _rows(f"{bucket}/out")
    assert a.num_rows == b.num_rows > 0
    assert a.equals(b)
    # the manifest, report and files live in the bucket
    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="cion", Prefix="out/")["Contents"]}
    assert {"out/_manifest.json", "out/report.json", "out/report.txt"} <= keys
    assert r_s3.report["overall"]["idf1"] == pytest.approx(r_local.report["overall"]["idf1"])
    # a re-run against the bucket skips what is committed there
    again = run_track(remote, log=lambda m: None)
    assert again.videos_done == [] and again.videos_skipped_finished == list(VIDEOS)
