"""The small pre-training profile (configs/small.yaml) learns: a run of it on the curated default
world raises the teacher's held-out mAP above its own random initialisation, and the teacher's
targets stay far from uniform collapse. The plain loop (no Ray Train: the algorithm under test),
the profile's length (160 iterations of 64 images: about 3 minutes on 2 cores), one process as
the profile has it (one worker).
Seed 0 runs in the default suite; further seeds are marked slow (`make test-all`)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from cion_ray.config import load_config
from cion_ray.pretrain.config import PretrainConfig
from cion_ray.pretrain.loop import LocalContext, train

pytestmark = pytest.mark.ray  # the curated world comes from the Ray pipeline
SMALL = Path(__file__).resolve().parents[1] / "configs" / "small.yaml"
# Measured (2026-11-25, AMD EPYC, 2 cores), gain of held-out mAP over the initialisation after the
# profile's 160 iterations: init seeds 0 / 1 / 2 on the default world +0.174 / +0.241 / +0.103;
# with the curated rows in other orders (before labels were made canonical; another order is
# another sampling of batches): +0.172 / +0.165 / +0.154, and +0.187 and +0.075 in two Ray runs
# of seed 0. Float rounding on another processor is another trajectory too, so the margin sits
# below the smallest gain seen (0.075); the benchmark's +0.10 is a target for the typical run.
MARGIN = 0.05


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_the_small_profile_improves_held_out_retrieval_over_its_initialisation(default_curated, default_world, seed):
    cfg = load_config(PretrainConfig, SMALL, [f"data={default_curated}", f"seed={seed}", "out=unused",
                                                            f"eval_data={default_world / 'reid'}"])
    history: list[dict] = []
    train(cfg, LocalContext(), log=lambda m: None, on_epoch=history.append)
    last = history[-1]
    print(f"seed {seed}: held-out mAP {last['eval_mAP_init']:.3f} at init -> "
          + " ".join(f"{m['eval_mAP']:.3f}" for m in history if "eval_mAP" in m))
    # the bar is the random initialisation as built (eval-mode BatchNorm with its default
    # statistics), the stronger of the two random baselines on this world
    assert last["eval_mAP"] >= last["eval_mAP_init"] + MARGIN, [round(m["eval_mAP"], 3) for m in history]
    assert last["eval_rank1"] >= last["eval_rank1_init"], (last["eval_rank1_init"], last["eval_rank1"])
    ln_d = math.log(cfg.model.out_dim)
    for m in history:  # the targets never approach uniform collapse (ln D)
        assert m["teacher_entropy"] < ln_d - 1.0, m
