"""The synthetic world's "alt" style and the colour-cast strength: another distribution of people
and imaging, deterministic, recorded in world.json, and no change at all to the default world."""
from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from cion_ray.cli import main
from cion_ray.errors import ConfigError
from cion_ray.io.mot import read_gt
from cion_ray.synth import SynthConfig, generate_world, preset
from cion_ray.synth.alt_appearance import ACCESSORIES, ALT_PALETTE, ALT_PATTERNS, AltIdentity
from cion_ray.synth.alt_figure import render_alt_person
from cion_ray.synth.appearance import PALETTE
from cion_ray.synth.camera import AltConditions, sample_conditions
from cion_ray.synth.plan import make_plan


def _hashes(world) -> dict[str, str]:
    return {str(p.relative_to(world)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(world.rglob("*")) if p.is_file()}


def _small(**kw) -> SynthConfig:
    return preset("tiny", videos=2, frames=12, **kw)


def test_alt_world_is_deterministic_differs_and_is_recorded(tmp_path):
    quiet = lambda m: None  # noqa: E731
    generate_world(_small(style="alt"), tmp_path / "a", workers=1, log=quiet)
    generate_world(_small(style="alt"), tmp_path / "b", workers=2, log=quiet)
    generate_world(_small(), tmp_path / "d", workers=1, log=quiet)
    a, b, d = (_hashes(tmp_path / n) for n in "abd")
    assert a == b
    assert {k for k in a if not k.startswith("reid/")} == {k for k in d if not k.startswith("reid/")}
    for name in ("videos/v0000.mp4", "videos/v0001.mp4", "mot/v0000/gt.txt", "preview.png", "world.json"):
        assert a[name] != d[name], name
    world = json.loads((tmp_path / "a" / "world.json").read_text())
    assert world["config"]["style"] == "alt"
    people = world["people"]
    assert all(p["style"] == "alt" and {"accessories", "head", "legs", "shoulders", "accent"} <= set(p)
               for p in people)
    assert all(p["top_name"] in ALT_PALETTE for p in people)
    assert all(v["conditions"].keys() >= {"saturation", "gamma", "haze"} for v in world["videos"])
    # identities.json keeps its format: one row per gt track
    ids = json.loads((tmp_path / "a" / "identities.json").read_text())
    assert ids and all(set(r) == {"video_id", "track_id", "identity"} for r in ids)
    gt, _ = read_gt(tmp_path / "a" / "mot" / "v0000" / "gt.txt")
    assert {r["track_id"] for r in ids if r["video_id"] == "v0000"} == set(gt[:, 1].astype(int))
    # a changed style is another configuration, not the same world
    assert generate_world(_small(style="alt"), tmp_path / "a", log=quiet).reused
    from cion_ray.errors import CionError
    with pytest.raises(CionError, match="different configuration"):
        generate_world(_small(), tmp_path / "a", log=quiet)


def test_default_world_json_leaves_the_new_keys_out(tiny_world):
    """Worlds written before style and cast existed are still the same world (and the same file)."""
    config = json.loads((tiny_world / "world.json").read_text())["config"]
    assert "style" not in config and "cast" not in config
    assert "saturation" not in json.loads((tiny_world / "world.json").read_text())["videos"][0]["conditions"]


def test_alt_people_come_from_another_distribution():
    default = make_plan(SynthConfig())
    alt = make_plan(SynthConfig(style="alt"))
    people = [alt.people[p] for p in alt.video_identities]
    assert all(isinstance(p, AltIdentity) for p in people)
    assert not {p.top_name for p in people} & set(PALETTE)
    assert {p.pattern for p in people} == set(ALT_PATTERNS)
    assert {a for p in people for a in p.accessories} == set(ACCESSORIES)
    assert np.std([p.legs for p in people]) > 0.02 and np.std([p.shoulders for p in people]) > 0.05
    assert not any(isinstance(p, AltIdentity) for p in default.people.values())
    # more dark tops, less saturated colours
    tops = lambda plan: np.array([plan.people[p].top for p in plan.video_identities], float)  # noqa: E731
    dark = lambda t: np.mean(t.sum(axis=1) < 250)  # noqa: E731
    chroma = lambda t: np.mean(t.max(axis=1) - t.min(axis=1))  # noqa: E731
    assert dark(tops(alt)) > dark(tops(default)) + 0.1
    assert chroma(tops(alt)) < 0.6 * chroma(tops(default))


def test_alt_conditions_are_stronger_and_cast_scales_them():
    rng_d, rng_a = np.random.default_rng(0), np.random.default_rng(0)
    d = [sample_conditions(rng_d) for _ in range(300)]
    a = [sample_conditions(rng_a, "alt") for _ in range(300)]
    assert all(isinstance(c, AltConditions) for c in a)
    spread = lambda cs: np.mean([max(c.cast) / min(c.cast) - 1 for c in cs])  # noqa: E731
    assert spread(a) > 2 * spread(d)
    assert np.ptp([c.gain for c in a]) > np.ptp([c.gain for c in d])
    assert np.mean([c.noise for c in a]) > np.mean([c.noise for c in d])
    assert np.mean([c.blur for c in a]) > np.mean([c.blur for c in d])
    # cast scales the distance from neutral, with the same draws: the rest of the world is unchanged
    for strength in (0.0, 2.0):
        base, scaled = make_plan(_small()), make_plan(_small(cast=strength))
        assert base.people == scaled.people
        for vb, vs in zip(base.videos, scaled.videos):
            assert vb.tracks == vs.tracks and vb.conditions.gain == vs.conditions.gain
            assert np.allclose(np.asarray(vs.conditions.cast) - 1, strength * (np.asarray(vb.conditions.cast) - 1))


def test_alt_figure_is_a_premultiplied_person_of_the_asked_height():
    plan = make_plan(_small(style="alt"))
    for person in list(plan.people.values())[:8]:
        for bh, facing in ((40.0, 1), (120.0, -1)):
            patch = render_alt_person(person, bh, phase=1.0, facing=facing)
            assert patch.alpha.min() >= 0 and patch.alpha.max() <= 1.0 + 1e-6
            assert (patch.rgb <= 255.0 * patch.alpha[..., None] + 1e-3).all()
            rows = np.flatnonzero((patch.alpha > 0.5).any(axis=1))
            assert 0.85 * bh < rows[-1] - rows[0] + 1 < 1.15 * bh


@pytest.mark.parametrize("kw,msg", [
    (dict(style="fancy"), "style must be one of default, alt"),
    (dict(cast=-0.5), "cast must be a finite number >= 0"),
    (dict(cast=math.nan), "cast must be a finite number >= 0"),
])
def test_bad_style_or_cast_refused(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        SynthConfig(**kw)


@pytest.mark.parametrize("args,msg", [
    (["--style", "fancy"], "style must be one of default, alt, got 'fancy'"),
    (["--cast", "-1"], "cast must be a finite number >= 0"),
    (["--set", "style=Alt"], "style must be one of"),
])
def test_cli_bad_style_or_cast_one_line_exit_2(tmp_path, capsys, args, msg):
    rc = main(["synth", "--out", str(tmp_path / "w"), *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("cion-ray synth: error: ") and msg in err
    assert not (tmp_path / "w").exists()


def test_cli_style_and_cast_reach_the_world(tmp_path, capsys):
    rc = main(["synth", "--out", str(tmp_path / "w"), "--preset", "tiny", "--videos", "1", "--frames", "4",
               "--workers", "1", "--style", "alt", "--cast", "1.5"])
    assert rc == 0
    config = json.loads((tmp_path / "w" / "world.json").read_text())["config"]
    assert config["style"] == "alt" and config["cast"] == 1.5
