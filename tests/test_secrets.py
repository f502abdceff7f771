"""Secrets never leak: S3 credentials and the Ray token, set to distinctive values, appear in no
output, log, report, written config, object or error message of a tracking + curation run into
S3 and into a local folder."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import boto3
import pytest

SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIALEAKCANARY7F3K9Q",
    "AWS_SECRET_ACCESS_KEY": "leak-canary-secret-9f8e7d6c5b4a3928",
    "AWS_SESSION_TOKEN": "leak-canary-session-0a1b2c3d4e5f6071",
    "RAY_AUTH_TOKEN": "leak-canary-raytoken-5e6f7a8b9c0d1e2f",
}

# One process, one local Ray: track and curate into the bucket and into a folder, then two
# failing commands (a missing bucket, a missing input), each through the command line.
SCRIPT = r"""
import sys
from cion_ray.cli import main
world, local, bucket = sys.argv[1:4]
cmds = [
    ["track", "--videos", f"{world}/videos", "--mot", f"{world}/mot", "--out", f"{bucket}/crops"],
    ["curate", "--crops", f"{bucket}/crops", "--out", f"{bucket}/curated", "--window", "2", "--stride", "1"],
    ["track", "--videos", f"{world}/videos", "--mot", f"{world}/mot", "--out", f"{local}/crops"],
    ["curate", "--crops", f"{local}/crops", "--out", f"{local}/curated", "--window", "2", "--stride", "1"],
    ["track", "--videos", f"{world}/videos", "--mot", f"{world}/mot", "--out", "s3://leak-no-such-bucket/x"],
    ["curate", "--crops", f"{bucket}/nothing-here", "--out", f"{bucket}/curated2"],
]
for argv in cmds:
    print("rc", argv[0], main(argv), flush=True)
"""


@pytest.fixture
def small_world(tiny_world, tmp_path):
    """One video of the tiny world with its MOT files (each stage's fixed cost dominates anyway)."""
    w = tmp_path / "world"
    (w / "videos").mkdir(parents=True)
    shutil.copy(tiny_world / "videos" / "v0000.mp4", w / "videos")
    shutil.copytree(tiny_world / "mot" / "v0000", w / "mot" / "v0000")
    return w


def _leaks(data: bytes) -> list[str]:
    return [k for k, v in SECRETS.items() if v.encode() in data]


def test_no_secret_in_outputs_logs_or_errors(s3_endpoint, small_world, tmp_path):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="leak-test")
    local = tmp_path / "out"
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))  # short: Ray's socket paths have a limit
    try:
        env = {**os.environ, **SECRETS, "RAY_TMPDIR": str(ray_tmp)}
        env.pop("RAY_ADDRESS", None)
        r = subprocess.run([sys.executable, "-c", SCRIPT, str(small_world), str(local), "s3://leak-test"],
                           env=env, capture_output=True, timeout=600)
        out = r.stdout.decode(errors="replace")
        assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
        assert [line for line in out.splitlines() if line.startswith("rc ")] == [
            "rc track 0", "rc curate 0", "rc track 0", "rc curate 0", "rc track 2", "rc curate 2"], out
        assert "s3://leak-no-such-bucket: no such bucket" in r.stderr.decode()

        leaks = {"stdout": _leaks(r.stdout), "stderr": _leaks(r.stderr)}
        written = [p for p in local.rglob("*") if p.is_file()]
        assert any(p.name == "_manifest.json" for p in written)
        for p in written:
            leaks[str(p)] = _leaks(p.read_bytes())
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="leak-test")
                for o in page.get("Contents", [])]
        assert "crops/_manifest.json" in keys and "curated/_manifest.json" in keys
        for k in keys:
            leaks[f"s3://leak-test/{k}"] = _leaks(s3.get_object(Bucket="leak-test", Key=k)["Body"].read())
        ray_logs = [p for p in ray_tmp.rglob("*") if p.is_file() and not p.is_socket()]
        assert ray_logs, "Ray wrote no logs where expected"
        for p in ray_logs:
            try:
                leaks[str(p)] = _leaks(p.read_bytes())
            except OSError:
                pass  # sockets and files Ray removed meanwhile
        assert {where: found for where, found in leaks.items() if found} == {}
        assert "leak-no-such-bucket" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_error_messages_redact_secrets(monkeypatch):
    """botocore messages can carry the access key id (and a signing error the string to sign);
    every message fs.py builds from an exception is redacted."""
    from botocore.exceptions import ClientError

    from cion_ray.io import fs

    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    text = " ".join(SECRETS.values())
    errors = [ClientError({"Error": {"Code": "SlowDown", "Message": text}}, "GetObject"),
              OSError(5, text), ValueError(text), RuntimeError(f"Credential={SECRETS['AWS_ACCESS_KEY_ID']}/x")]
    for e in errors:
        for uri in ("s3://b/x", "/tmp/x"):
            msg = str(fs.storage_error(uri, e, "cannot read"))
            assert not _leaks(msg.encode()), msg
    assert fs.redact(text) == "*** *** *** ***"


def _job(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"job_{name}", Path(__file__).resolve().parents[1] / "jobs" /
                                                  f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_command_line_errors_are_redacted(monkeypatch, capsys, tmp_path):
    """A CionError built elsewhere from a library's message is redacted where it is printed."""
    import cion_ray.runtime.curate as rc
    import cion_ray.runtime.track as rt
    from cion_ray.cli import main
    from cion_ray.errors import CionError

    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)

    def boom(*a, **k):
        raise CionError("s3://b/x: refused " + " ".join(SECRETS.values()))

    monkeypatch.setattr(rc, "run_curate", boom)
    monkeypatch.setattr(rt, "run_track", boom)
    job_curate, job_track = (_job(n) for n in ("curate", "track"))
    monkeypatch.setattr(job_curate, "run_curate", boom)
    monkeypatch.setattr(job_track, "run_track", boom)
    crops = ["--crops", str(tmp_path / "c"), "--out", str(tmp_path / "o")]
    track = ["--videos", str(tmp_path / "v"), "--out", str(tmp_path / "o"), "--mot", str(tmp_path)]
    for run in (lambda: main(["curate", *crops]), lambda: main(["track", *track]),
                lambda: job_curate.main(crops), lambda: job_track.main(track)):
        assert run() == 2
        err = capsys.readouterr().err
        assert "refused *** *** *** ***" in err and not _leaks(err.encode()), err
