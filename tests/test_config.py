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


def test_unknown_key_names_the_section_where_it_exists():
    from cion_ray.curation.config import CurateConfig
    from cion_ray.pretrain.config import PretrainConfig

    with pytest.raises(ConfigError, match=r"^CurateConfig: unknown key window \(did you mean link\.window\?\)"):
        load_config(CurateConfig, None, ["window=3"])
    with pytest.raises(ConfigError, match=r"unknown key windw \(did you mean window\?\).*every key: docs/config.md$"):
        load_config(CurateConfig, None, ["link.windw=3"])
    with pytest.raises(ConfigError, match=r"did you mean optim\.epochs\?"):  # a close spelling, nested
        load_config(PretrainConfig, None, ["epoch=3"])
    with pytest.raises(ConfigError, match=r"unknown keys bogus, window \(did you mean link\.window\?\)"):
        load_config(CurateConfig, None, ["window=3", "bogus=1"])
    with pytest.raises(ConfigError) as e:
        load_config(CurateConfig, None, ["zzz=1"])
    assert "did you mean" not in str(e.value) and "known here: calibrate, crops, denoise" in str(e.value)


def test_a_yaml_key_in_the_wrong_section(tmp_path):
    from cion_ray.curation.config import CurateConfig

    y = tmp_path / "c.yaml"
    y.write_text("window: 4\n")
    with pytest.raises(ConfigError, match=r"did you mean link\.window\?"):
        load_config(CurateConfig, y)
    y.write_text("link:\n  window: 4\n  stride: 1\n")
    assert load_config(CurateConfig, y).link.window == 4


def test_require_names_the_key():
    from cion_ray.config import require

    require(True, "x.y", ">= 1", 0)
    with pytest.raises(ConfigError, match=r"^x\.y must be >= 1, got 0$"):
        require(False, "x.y", ">= 1", 0)


def test_every_stage_config_constructs_with_defaults():
    """The pipeline nests default-constructed stage configs: no check may reject a default."""
    from cion_ray.configdoc import stages

    for _cmd, cls in stages():
        cls()


def test_a_nested_stage_config_error_says_which_stage():
    from cion_ray.curation.config import CurateConfig
    from cion_ray.tracking.config import TrackConfig

    @dataclasses.dataclass
    class Both:
        track: TrackConfig = dataclasses.field(default_factory=TrackConfig)
        curate: CurateConfig = dataclasses.field(default_factory=CurateConfig)

    with pytest.raises(ConfigError, match=r"^curate: pool: need actors >= 1"):
        load_config(Both, None, ["curate.pool.actors=0"])
    with pytest.raises(ConfigError, match=r"^track: chunks\.frame_step must be >= 1"):
        load_config(Both, None, ["track.chunks.frame_step=0"])
    with pytest.raises(ConfigError, match=r"^Both\.curate\.link: unknown key windw"):  # already located
        load_config(Both, None, ["curate.link.windw=3"])
    with pytest.raises(ConfigError, match=r"^CurateConfig\.link\.window: expected an integer"):
        load_config(CurateConfig, None, ["link.window=x"])
    with pytest.raises(ConfigError, match=r"^pool: need actors"):  # a stage on its own: as before
        load_config(CurateConfig, None, ["pool.actors=0"])
