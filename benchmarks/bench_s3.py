"""Parquet on s3:// through pyarrow's native S3 client vs s3fs wrapped in PyFileSystem(FSSpecHandler).

A crops-like table (a binary column of ~8 KB incompressible JPEG-like bytes, plus the small
metadata columns the crops Parquet files carry) is written to and read back from an S3 endpoint,
by default a moto server started on loopback in its own process (so its Python threads do not
share the client's GIL). Each operation is timed `--repeats` times per client; the medians are
reported (wall time, and the client process's CPU time), next to a boto3 single-request PUT / GET
of the same file as the endpoint's own floor, and the number of requests moto answered for one call.

    python benchmarks/bench_s3.py --mb 150 --repeats 5
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results, median  # noqa: E402

BUCKET = "bench-s3"
META = ["crop_id", "video_id", "track_id", "frame", "x1", "y1", "x2", "y2"]


def _serve(port: int, requests) -> None:
    """A moto server that counts the requests it answers into `requests` (a shared int)."""
    import logging

    from moto.server import ThreadedMotoServer

    class Count(logging.Handler):
        def emit(self, record):
            with requests.get_lock():
                requests.value += 1

    log = logging.getLogger("werkzeug")  # one record per request answered
    log.handlers, log.propagate = [Count()], False
    log.setLevel(logging.INFO)
    ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False).start()
    while True:
        time.sleep(3600)


def start_moto():
    """(process, endpoint URL, shared request counter)"""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    requests = ctx.Value("q", 0)
    proc = ctx.Process(target=_serve, args=(port, requests), daemon=True)
    proc.start()
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, f"http://127.0.0.1:{port}", requests
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("moto did not start")


def crops_table(total_mb: float, seed: int = 0) -> pa.Table:
    """Rows of 4-12 KB random bytes (mean 8 KB) until `total_mb`, with crop metadata columns."""
    rng = np.random.default_rng(seed)
    n = int(total_mb * 2**20 / 8192)
    sizes = rng.integers(4096, 12289, n)
    blob = rng.bytes(int(sizes.sum()))
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    crop = pa.LargeBinaryArray.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(blob)])
    frame = np.arange(n, dtype=np.int32)
    video = frame // 5000
    boxes = rng.uniform(0, 1000, (4, n)).astype(np.float32)
    return pa.table({"crop_id": [f"v{v:03d}/{f:06d}/{t}" for v, f, t in zip(video, frame, frame % 37)],
                     "video_id": [f"v{v:03d}" for v in video], "track_id": frame % 37, "frame": frame,
                     "x1": boxes[0], "y1": boxes[1], "x2": boxes[2], "y2": boxes[3],
                     "crop": crop.cast(pa.binary())})


def timed(fn, repeats: int, requests=None, counts: list | None = None) -> tuple[float, float]:
    """Medians of `repeats` calls: (wall seconds, this process's CPU seconds, all threads). With a
    moto counter, one extra call's request count goes to `counts`."""
    if requests is not None:
        before = requests.value
        fn()
        time.sleep(0.2)  # the server logs a request after answering it
        counts.append(requests.value - before)
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return median(wall), median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=150, help="size of the crop column in MiB")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--row-group", type=int, default=2000, help="rows per row group (~16 MB at 8 KB a crop)")
    ap.add_argument("--endpoint", help="an S3 endpoint URL to use instead of a loopback moto server")
    ap.add_argument("--bucket", default=BUCKET, help="an existing bucket there (with --endpoint)")
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()

    proc = requests = None
    if args.endpoint:
        endpoint = args.endpoint
    else:
        proc, endpoint, requests = start_moto()
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1"}.items():
            os.environ[k] = v
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    os.environ.pop("AWS_ENDPOINT_URL_S3", None)

    import boto3

    from cion_ray.io import fs

    client = boto3.client("s3", endpoint_url=endpoint)
    if not args.endpoint:
        client.create_bucket(Bucket=args.bucket)
    table = crops_table(args.mb)
    file_mb = table.nbytes / 2**20
    print(f"table: {table.num_rows} rows, {file_mb:.0f} MiB in memory", flush=True)

    uri = f"s3://{args.bucket}/bench/crops.parquet"
    native, path = fs.arrow_fs(uri)
    wrapped = pafs.PyFileSystem(pafs.FSSpecHandler(fs.get_fs(uri)[0]))  # what arrow_fs gave before
    clients = {"native S3FileSystem": native, "PyFileSystem(FSSpecHandler(s3fs))": wrapped}
    results: dict[str, dict[str, tuple[float, float]]] = {}
    counts: dict[str, dict[str, int]] = {}
    ops = {"write": lambda afs, key: pq.write_table(table, key, filesystem=afs, row_group_size=args.row_group),
           "read all columns": lambda afs, key: pq.read_table(key, filesystem=afs),
           "read metadata columns": lambda afs, key: pq.read_table(key, filesystem=afs, columns=META),
           "read crop column": lambda afs, key: pq.read_table(key, filesystem=afs, columns=["crop_id", "crop"])}
    for name, afs in clients.items():
        key = path + "." + ("native" if afs is native else "wrapped")
        r, c = results[name], counts[name] = {}, {}
        for op, fn in ops.items():
            n: list[int] = []
            r[op] = timed(lambda: fn(afs, key), args.repeats, requests, n)
            c[op] = n[0] if n else 0
            if op == "write":
                assert pq.read_table(key, filesystem=afs).equals(table), f"{name}: read back differs"
        print(name, {k: (round(v[0], 3), round(v[1], 3)) for k, v in r.items()}, c, flush=True)
    obj = path.split("/", 1)[1] + ".native"
    size_mb = client.head_object(Bucket=args.bucket, Key=obj)["ContentLength"] / 2**20
    body = client.get_object(Bucket=args.bucket, Key=obj)["Body"].read()
    floor = {"write": timed(lambda: client.put_object(Bucket=args.bucket, Key="bench/raw", Body=body),
                            args.repeats)[0],
             "read all columns": timed(lambda: client.get_object(Bucket=args.bucket, Key=obj)["Body"].read(),
                                       args.repeats)[0]}
    if proc is not None:
        proc.kill()

    a, b = (results[n] for n in clients)
    ca, cb = (counts[n] for n in clients)
    lines = ["| operation | native S3FileSystem (s) | PyFileSystem(FSSpecHandler(s3fs)) (s) | speed-up | "
             "boto3 one-request floor (s) | client CPU native / s3fs (s) | requests native / s3fs |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for op in ops:
        fl = f"{floor[op]:.2f}" if op in floor else ""
        req = f"{ca[op]} / {cb[op]}" if requests is not None else ""
        lines.append(f"| {op} | {a[op][0]:.2f} | {b[op][0]:.2f} | {b[op][0] / a[op][0]:.2f}x | {fl} | "
                     f"{a[op][1]:.2f} / {b[op][1]:.2f} | {req} |")
    body_md = (f"Endpoint: {'moto on loopback (own process)' if proc is not None else endpoint}. "
               f"File: {table.num_rows} rows, {size_mb:.0f} MiB in S3 ({file_mb:.0f} MiB in memory), "
               f"row groups of {args.row_group} rows; medians of {args.repeats} runs.\n\n" + "\n".join(lines) + "\n")
    print(body_md)
    if not args.no_append:
        append_results("bench_s3: Parquet on S3, native S3FileSystem vs s3fs in PyFileSystem", body_md)


if __name__ == "__main__":
    main()
