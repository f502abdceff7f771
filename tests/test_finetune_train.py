"""The fine-tuning loop in one process (LocalContext) on the synthetic world's Market-style split:
a short run from a random initialisation improves held-out retrieval, and a run stopped after a
checkpoint and resumed ends with the same weights as one that never stopped."""
from __future__ import annotations

import math

import pytest
import torch

from cion_ray.config import load_config
from cion_ray.finetune.config import FinetuneConfig

# a tiny backbone at 64x32; AdamW 3e-3 with a cosine decay; no flip at evaluation (half the cost)
SMALL = ["model.arch=test_resnet", "augment.size=64,32", "threads=1", "optim.optimizer=adamw", "optim.lr=3e-3",
         "optim.schedule=cosine", "optim.warmup=0", "scale.loader_workers=0", "eval.flip=false"]


def small_cfg(world, *extra) -> FinetuneConfig:
    return load_config(FinetuneConfig, None, SMALL + [f"data={world / 'reid'}"] + list(extra))


def test_short_finetuning_improves_held_out_map(default_world):
    """40 iterations of 16 x 4 from a random init on the world's 16 training identities, evaluated on
    its 46 held-out query / 92 gallery images. Measured over seeds 0-4: mAP 0.315 -> 0.613,
    0.247 -> 0.528, 0.359 -> 0.541, 0.322 -> 0.463, 0.239 -> 0.492 (at least +0.141); asked here:
    +0.1. (Rank-1 is too coarse on 46 queries to ask more than that it is measured: seed 3 lost one.)"""
    from cion_ray.finetune.loop import finetune

    lines = []
    r = finetune(small_cfg(default_world, "optim.steps=40", "log_every=20"), device="cpu", log=lines.append)
    m = r.metrics
    assert m["step"] == 40 and m["images"] == 40 * 64 and m["identities"] == 16 and m["train_images"] == 144
    assert m["eval_mAP"] >= m["eval_mAP_init"] + 0.1, (m["eval_mAP_init"], m["eval_mAP"])
    assert 0 < m["eval_rank1"] <= 1 and 0 < m["eval_mINP"] <= m["eval_mAP"]
    assert [h["step"] for h in r.history] == [20, 40] and r.history[0]["loss"] > r.history[1]["loss"]
    assert "eval_mAP" not in r.history[0]  # evaluated at the end only (eval.every = 0)
    assert all(h["images_per_s"] > 0 and math.isfinite(h["eta_s"]) for h in r.history)
    assert r.history[-1]["eta_s"] == 0 and r.history[-1]["id_acc"] > 0.5
    assert any(line.startswith("retrieval before fine-tuning") for line in lines)
    assert r.state is not None and r.state["iteration"] == 40 and not r.model.training


class Stop(Exception):
    pass


def test_a_resumed_run_ends_where_an_unbroken_one_does(default_world, tmp_path):
    """Checkpoints every 2 iterations; the first run dies at iteration 5 (after its checkpoint at 4),
    the second resumes from 4. Batches and augmentations are functions of (seed, rank, iteration),
    so the weights equal those of an unbroken run, which here also loads with 2 DataLoader
    processes instead of none."""
    from cion_ray.finetune.loop import finetune

    common = ["optim.steps=7", "log_every=1", "checkpoint_every=2", "eval.enabled=false",
              "optim.identities_per_batch=4", "optim.images_per_identity=2", "augment.size=32,16"]
    whole = finetune(small_cfg(default_world, *common, "scale.loader_workers=2"), "cpu", lambda m: None)

    def die_at_5(metrics):
        if metrics["step"] == 5:
            raise Stop

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Stop):
        finetune(small_cfg(default_world, *common), "cpu", lambda m: None, ckpt_dir=str(ckpt), on_log=die_at_5)
    assert torch.load(ckpt / "checkpoint.pt", weights_only=False)["iteration"] == 4
    lines = []
    resumed = finetune(small_cfg(default_world, *common), "cpu", lines.append, ckpt_dir=str(ckpt))
    assert "resumed at iteration 4" in lines
    assert [h["step"] for h in resumed.history] == [5, 6, 7]
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a), \
        max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert resumed.metrics["loss"] == pytest.approx(whole.metrics["loss"], abs=1e-5)


def test_resuming_on_another_eval_split_drops_the_before_figures(default_world, tmp_path):
    """The eval split is not part of a run's fingerprint: a run resumed with another one does not
    report the retrieval of the initialisation measured on the old split (it cannot measure it
    again: the initial weights are gone); resumed on the same split it keeps them."""
    import shutil

    from cion_ray.finetune.loop import finetune

    torch.set_num_threads(1)
    reid, other = default_world / "reid", tmp_path / "other"
    for split in ("query", "bounding_box_test"):
        shutil.copytree(reid / split, other / split)
    common = ["optim.steps=3", "log_every=1", "checkpoint_every=1", "optim.identities_per_batch=4",
              "optim.images_per_identity=2", "augment.size=32,16"]

    def die_at_2(metrics):
        if metrics["step"] == 2:
            raise Stop

    with pytest.raises(Stop):
        finetune(small_cfg(default_world, *common, f"eval.data={reid}"), "cpu", lambda m: None,
                 ckpt_dir=str(tmp_path / "a"), on_log=die_at_2)
    state = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    assert state["iteration"] == 1 and state["eval_init_data"] == str(reid) and "eval_mAP_init" in state["eval_init"]
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    same = finetune(small_cfg(default_world, *common, f"eval.data={reid}"), "cpu", lambda m: None,
                    ckpt_dir=str(tmp_path / "a"))
    assert same.metrics["eval_mAP_init"] == state["eval_init"]["eval_mAP_init"]
    lines = []
    moved = finetune(small_cfg(default_world, *common, f"eval.data={other}"), "cpu", lines.append,
                     ckpt_dir=str(tmp_path / "b"))
    assert "eval_mAP" in moved.metrics and not any(k.endswith("_init") for k in moved.metrics), moved.metrics
    assert any(f"measured on {reid}, not {other}: it is not reported" in line for line in lines), lines
    assert moved.state["eval_init"] == {} and moved.state["eval_init_data"] == str(other)
