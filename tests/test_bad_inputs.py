"""Bad inputs and the messages they get: MOT files with impossible values, fuzzed MOT text and
videos, a missing or unreachable output bucket, refused credentials, invalid pool sizes."""
from __future__ import annotations

import fractions
import math
import subprocess
import sys

import av
import boto3
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cion_ray.errors import CionError, ConfigError
from cion_ray.io import fs
from cion_ray.io.mot import read_detections, read_gt
from cion_ray.io.video import iter_frames, write_video
from cion_ray.tracking.manifest import probe_entry

# derandomize: the same examples on every run, so CI never fails by chance; the random search is
# `--hypothesis-seed=random` away (a case it finds becomes a plain test, as below)
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- MOT files: impossible values are malformed lines ------------------------------------------

def test_det_scores_and_boxes_outside_the_contract_are_malformed_lines(tmp_path):
    p = tmp_path / "det.txt"
    lines = ["1,-1,10,20,30,60,0.9,-1,-1,-1",    # good
             "1,-1,10,20,30,60,1e9,-1,-1,-1",    # score above 1
             "1,-1,10,20,30,60,-5,-1,-1,-1",     # score below 0
             "1,-1,10,20,30,60,nan,-1,-1,-1",    # NaN score
             "1,-1,10,20,30,60,inf,-1,-1,-1",    # infinite score
             "1,-1,nan,20,30,60,0.5,-1,-1,-1",   # NaN box
             "1,-1,10,20,0,60,0.5,-1,-1,-1",     # zero width
             "1,-1,10,20,30,-60,0.5,-1,-1,-1",   # negative height
             "1,-1,1e308,20,1e308,60,0.5",       # corner overflows to inf
             "1e30,-1,10,20,30,60,0.5",          # frame beyond any video
             "2,-1,-5,-5,30,60,1,-1,-1,-1"]      # good: partly outside the frame, score 1
    p.write_text("\n".join(lines) + "\n")
    det, bad = read_detections(p)
    assert det.tolist() == [[1, 10, 20, 40, 80, 0.9], [2, -5, -5, 25, 55, 1.0]]
    assert [m.split(":")[1] for m in bad] == [str(i) for i in range(2, 11)]
    assert all(m.startswith(f"{p}:") for m in bad)
    assert "score 1e+09 outside [0, 1]" in bad[0] and "score -5 outside [0, 1]" in bad[1]


def test_gt_values_outside_the_contract_are_malformed_lines(tmp_path):
    p = tmp_path / "gt.txt"
    lines = ["1,1,10,20,30,60,1,1,0.5",       # good
             "1,2,10,20,30,60,1,1,1.5",       # visibility above 1
             "1,3,10,20,30,60,1,1,nan",       # NaN visibility
             "1,4,10,20,30,60,nan,1,1",       # NaN consider flag
             "1,5,10,20,-30,60,1,1,1",        # negative width
             "1,6.5,10,20,30,60,1,1,1",       # fractional id
             "1,7,10,20,30,60,1,3,-1",        # other class: ignored, its visibility unchecked (MOT15)
             "2,1,10,20,30,60"]               # good: no flag / class / visibility columns
    p.write_text("\n".join(lines) + "\n")
    gt, bad = read_gt(p)
    assert gt[:, :2].tolist() == [[1, 1], [2, 1]]
    assert [m.split(":")[1] for m in bad] == ["2", "3", "4", "5", "6"]


_numbers = st.one_of(st.integers(-10, 10 ** 12).map(str),
                     st.floats(allow_nan=True, allow_infinity=True).map(repr),
                     st.sampled_from(["nan", "-inf", "1e999", "-0", "", " ", "0x10", "1_0", "--1", "\x00", "é"]))
_lines = st.one_of(st.lists(_numbers, min_size=0, max_size=12).map(",".join),
                   st.text(max_size=60),
                   st.binary(max_size=40).map(lambda b: b.decode("latin-1")))


def _check_parse(path, text, reader, width):
    try:
        rows, bad = reader(path, text)
    except CionError:
        return
    assert rows.shape[1] == width and rows.dtype == np.float64
    assert np.isfinite(rows).all()
    assert (rows[:, 0] >= 1).all() and (rows[:, 0] == np.round(rows[:, 0])).all()
    assert (rows[:, -4 if width == 6 else -6] < rows[:, -2 if width == 6 else -4]).all()  # x1 < x2
    n_lines = sum(1 for line in text.splitlines() if line.strip())
    assert len(bad) <= n_lines and all(m.startswith(f"{path}:") for m in bad)
    for m in bad:
        assert 1 <= int(m.split(":")[1]) <= len(text.splitlines())
    if width == 6:
        assert ((rows[:, 5] >= 0) & (rows[:, 5] <= 1)).all()
        assert len(rows) + len(bad) == n_lines
    else:
        assert ((rows[:, 7] >= 0) & (rows[:, 7] <= 1)).all()


@FUZZ
@given(st.lists(_lines, max_size=8))
def test_fuzzed_det_text_parses_or_reports_each_line(lines):
    _check_parse("fuzz/det.txt", "\n".join(lines), read_detections, 6)


@FUZZ
@given(st.lists(_lines, max_size=8))
def test_fuzzed_gt_text_parses_or_reports_each_line(lines):
    _check_parse("fuzz/gt.txt", "\n".join(lines), read_gt, 8)


@FUZZ
@given(st.binary(max_size=200))
def test_fuzzed_mot_files_on_disk(tmp_path, data):
    p = tmp_path / "det.txt"
    p.write_bytes(data)
    for reader in (read_detections, read_gt):
        try:
            rows, bad = reader(p)
        except CionError as e:
            assert str(p) in str(e)
            continue
        assert np.isfinite(rows).all() and all(m.startswith(f"{p}:") for m in bad)


# --- videos: each is skipped with a reason or decodes ------------------------------------------

def _probe_and_decode(path, seek_agrees: bool = True) -> str:
    """'skipped: reason' or 'decoded N'; any other exception fails the test. `seek_agrees`: a
    decode from frame 2 gives the full decode's frames from 2 on (not asked of corrupted files)."""
    try:
        e = probe_entry(str(path))
    except CionError as err:
        assert str(path) in str(err)
        return f"skipped: {err}"
    assert e.frames > 0 and e.width > 0 and e.height > 0 and math.isfinite(e.fps) and e.fps > 0
    try:
        got = [(i, f.shape, f.dtype) for i, f in iter_frames(str(path), 0, e.frames)]
        later = [i for i, _ in iter_frames(str(path), min(2, e.frames - 1), e.frames)]
    except CionError as err:
        assert str(path) in str(err)
        return f"skipped: {err}"
    idx = [i for i, _, _ in got]
    assert idx == sorted(set(idx)), "frame indices must strictly increase"
    assert all(len(s) == 3 and s[2] == 3 and d == np.uint8 for _, s, d in got)
    assert later == sorted(set(later))
    if seek_agrees:
        assert later == [i for i in idx if i >= min(2, e.frames - 1)]
    return f"decoded {len(got)}"


@pytest.fixture(scope="module")
def small_video(tmp_path_factory):
    p = tmp_path_factory.mktemp("video") / "small.mp4"
    rng = np.random.default_rng(0)
    write_video(p, (rng.integers(0, 255, (16, 16, 3), np.uint8) for _ in range(12)), fps=25, crf=30)
    return p.read_bytes()


def _write_av(path, fmt, codec, pix, w, h, n, rate):
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = w, h, pix
        for i in range(n):
            f = av.VideoFrame.from_ndarray(np.full((h, w, 3), i * 40 % 256, np.uint8), format="rgb24")
            for pkt in s.encode(f if pix == "rgb24" else f.reformat(format=pix)):
                c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)


@pytest.mark.parametrize("name, args, expect", [
    ("one_pixel.mov", ("mov", "png", "rgb24", 1, 1, 5, 25), "decoded 5"),
    ("one_pixel.avi", ("avi", "mjpeg", "yuvj420p", 1, 1, 5, 25), "decoded 5"),
    ("odd_size.avi", ("avi", "mpeg4", "yuv420p", 3, 5, 5, 25), "decoded 5"),
    ("million_fps.mp4", ("mp4", "libx264", "yuv420p", 16, 16, 5, 1_000_000), "decoded 5"),
    ("millihertz.mkv", ("matroska", "libx264", "yuv420p", 16, 16, 8, fractions.Fraction(1, 1000)), "decoded 8"),
    # 1e6 fps in Matroska's 1/1000 s time base: every frame has timestamp 0
    ("million_fps.mkv", ("matroska", "libx264", "yuv420p", 16, 16, 8, 1_000_000), "skipped"),
])
def test_odd_videos_decode_or_are_skipped(tmp_path, name, args, expect):
    p = tmp_path / name
    _write_av(p, *args)
    assert _probe_and_decode(p).startswith(expect)


def test_empty_truncated_and_random_videos_are_skipped(tmp_path, small_video):
    cases = {"empty.mp4": b"", "random.mp4": np.random.default_rng(1).bytes(4000),
             "head.mp4": small_video[:100], "half.mp4": small_video[:len(small_video) // 2]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        assert _probe_and_decode(tmp_path / name, seek_agrees=False).startswith("skipped"), name


def test_a_video_that_cannot_seek_is_skipped(tmp_path, small_video):
    # found by the fuzzer below: one flipped byte in the index; seeking to frame 2, and then
    # back to frame 0, fails with FFmpeg's EPERM, which escaped as av.error.PermissionError
    b = bytearray(small_video)
    b[2553] = 1
    (tmp_path / "flip.mp4").write_bytes(bytes(b))
    _probe_and_decode(tmp_path / "flip.mp4", seek_agrees=False)


def test_a_truncated_header_without_a_decoder_is_skipped(tmp_path, small_video):
    p = tmp_path / "cut.mp4"  # found by the fuzzer: a stream whose codec context is missing
    p.write_bytes(small_video[:2222])
    _probe_and_decode(p, seek_agrees=False)


@FUZZ
@given(data=st.data())
def test_fuzzed_videos_decode_or_are_skipped(tmp_path, small_video, data):
    b = bytearray(small_video)
    kind = data.draw(st.sampled_from(["truncate", "flip", "splice", "random"]))
    if kind == "truncate":
        b = b[:data.draw(st.integers(0, len(b)))]
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 40))):
            b[data.draw(st.integers(0, len(b) - 1))] = data.draw(st.integers(0, 255))
    elif kind == "splice":
        at = data.draw(st.integers(0, len(b)))
        b[at:at] = data.draw(st.binary(min_size=1, max_size=200))
    else:
        b = bytearray(data.draw(st.binary(max_size=2000)))
    p = tmp_path / "fuzz.mp4"
    p.write_bytes(bytes(b))
    _probe_and_decode(p, seek_agrees=False)


# --- configuration: refused before Ray starts --------------------------------------------------

def test_pool_sizes_are_checked_in_config():
    from cion_ray.curation.config import PoolConfig as CuratePool
    from cion_ray.tracking.config import PoolConfig as TrackPool

    for cls in (CuratePool, TrackPool):
        for kw in ({"actors": 0}, {"actors": -1}, {"cpus_per_actor": 0}, {"cpus_per_actor": -1},
                   {"cpus_per_actor": float("nan")}):
            with pytest.raises(ConfigError, match="pool: need actors >= 1"):
                cls(**kw)


@pytest.mark.parametrize("argv", [["curate", "--crops", "nowhere", "--out", "OUT", "--actors", "0"],
                                  ["track", "--videos", "nowhere", "--out", "OUT", "--mot", "x",
                                   "--cpus-per-actor", "0"]])
def test_cli_refuses_bad_pool_in_one_line_without_ray(tmp_path, argv):
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    code = ("import sys, ray\nfrom cion_ray.cli import main\nrc = main(sys.argv[1:])\n"
            "assert not ray.is_initialized()\nsys.exit(rc)\n")
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "pool: need actors >= 1 and cpus_per_actor > 0" in r.stderr
    assert not (tmp_path / "out").exists()


def test_curate_no_export_prints_no_export_paths(monkeypatch, capsys, tmp_path):
    import types

    import cion_ray.runtime.curate as rc
    from cion_ray.cli import main

    seen = {}

    def fake_run_curate(cfg, overwrite=False, address=None):
        seen["export"] = cfg.export_market
        return types.SimpleNamespace(report={"videos": 2}, seconds=1.0, identities=3, samples=30,
                                     out=cfg.out, current=False, exports=[])

    monkeypatch.setattr(rc, "run_curate", fake_run_curate)
    assert main(["curate", "--crops", str(tmp_path / "c"), "--out", str(tmp_path / "o"), "--no-export"]) == 0
    out = capsys.readouterr().out
    assert seen["export"] is False
    assert "cion_al.json" not in out and "market" not in out and "none (--no-export)" in out


# --- S3: buckets are never created; refused credentials say so ---------------------------------

@pytest.fixture
def s3(s3_endpoint):
    return boto3.client("s3", endpoint_url=s3_endpoint)


def _buckets(s3) -> set[str]:
    return {b["Name"] for b in s3.list_buckets()["Buckets"]}


def test_writes_never_create_a_bucket(s3):
    import pyarrow as pa
    import pyarrow.parquet as pq

    afs, path = fs.arrow_fs("s3://typo-bucket-a/out")
    with pytest.raises(FileNotFoundError, match="s3://typo-bucket-a: no such bucket"):
        afs.create_dir(path, recursive=True)  # what Ray Data's write_parquet does first
    s3fs_, p = fs.get_fs("s3://typo-bucket-b/out")
    with pytest.raises(FileNotFoundError):
        s3fs_.makedirs(p, exist_ok=True)
    with pytest.raises(CionError, match="^s3://typo-bucket-c: no such bucket$"):
        fs.write_json("s3://typo-bucket-c/out/x.json", {})
    with pytest.raises(CionError, match="^s3://typo-bucket-d: no such bucket$"):
        fs.check_output("s3://typo-bucket-d/out")
    with pytest.raises(CionError, match="^s3://typo-bucket-e: no such bucket$"):
        fs.makedirs("s3://typo-bucket-e/out")
    assert not {b for b in _buckets(s3) if b.startswith("typo-bucket")}
    # an existing bucket still takes Parquet written through pyarrow
    s3.create_bucket(Bucket="real-bucket")
    fs.check_output("s3://real-bucket/out")
    afs, path = fs.arrow_fs("s3://real-bucket/out/t")
    afs.create_dir(path, recursive=True)
    pq.write_table(pa.table({"a": [1]}), path + "/x.parquet", filesystem=afs)
    assert fs.list_files("s3://real-bucket/out", (".parquet",)) == ["s3://real-bucket/out/t/x.parquet"]


def test_track_into_a_missing_bucket_fails_in_one_line(s3, tiny_world, capsys):
    from cion_ray.cli import main

    rc = main(["track", "--videos", str(tiny_world / "videos"), "--out", "s3://typo-bucket-track/crops",
               "--mot", str(tiny_world / "mot")])
    err = capsys.readouterr().err
    assert rc == 2 and err == "cion-ray track: error: s3://typo-bucket-track: no such bucket\n"
    assert "typo-bucket-track" not in _buckets(s3)


def _client_error(code: str, message: str, status: int = 403):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize("code", ["403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                                  "ExpiredToken"])
def test_auth_failures_say_access_denied(code, monkeypatch):
    from s3fs.errors import translate_boto_error

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIASECRETKEYID00001")
    raw = _client_error(code, "The AWS Access Key Id AKIASECRETKEYID00001 you provided does not exist")
    for e in (raw, translate_boto_error(raw)):  # as botocore and as s3fs raise it
        msg = str(fs.storage_error("s3://b/x", e, "cannot write"))
        assert msg.startswith("s3://b/x: access denied")
        assert "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" in msg and "instance role" in msg
        assert "AKIASECRETKEYID00001" not in msg
    assert ("AWS_SESSION_TOKEN" in msg) == (code == "ExpiredToken")


def test_missing_credentials_and_other_errors():
    from botocore.exceptions import NoCredentialsError

    assert "no usable credentials" in str(fs.storage_error("s3://b/x", NoCredentialsError(), "cannot read"))
    other = fs.storage_error("s3://b/x", _client_error("SlowDown", "Reduce your request rate", 503), "cannot read")
    assert str(other) == "s3://b/x: cannot read (An error occurred (SlowDown) when calling the PutObject " \
                         "operation: Reduce your request rate)"
    assert str(fs.storage_error("/tmp/x", PermissionError(13, "Permission denied"), "cannot write")) == \
        "/tmp/x: cannot write (Permission denied)"



def test_wrong_credentials_against_an_authenticating_endpoint(auth_s3):
    """A second moto server that checks credentials (INITIAL_NO_AUTH_ACTION_COUNT=0): every
    operation with unknown keys fails with 'access denied' and a hint, and no key in the message."""
    auth_s3("AKIAWRONGKEY00000001", "wrong-secret-wrong-secret-0001")
    calls = [lambda: fs.check_output("s3://b/out"), lambda: fs.exists("s3://b/x"),
             lambda: fs.read_bytes("s3://b/x"), lambda: fs.write_json("s3://b/x.json", {}),
             lambda: fs.list_files("s3://b/in")]
    for call in calls:
        with pytest.raises(CionError) as e:
            call()
        msg = str(e.value)
        assert "access denied" in msg and "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" in msg, msg
        assert "AKIAWRONGKEY00000001" not in msg and "wrong-secret" not in msg
