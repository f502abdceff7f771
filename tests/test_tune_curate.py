"""`cion-ray tune curate` on the tiny world: the search never ends below the default thresholds,
best.yaml is a curate config, the trials score as the pure curation does, and a bad space is
one line (exit 2) before Ray starts."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cion_ray.config import load_config
from cion_ray.curation.config import CurateConfig, DenoiseConfig, LinkConfig

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]

SPACE = """\
metric: f1
trials: 8
space:
  denoise.radius: {choice: [0.15, 0.2]}
  link.threshold: {uniform: [0.05, 0.12]}
  link.k: {randint: [1, 3]}
"""


@pytest.fixture(scope="module")
def searched(tiny_world, ray_session, tmp_path_factory):
    from cion_ray.cli import main
    from cion_ray.runtime.track import run_track
    from cion_ray.tracking.config import DetectorConfig, PoolConfig, TrackConfig

    root = tmp_path_factory.mktemp("tune_curate")
    run_track(TrackConfig(videos=str(tiny_world / "videos"), out=str(root / "crops"),
                          detector=DetectorConfig(kind="mot-det", mot=str(tiny_world / "mot")),
                          pool=PoolConfig(actors=2)), log=lambda m: None)
    (root / "space.yaml").write_text(SPACE)
    rc = main(["tune", "curate", "--crops", str(root / "crops"), "--gt", str(tiny_world), "--out",
               str(root / "search"), "--space", str(root / "space.yaml")])
    assert rc == 0
    return root


def test_best_is_at_least_the_default(searched):
    s = json.loads((searched / "search" / "summary.json").read_text())
    assert s["trials"] == 8
    default = s["default_fixed"]
    assert default["params"] == {"denoise.radius": 0.2, "link.threshold": 0.08, "link.k": 2}
    assert s["best"]["f1"] >= default["f1"] > 0.5
    assert s["best"]["f1"] >= s["default_calibrated"]["f1"] - 1e-9  # the calibrated thresholds are a trial
    for name in ("results.csv", "results.md", "search.png"):
        assert (searched / "search" / name).stat().st_size > 0
    lines = (searched / "search" / "results.csv").read_text().splitlines()
    assert len(lines) == 9 and lines[0].startswith("trial,denoise.radius,link.threshold,link.k,f1,")


def test_best_yaml_is_a_curate_config(searched):
    s = json.loads((searched / "search" / "summary.json").read_text())
    cfg = load_config(CurateConfig, searched / "search" / "best.yaml")
    best = s["best"]["params"]
    assert cfg.denoise.radius == best["denoise.radius"] and cfg.link.k == best["link.k"]
    assert cfg.link.threshold == pytest.approx(best["link.threshold"])
    assert not cfg.calibrate.enabled
    assert cfg.crops == cfg.out == cfg.gt == ""  # the command line gives them
    assert cfg.export_market  # the base config's, not the search's


def test_trials_score_as_the_pure_curation(searched, tiny_world, tmp_path):
    """The default trial's F1 is curate_local's over the samples it keeps; a MOT folder with the
    ground truth of some videos scores those alone."""
    from cion_ray.curation.core import curate_local
    from cion_ray.evaluate.clustering import pairwise_prf
    from cion_ray.runtime.tune_curate import load_search_data
    from cion_ray.tune.curate import evaluate

    cfg = CurateConfig(crops=str(searched / "crops"), out=str(searched / "search"), gt=str(tiny_world))
    videos = ["v0000", "v0001", "v0002", "v0003"]
    data = load_search_data(cfg, videos, log=lambda m: None)
    assert data.scored == 4
    r = curate_local(data.videos, DenoiseConfig(), LinkConfig())
    lab = np.concatenate(r.sample_labels())
    gt = np.concatenate(data.gt)
    want = pairwise_prf(gt[lab >= 0], lab[lab >= 0])["f1"]
    s = json.loads((searched / "search" / "summary.json").read_text())
    assert evaluate(data, DenoiseConfig(), LinkConfig())["f1"] == pytest.approx(want)
    assert s["default_fixed"]["f1"] == pytest.approx(want)

    mot = tmp_path / "mot"
    for v in videos[:2]:
        shutil.copytree(tiny_world / "mot" / v, mot / v)
    part = load_search_data(replace(cfg, gt=str(mot)), videos, log=lambda m: None)
    assert part.scored == 2 and part.gt[2] is None
    assert 0 < evaluate(part, DenoiseConfig(), LinkConfig())["f1"] <= 1


@pytest.mark.parametrize("space, message", [
    ("space:\n  denoise.radiuss: {uniform: [0.1, 0.2]}\n", "space.denoise.radiuss is not a key of CurateConfig"),
    ("space:\n  link.threshold: {uniform: [0.2, 0.1]}\n", "empty range"),
    ("metric: mAP\nspace:\n  link.threshold: {uniform: [0.05, 0.1]}\n", "metric 'mAP' does not exist"),
    ("space:\n  embed.batch: {choice: [8, 16]}\n", "cannot be searched"),
    ("space:\n  link.window: {choice: [1, 6]}\n", "link.window"),
])
def test_bad_space_is_one_line_before_ray(tmp_path, space, message):
    (tmp_path / "space.yaml").write_text(space)
    code = ("import sys; from cion_ray.cli import main; "
            f"rc = main(['tune', 'curate', '--crops', {str(tmp_path)!r}, '--gt', {str(tmp_path)!r}, "
            f"'--out', {str(tmp_path / 'out')!r}, '--space', {str(tmp_path / 'space.yaml')!r}]); "
            "import cion_ray.tune.curate_command; print('ray' in sys.modules and __import__('ray').is_initialized()); "
            "sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cion-ray tune: error: ") and message in lines[0], p.stderr
    assert p.stdout.strip() == "False"  # Ray never started
    assert not (tmp_path / "out").exists()


def test_unknown_metric_flag(tmp_path):
    from cion_ray.cli import build_parser
    from cion_ray.errors import ConfigError
    from cion_ray.tune.curate_command import prepare

    args = build_parser().parse_args(["tune", "curate", "--crops", "c", "--gt", "g", "--out", "o",
                                      "--metric", "map", "--space", str(ROOT / "configs" / "tune-curate.yaml")])
    with pytest.raises(ConfigError, match="--metric 'map' does not exist"):
        prepare(args)
    args.metric, args.trials = "nmi", 3
    spec, base = prepare(args)  # the shipped space is valid
    assert spec.metric == "nmi" and spec.trials == 3 and base.calibrate.enabled
    assert set(spec.keys) == {"denoise.radius", "denoise.merge", "link.threshold", "link.k", "link.drift",
                              "link.global_ratio", "link.global_scale"}
