"""Parquet on s3:// through pyarrow's native S3 client (`fs.arrow_fs`), against moto on loopback."""
from __future__ import annotations

import pickle

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from cion_ray.errors import CionError
from cion_ray.io import fs, stage

BUCKET = "cion-arrow"


@pytest.fixture
def s3(s3_endpoint):
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)
    return client


def _crops(n: int) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table({"crop_id": [f"v0/{i:06d}/1" for i in range(n)],
                     "frame": pa.array(np.arange(n), pa.int32()),
                     "crop": [rng.bytes(int(rng.integers(2000, 9000))) for _ in range(n)]})


def test_arrow_fs_on_s3_is_native_and_round_trips_parquet(s3, s3_endpoint):
    uri = f"s3://{BUCKET}/t/crops.parquet"
    afs, path = fs.arrow_fs(uri)
    assert isinstance(afs, pafs.S3FileSystem) and path == f"{BUCKET}/t/crops.parquet"
    settings = afs.__reduce__()[1][0]
    assert (settings["scheme"], settings["endpoint_override"]) == ("http", s3_endpoint.split("://", 1)[1])
    assert settings["allow_bucket_creation"] is False and settings["secret_key"] is None
    assert settings["request_timeout"] == settings["connect_timeout"] == 60.0
    table = _crops(300)
    pq.write_table(table, path, filesystem=afs, row_group_size=64)
    assert pq.read_table(path, filesystem=afs).equals(table)
    # a projected read; the object is an ordinary one that s3fs (listings, small files) sees too
    assert pq.read_table(path, filesystem=afs, columns=["crop_id"]).column("crop_id").equals(table.column("crop_id"))
    assert fs.list_files(f"s3://{BUCKET}/t") == [uri]
    assert pq.read_table(fs.open_input(uri)).equals(table)
    # Ray pickles the filesystem to its workers: the copy keeps the class and its settings
    again = pickle.loads(pickle.dumps(afs))
    assert type(again) is type(afs) and again.__reduce__()[1][0] == settings
    assert pq.read_table(path, filesystem=again, columns=["frame"]).column("frame").equals(table.column("frame"))


def test_arrow_fs_create_dir_checks_the_bucket_and_writes_no_folder_markers(s3):
    afs, path = fs.arrow_fs(f"s3://{BUCKET}/deep/out/run")
    afs.create_dir(path, recursive=True)  # what Ray Data's write_parquet does first
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="deep/")
    assert listed["KeyCount"] == 0
    missing, mpath = fs.arrow_fs("s3://typo-arrow-bucket/out")
    with pytest.raises(FileNotFoundError, match="^.*s3://typo-arrow-bucket: no such bucket$"):
        missing.create_dir(mpath, recursive=True)
    assert "typo-arrow-bucket" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}



def test_folder_markers_are_not_listed_as_files(s3):
    """pyarrow's copy_files (Ray Train's checkpoint upload) still writes "folder/" keys."""
    for key in ("marked/", "marked/run/", "marked/run/a.parquet"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x" if key.endswith(".parquet") else b"")
    assert fs.list_files(f"s3://{BUCKET}/marked") == [f"s3://{BUCKET}/marked/run/a.parquet"]
    assert stage._listing(f"s3://{BUCKET}/marked") == {"run/a.parquet": 1}

def test_missing_bucket_gives_the_same_clear_error_through_the_native_client(s3):
    uri = "s3://typo-arrow-write/out/x.parquet"
    afs, path = fs.arrow_fs(uri)
    with pytest.raises(OSError) as err:
        pq.write_table(pa.table({"a": [1]}), path, filesystem=afs)
    assert str(fs.storage_error(uri, err.value, "cannot write")) == "s3://typo-arrow-write: no such bucket"
    with pytest.raises(CionError, match="^s3://typo-arrow-write: no such bucket$"):
        fs.check_output("s3://typo-arrow-write/out")
    assert "typo-arrow-write" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}


@pytest.mark.parametrize("message, expected", [
    ("When reading information for key 'x' in bucket 'b': AWS Error ACCESS_DENIED during HeadObject operation: "
     "No response body.", "s3://b/x: access denied (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the "
                          "instance role)"),
    ("When reading information for key 'x' in bucket 'b': AWS Error UNKNOWN (HTTP status 403) during HeadObject "
     "operation: No response body.", "s3://b/x: access denied (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or "
                                     "the instance role)"),
    ("When initiating multiple part upload for key 'x' in bucket 'b': AWS Error INVALID_ACCESS_KEY_ID during "
     "CreateMultipartUpload operation: The AWS Access Key Id you provided does not exist in our records.",
     "s3://b/x: access denied, InvalidAccessKeyId (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the "
     "instance role)"),
    ("When reading information for key 'x' in bucket 'b': AWS Error SLOW_DOWN during HeadObject operation: "
     "Please reduce your request rate.", None),
])
def test_pyarrow_s3_errors_are_classified_like_s3fs_ones(message, expected):
    msg = str(fs.storage_error("s3://b/x", OSError(message), "cannot read"))
    assert msg == (expected or f"s3://b/x: cannot read ({message})")


def test_arrow_s3_settings_follow_the_endpoint_url(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://objects.example.org:9000/")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    opts = fs._arrow_s3_options("b")
    timeouts = {"connect_timeout": 60.0, "request_timeout": 60.0}  # botocore's, as s3fs has them
    assert opts == {"scheme": "https", "endpoint_override": "objects.example.org:9000", "region": "eu-west-3",
                    **timeouts}
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # the S3-specific one wins, as for s3fs
    assert fs._arrow_s3_options("b") == {"scheme": "http", "endpoint_override": "127.0.0.1:9", "region": "eu-west-3",
                                         **timeouts}


def test_the_configured_region_is_read_once_per_environment(monkeypatch):
    import botocore.session

    sessions = []
    real = botocore.session.get_session
    monkeypatch.setattr(botocore.session, "get_session", lambda *a, **k: sessions.append(1) or real(*a, **k))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-2")
    assert [fs._arrow_s3_options("b")["region"] for _ in range(5)] == ["ap-south-2"] * 5
    assert len(sessions) <= 1  # none when an earlier test already read this environment
    monkeypatch.setenv("AWS_DEFAULT_REGION", "sa-east-1")  # another environment: read again
    assert fs._arrow_s3_options("b")["region"] == "sa-east-1"


def test_wrong_credentials_through_the_native_client_say_access_denied(auth_s3):
    """Against a moto server that checks credentials, pyarrow's own errors (not s3fs's) for
    Parquet reads and writes become 'access denied' with the hint, and no key in the message."""
    auth_s3("AKIAWRONGKEY00000002", "wrong-secret-wrong-secret-0002")
    uri = "s3://b/t/x.parquet"
    afs, path = fs.arrow_fs(uri)
    assert isinstance(afs, pafs.S3FileSystem)
    for doing, call in [("cannot read", lambda: pq.read_table(path, filesystem=afs)),
                        ("cannot write", lambda: pq.write_table(pa.table({"a": [1]}), path, filesystem=afs))]:
        with pytest.raises(OSError) as e:
            call()
        msg = str(fs.storage_error(uri, e.value, doing))
        assert msg.startswith(f"{uri}: access denied") and "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" in msg, \
            (msg, str(e.value))
        assert "AKIAWRONGKEY00000002" not in msg and "wrong-secret" not in msg
