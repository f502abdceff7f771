"""Shared fixtures: synthetic worlds generated once per test session."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.pop("RAY_ADDRESS", None)


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
