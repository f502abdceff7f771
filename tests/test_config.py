import dataclasses

import pytest

from cion_ray.config import load_config
from cion_ray.errors import ConfigError
from cion_ray.synth import SynthConfig, preset


def test_overrides_nested_and_typed(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("videos: 5\ndet:\n  miss_rate: 0.2\n")
    cfg = load_config(SynthConfig, y, ["det.jitter=0.1", "seed=7", "reid.train_identities=3"])
    assert cfg.videos == 5 and cfg.seed == 7
    assert cfg.det.miss_rate == 0.2 and cfg.det.jitter == 0.1 and cfg.reid.train_identities == 3
    assert cfg.frames == SynthConfig().frames


@pytest.mark.parametrize("override", ["bogus=1", "det.bogus=2", "reid.nope=3"])
def test_unknown_keys_rejected(override):
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(SynthConfig, None, [override])


@pytest.mark.parametrize("override,msg", [("videos=0", "videos"), ("frames=-1", "frames"),
                                          ("cameras=12", "cameras"), ("videos=x", "integer"),
                                          ("det.miss_rate=2", "miss_rate"), ("width=63", "frame size")])
def test_invalid_values_rejected(override, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(SynthConfig, None, [override])


def test_missing_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(SynthConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(SynthConfig, bad)


def test_presets():
    assert preset("tiny").videos < SynthConfig().videos < preset("bench").videos
    assert dataclasses.replace(preset("tiny"), seed=3).seed == 3
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("huge")
