"""Shared fixtures: synthetic worlds generated once per test session."""
from __future__ import annotations

import logging
import os
import socket

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.pop("RAY_ADDRESS", None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# S3 in tests is always a moto server on loopback. Set before Ray starts so its workers see it too.
S3_PORT = _free_port()
os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{S3_PORT}"
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
for _k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_k, None)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint (moto's server mode) on loopback for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    yield os.environ["AWS_ENDPOINT_URL"]
    server.stop()


@pytest.fixture
def auth_s3(monkeypatch):
    """A second moto server that checks credentials (INITIAL_NO_AUTH_ACTION_COUNT=0), this test's
    endpoint; -> a function that sets the (wrong) keys the test should be refused with."""
    import subprocess
    import sys
    import time

    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.2)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")

    def keys(key_id: str, secret: str) -> None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)

    yield keys
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance (2 CPUs) shared by every test that needs Ray."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=1 << 30,
             logging_level=logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.wait_for_min_actors_s = 300
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The `tiny` preset world (4 videos x 60 frames), generated with 2 workers."""
    from cion_ray.synth import generate_world, preset

    out = tmp_path_factory.mktemp("tiny_world")
    generate_world(preset("tiny"), out, workers=2, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def default_world(tmp_path_factory):
    """The default world (what `make demo` uses), generated once per session."""
    from cion_ray.synth import SynthConfig, generate_world

    out = tmp_path_factory.mktemp("default_world")
    generate_world(SynthConfig(), out, workers=2, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def default_curated(default_world, ray_session, tmp_path_factory):
    """The default world tracked (public detections) and curated once per session: the curated
    output, read-only for the tests that use it."""
    from cion_ray.curation.config import CurateConfig, PoolConfig
    from cion_ray.runtime.curate import run_curate
    from cion_ray.runtime.track import run_track
    from cion_ray.tracking.config import DetectorConfig, PoolConfig as TrackPool, TrackConfig

    root = tmp_path_factory.mktemp("default_curated")
    run_track(TrackConfig(videos=str(default_world / "videos"), out=str(root / "crops"),
                          detector=DetectorConfig(kind="mot-det", mot=str(default_world / "mot")),
                          pool=TrackPool(actors=2)), log=lambda m: None)
    run_curate(CurateConfig(crops=str(root / "crops"), out=str(root / "curated"), gt=str(default_world),
                            pool=PoolConfig(actors=2)), log=lambda m: None)
    return root / "curated"
