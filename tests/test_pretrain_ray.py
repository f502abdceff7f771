"""Pre-training on Ray Train with a local 2-CPU Ray: 2 workers on CPU (gloo), a worker killed
mid-run, stop and resume, exports; the training images are the synthetic world's Market-style
training split as a CION-AL JSON."""
from __future__ import annotations

import json
import math

import pytest
import torch

from cion_ray.config import load_config
from cion_ray.errors import CionError
from cion_ray.pretrain.config import PretrainConfig

pytestmark = pytest.mark.ray

SMALL = ["model.arch=test_resnet_ibn", "model.out_dim=256", "model.hidden_dim=64", "model.bottleneck_dim=32",
         "views.local_crops=2", "views.global_size=64,32", "views.local_size=32,16", "scale.loader_workers=0",
         "optim.batch_per_worker=8", "optim.warmup_epochs=1", "optim.k_schedule=0:2,0.5:4"]


@pytest.fixture(scope="module")
def cion_al(default_world, tmp_path_factory):
    """The world's reid/bounding_box_train as CION-AL JSON: 16 identities, 144 images."""
    out = tmp_path_factory.mktemp("cion_al")
    train = default_world / "reid" / "bounding_box_train"
    (out / "images").symlink_to(train)  # paths inside the JSON's folder
    entries = [{"file_path": f"images/{f.name}", "id": int(f.name[:4])} for f in sorted(train.glob("*.jpg"))]
    (out / "cion_al.json").write_text(json.dumps(entries))
    return out / "cion_al.json"


def cfg_for(data, out, *extra) -> PretrainConfig:
    return load_config(PretrainConfig, None, SMALL + [f"data={data}", f"out={out}"] + list(extra))


def test_two_workers_survive_a_killed_worker_and_export(ray_session, cion_al, default_world, tmp_path):
    from cion_ray.pretrain.export import strip_released_prefix
    from cion_ray.runtime.pretrain import run_pretrain
    from cion_ray.zoo.factory import create_backbone

    out = tmp_path / "run"
    cfg = cfg_for(cion_al, out, "scale.workers=2", "optim.epochs=3", "optim.iters_per_epoch=3",
                  "fault_drill_iteration=5", f"eval_data={default_world / 'reid'}")
    r = run_pretrain(cfg, log=lambda m: None)
    assert (out / "_faults" / "killed-at-5").exists(), "the drill killed a worker"
    history = json.loads((out / "metrics.json").read_text())
    assert [m["epoch"] for m in history] == [1, 2, 3]
    assert [m["k"] for m in history] == [2, 2, 4]
    assert all(math.isfinite(m["loss"]) and m["images_per_s"] > 0 for m in history)
    assert history[-1]["iteration"] == 9 and history[-1]["identities"] == 16
    assert all(m["teacher_spread"] < 1e-6 for m in history), "both workers hold the same teacher"
    # retrieval before training survives the restart (it is kept in the checkpoint)
    assert all(0 < m["eval_mAP"] <= 1 and m["eval_mAP_init"] == history[0]["eval_mAP_init"] for m in history)
    assert r.metrics["epoch"] == 3
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    teacher = torch.load(r.exports["teacher.pth"], weights_only=True)["teacher"]
    fresh = create_backbone("test_resnet_ibn")
    fresh.load_state_dict(strip_released_prefix(teacher), strict=True)
    # a second run into the same folder needs --resume
    with pytest.raises(CionError, match="pass --resume"):
        run_pretrain(cfg, log=lambda m: None)


def test_training_lowers_the_loss_against_the_same_run_without_learning(ray_session, cion_al, tmp_path):
    """2 workers, a short run: the loss and its KL part (what the student's gradients lower) stay
    below those of the same run with the optimizer off (lr 0: student and teacher never move) at
    every epoch after the first. (The loss itself need not fall at this scale: the centre
    flattens the teacher, whose entropy, outside the student's reach, climbs toward ln out_dim;
    curves.png shows the split.)"""
    from cion_ray.runtime.pretrain import run_pretrain

    common = ["scale.workers=2", "optim.epochs=4", "optim.iters_per_epoch=4", "optim.k_schedule=0:2"]
    runs = {}
    for lr in ("0.05", "0"):
        out = tmp_path / f"lr{lr}"
        run_pretrain(cfg_for(cion_al, out, *common, f"optim.lr={lr}"), log=lambda m: None)
        runs[lr] = json.loads((out / "metrics.json").read_text())
        assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    learn, still = runs["0.05"], runs["0"]
    for m in learn + still:
        assert math.isclose(m["teacher_entropy"] + m["kl"], m["loss"], rel_tol=1e-9)
        assert 0 < m["teacher_entropy"] <= math.log(256) + 1e-6 and m["kl"] > 0
        assert 0 < m["teacher_mean_entropy"] <= math.log(256) + 1e-6
    assert learn[0]["epoch"] == 1 and len(learn) == len(still) == 4
    for a, b in zip(learn[1:], still[1:]):
        assert a["kl"] < b["kl"] - 0.1, (learn, still)
        assert a["loss"] < b["loss"], (learn, still)


def test_stop_and_resume_continues_from_the_checkpoint(ray_session, cion_al, tmp_path):
    """A run that dies (no restarts allowed) resumes from its last checkpoint and ends with the
    same teacher as the same run done in one go in a plain process."""
    from cion_ray.pretrain.loop import LocalContext, train
    from cion_ray.runtime.pretrain import run_pretrain

    out = tmp_path / "run"
    common = ["scale.workers=1", "optim.epochs=3", "optim.iters_per_epoch=2", "scale.cpus_per_worker=1"]
    with pytest.raises(CionError, match="pre-training failed"):
        run_pretrain(cfg_for(cion_al, out, *common, "scale.max_failures=0", "fault_drill_iteration=3"),
                     log=lambda m: None)
    assert [m["epoch"] for m in json.loads((out / "metrics.json").read_text())] == [1]
    with pytest.raises(CionError, match="another configuration"):
        run_pretrain(cfg_for(cion_al, out, *common, "optim.lr=0.001"), resume=True, log=lambda m: None)
    r = run_pretrain(cfg_for(cion_al, out, *common), resume=True, log=lambda m: None)
    assert [m["epoch"] for m in json.loads((out / "metrics.json").read_text())] == [1, 2, 3]
    assert r.metrics["iteration"] == 6

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as on the Ray worker (cpus_per_worker = 1)
    try:
        ctx = LocalContext(tmp_path / "plain")
        train(cfg_for(cion_al, tmp_path / "plain-out", *common), ctx, log=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    plain = torch.load(tmp_path / "plain" / "checkpoint.pt", weights_only=False)["teacher"]
    ray_teacher = torch.load(r.exports["teacher.pth"], weights_only=True)["teacher"]
    for k, v in plain.items():
        assert torch.allclose(ray_teacher["module." + k], v, atol=1e-5), k


def test_a_cluster_too_small_is_an_error_not_a_hang(ray_session, cion_al, tmp_path):
    from cion_ray.runtime.pretrain import run_pretrain

    with pytest.raises(CionError, match=r"8 workers need 8 CPUs \(the cluster has 2\)"):
        run_pretrain(cfg_for(cion_al, tmp_path / "o", "scale.workers=8", "optim.batch_per_worker=4"),
                     log=lambda m: None)


def test_bad_inputs_fail_before_any_worker_starts(tmp_path, cion_al):
    from cion_ray.cli import main
    from cion_ray.runtime.pretrain import run_pretrain

    with pytest.raises(CionError, match="not found"):
        run_pretrain(cfg_for(tmp_path / "nothing", tmp_path / "o"), log=lambda m: None)
    with pytest.raises(CionError, match="unknown backbone"):
        run_pretrain(cfg_for(cion_al, tmp_path / "o", "model.arch=resnet51"), log=lambda m: None)
    with pytest.raises(CionError, match="too few"):
        run_pretrain(cfg_for(cion_al, tmp_path / "o", "scale.workers=2", "optim.batch_per_worker=40"),
                     log=lambda m: None)
    with pytest.raises(CionError, match="not a ReID dataset folder"):
        run_pretrain(cfg_for(cion_al, tmp_path / "o", f"eval_data={tmp_path}"), log=lambda m: None)
    with pytest.raises(CionError, match="no pre-training run to resume"):
        run_pretrain(cfg_for(cion_al, tmp_path / "fresh"), resume=True, log=lambda m: None)
    assert main(["pretrain", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert main(["pretrain", "--data", str(cion_al), "--out", str(tmp_path / "o"), "--data-fraction", "0"]) == 2
