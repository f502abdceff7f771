"""The comparison of pre-training data sources: one arm at a time without Ray (same initialisation
and budget across arms, BatchNorm re-estimation, reuse only of a result made with the same
settings and inputs), the table and plots, the command's errors, and a run on Ray."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cion_ray.compare.config import ArmResult, CompareConfig
from cion_ray.compare.report import bar_chart_png, summarise, table_csv, table_markdown
from cion_ray.compare.run import arm_fingerprint, budget, run_arm
from cion_ray.errors import CionError

pytestmark = pytest.mark.ray  # the curated world comes from the Ray pipeline

TINY = """\
model: {arch: test_resnet, out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, head_bn: true}
views: {global_size: [32, 16], local_size: [16, 8], local_crops: 1}
optim: {epochs: 1, iters_per_epoch: 2, batch_per_worker: 8, k_schedule: "0:4", warmup_epochs: 0,
        centering: sinkhorn, teacher_temp: 0.02, warmup_teacher_temp: 0.02, momentum_teacher: 0.95}
scale: {workers: 2, loader_workers: 0}
"""


@pytest.fixture()
def tiny_cfg(tmp_path, default_curated, default_world):
    profile = tmp_path / "tiny.yaml"
    profile.write_text(TINY)
    torch.set_num_threads(1)
    return CompareConfig(data=str(default_curated), eval_data=str(default_world / "reid"), out=str(tmp_path / "cmp"),
                         profile=str(profile))


def test_arms_share_the_initialisation_and_the_budget(tiny_cfg, tmp_path):
    iters, batch = budget(tiny_cfg)
    assert (iters, batch) == (2, 16)  # the profile's 2 workers x 8 images run as one process of 16
    out = Path(tiny_cfg.out)
    r = {a: run_arm(tiny_cfg, a, 0, out / a, log=lambda m: None)
         for a in ("random", "random_bn", "curated", "supervised")}
    assert r["random"].images_seen == r["random_bn"].images_seen == 0
    assert r["curated"].images_seen == r["supervised"].images_seen == iters * batch
    # the random arm is the initialisation the trained arms start from: the curated arm's
    # before-training figure (the teacher before any step) equals it
    init = r["curated"].history[0]
    assert len(r["curated"].history) == 1 and "eval_mAP" in init
    ckpt = torch.load(out / "curated" / "checkpoint.pt", weights_only=False)
    assert ckpt["eval_init"]["eval_mAP_init"] == pytest.approx(r["random"].metrics["mAP"], abs=1e-6)
    # re-estimated BatchNorm statistics: same weights, other statistics, other features
    rand = torch.load(out / "random" / "backbone.pth")
    bn = torch.load(out / "random_bn" / "backbone.pth")
    weights = [k for k in rand if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert all(torch.equal(rand[k], bn[k]) for k in weights)
    assert not torch.equal(rand["bn1.running_mean"], bn["bn1.running_mean"])
    assert r["random"].metrics != r["random_bn"].metrics
    for a in r.values():
        assert json.loads((out / a.arm / "result.json").read_text())["metrics"] == a.metrics


def test_a_stored_result_is_reused_only_for_the_same_settings_and_inputs(tiny_cfg):
    out = Path(tiny_cfg.out) / "random"
    first = run_arm(tiny_cfg, "random", 0, out, log=lambda m: None)
    again = run_arm(tiny_cfg, "random", 0, out, log=lambda m: None)
    assert again == first  # read back, not recomputed (the stored seconds come back too)
    # another seed, an override, or the profile file edited in place: another result
    assert arm_fingerprint(tiny_cfg, "random", 1) != first.fingerprint
    from dataclasses import replace

    assert arm_fingerprint(replace(tiny_cfg, overrides=("model.out_dim=32",)), "random", 0) != first.fingerprint
    Path(tiny_cfg.profile).write_text(TINY.replace("global_size: [32, 16]", "global_size: [64, 32]"))
    with pytest.raises(CionError, match="other settings or inputs"):
        run_arm(tiny_cfg, "random", 0, out, log=lambda m: None)


def test_summary_table_and_chart():
    rs = [ArmResult("curated", s, {"mAP": m, "rank1": m + 0.1, "mINP": m / 2}, {"mAP": m + 0.05, "rank1": 0.9},
                    images_seen=640) for s, m in ((0, 0.6), (1, 0.8))]
    rs.append(ArmResult("random", 0, {"mAP": 0.5, "rank1": 0.6, "mINP": 0.2}))
    rows = summarise(rs, ("instance", "curated", "random"))
    assert [r["arm"] for r in rows] == ["curated", "random"]  # arms with no result are left out
    assert rows[0]["mAP"] == pytest.approx(0.7) and rows[0]["mAP_std"] == pytest.approx(0.1)
    assert rows[0]["ft_mAP"] == pytest.approx(0.75) and "ft_mAP" not in rows[1]
    md = table_markdown(rows)
    assert "(c) curated identities | 70.0 ± 10.0" in md and "| (e) random init | 50.0 |" in md
    assert table_csv(rows).splitlines()[1].startswith("curated,")
    assert bar_chart_png(rows).startswith(b"\x89PNG")


def test_config_errors():
    with pytest.raises(CionError, match="unknown"):
        CompareConfig(arms=("curated", "nope"))
    with pytest.raises(CionError, match="gt arm needs gt"):
        CompareConfig(arms=("gt",))
    with pytest.raises(CionError, match="imagenet arms need"):
        CompareConfig(arms=("imagenet",))
    assert "gt" in CompareConfig(gt="w").active_arms and "gt" not in CompareConfig().active_arms
    assert CompareConfig(imagenet="w.pth").active_arms[-2:] == ("imagenet", "imagenet_curated")


@pytest.mark.parametrize("args,expect", [
    (["--data", "/no/such/curated", "--eval-data", "{world}/reid"], "/no/such/curated"),
    (["--data", "{curated}", "--eval-data", "{world}/reid", "--arms", "curated,nope"], "unknown"),
    (["--data", "{curated}", "--eval-data", "{world}/reid", "--arms", "gt"], "gt arm needs gt"),
    (["--data", "{curated}", "--eval-data", "{world}/reid", "--profile", "/no/such.yaml"], "/no/such.yaml"),
])
def test_the_command_fails_in_one_line(args, expect, default_curated, default_world, tmp_path, capsys):
    from cion_ray.cli import main

    args = [a.format(world=default_world, curated=default_curated) for a in args]
    assert main(["compare", *args, "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err


def test_run_compare_on_ray(tiny_cfg, ray_session):
    from dataclasses import replace

    from cion_ray.runtime.compare import run_compare

    cfg = replace(tiny_cfg, arms=("random", "random_bn"), seeds=(0, 1))
    r = run_compare(cfg, log=lambda m: None)
    out = Path(cfg.out)
    for f in ("compare.json", "compare.md", "compare.csv", "compare.png", "curves.png"):
        assert (out / f).stat().st_size > 0, f
    assert [row["arm"] for row in r["rows"]] == ["random", "random_bn"]
    assert sorted(r["rows"][0]["seeds"]) == [0, 1] and r["budget"]["images_seen"] == 32
    per_seed = [res["metrics"]["mAP"] for res in r["results"] if res["arm"] == "random"]
    assert r["rows"][0]["mAP"] == pytest.approx(np.mean(per_seed))
