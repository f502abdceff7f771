"""Pre-training runs that start from or continue something: a backbone initialisation (--init,
strictly), a checkpoint of the same settings (resumed, its per-epoch history kept), and the
refusals: a checkpoint of other settings, before-training figures of another evaluation split."""
from __future__ import annotations

import pytest
import torch
from test_pretrain_unit import _cion_al, small_cfg

from cion_ray.errors import CionError

# ---------------------------------------------------------------- backbone initialisation


def tiny_backbone(arch="test_resnet", seed=123):
    from cion_ray.zoo.factory import create_backbone

    torch.manual_seed(seed)
    m = create_backbone(arch)
    with torch.no_grad():  # BN buffers away from their defaults too
        for name, t in m.state_dict().items():
            if t.is_floating_point():
                t.add_(torch.rand_like(t) * 0.1)
    return m


def assert_state_equal(module, state):
    got = module.state_dict()
    assert set(got) == set(state)
    for name, t in state.items():
        assert torch.equal(got[name], t), name


@pytest.mark.parametrize("layout", ["plain", "released", "export"])
def test_init_backbones_loads_student_and_teacher_strictly(tmp_path, layout):
    from cion_ray.pretrain.loop import init_backbones
    from cion_ray.pretrain.task import CIONTask

    state = tiny_backbone().state_dict()
    obj = {"plain": state,
           # the released CION layout: DDP prefix, backbone and head under "teacher"
           "released": {"teacher": {**{f"module.backbone.{k}": v for k, v in state.items()},
                                    "module.head.mlp.0.weight": torch.zeros(2, 2)}},
           "export": {"arch": "test_resnet", "epoch": 3, "teacher": state}}[layout]
    torch.save(obj, tmp_path / "init.pth")
    torch.manual_seed(0)
    task = CIONTask(small_cfg("model.arch=test_resnet"))
    heads = [{k: v.clone() for k, v in m.head.state_dict().items()} for m in (task.student, task.teacher)]
    assert any(not torch.equal(task.student.backbone.state_dict()[k], v) for k, v in state.items())
    init_backbones(task, str(tmp_path / "init.pth"), "test_resnet")
    assert_state_equal(task.student.backbone, state)
    assert_state_equal(task.teacher.backbone, state)
    for m, head in zip((task.student, task.teacher), heads):
        assert_state_equal(m.head, head)


def test_init_backbones_refuses_another_arch_or_missing_keys(tmp_path):
    from cion_ray.pretrain.loop import init_backbones
    from cion_ray.pretrain.task import CIONTask

    task = CIONTask(small_cfg("model.arch=test_resnet"))
    ibn = tmp_path / "ibn.pth"
    torch.save(tiny_backbone("test_resnet_ibn").state_dict(), ibn)
    with pytest.raises(CionError, match=r"ibn\.pth do not fit test_resnet"):
        init_backbones(task, str(ibn), "test_resnet")
    recorded = tmp_path / "recorded.pth"
    torch.save({"arch": "test_resnet_ibn", "teacher": tiny_backbone().state_dict()}, recorded)
    with pytest.raises(CionError, match=r"recorded\.pth hold a test_resnet_ibn backbone"):
        init_backbones(task, str(recorded), "test_resnet")
    partial = tmp_path / "partial.pth"
    state = tiny_backbone().state_dict()
    del state["conv1.weight"]
    torch.save(state, partial)
    with pytest.raises(CionError, match=r"partial\.pth do not fit test_resnet: 1 missing"):
        init_backbones(task, str(partial), "test_resnet")


def short_run(data, *extra):
    return small_cfg(f"data={data}", "model.arch=test_resnet", "optim.batch_per_worker=8", "optim.k_schedule=0:2",
                     "optim.epochs=1", "optim.iters_per_epoch=2", "optim.warmup_epochs=0", *extra)


def test_loop_starts_from_the_init_weights(tmp_path):
    """With lr 0 and teacher momentum 1 nothing moves the weights: the teacher backbone the run
    saves has the init's parameters (its BN running statistics follow the batches)."""
    from cion_ray.pretrain.loop import LocalContext, train
    from cion_ray.zoo.checkpoints import extract_backbone_state

    init = tiny_backbone()
    torch.save(init.state_dict(), tmp_path / "init.pth")
    still = ["optim.lr=0", "optim.min_lr=0", "optim.momentum_teacher=1"]
    params = dict(init.named_parameters())
    data = _cion_al(tmp_path)
    for run, extra in (("init", [f"init={tmp_path / 'init.pth'}"]), ("random", [])):
        train(short_run(data, *still, *extra), LocalContext(tmp_path / run), log=lambda s: None)
        teacher = extract_backbone_state(torch.load(tmp_path / run / "checkpoint.pt", weights_only=False))
        same = [torch.equal(teacher[k], p) for k, p in params.items()]
        assert all(same) if run == "init" else not any(same), run


def test_a_pretraining_run_is_init_weights_for_the_next(tmp_path):
    """A run's checkpoint loads with weights_only (the optimizer's lr / weight_decay are Python
    floats, not numpy scalars) and initialises the next run."""
    from cion_ray.pretrain.loop import LocalContext, init_backbones, train
    from cion_ray.pretrain.task import CIONTask

    train(short_run(_cion_al(tmp_path)), LocalContext(tmp_path / "first"), log=lambda s: None)
    task = CIONTask(small_cfg("model.arch=test_resnet"))
    init_backbones(task, str(tmp_path / "first"), "test_resnet")  # the run's newest checkpoint
    saved = torch.load(tmp_path / "first" / "checkpoint.pt", weights_only=False)["teacher"]
    assert_state_equal(task.teacher.backbone, {k[len("backbone."):]: v for k, v in saved.items()
                                               if k.startswith("backbone.")})


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    from cion_ray.pretrain.loop import LocalContext, train

    data = _cion_al(tmp_path)
    train(short_run(data), LocalContext(tmp_path / "run"), log=lambda s: None)
    with pytest.raises(CionError, match="other settings"):
        train(short_run(data, "optim.lr=0.1", "optim.epochs=2"), LocalContext(tmp_path / "run"), log=lambda s: None)


def test_a_resumed_run_keeps_every_epoch_and_drops_init_figures_of_another_split(tmp_path, default_world):
    from cion_ray.pretrain.loop import LocalContext, train

    data, logs = _cion_al(tmp_path), []
    reid = default_world / "reid"
    first = short_run(data, "optim.epochs=2", f"eval_data={reid}")
    ctx = LocalContext(tmp_path / "run")
    # stop after epoch 1: a context whose report raises once the first checkpoint is written
    class Stop(Exception):
        pass

    def stop_after_first(metrics, checkpoint, report=ctx.report):
        report(metrics, checkpoint)
        raise Stop

    ctx.report = stop_after_first
    with pytest.raises(Stop):
        train(first, ctx, log=lambda s: None)
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert saved["eval_init_data"] == str(reid) and "eval_mAP_init" in saved["eval_init"]
    # resumed with the same settings: epoch 2 runs, the checkpoint's history holds epochs 1 and 2
    train(first, LocalContext(tmp_path / "run"), log=logs.append)
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert [m["epoch"] for m in saved["history"]] == [1, 2]
    assert saved["history"][1]["eval_mAP_init"] == saved["history"][0]["eval_mAP_init"]
    # the same run evaluated on another split (the fingerprint leaves the split out): the
    # before-training figures of the first split are not reported beside the second's
    other = tmp_path / "other"
    import shutil

    shutil.copytree(reid, other)
    for f in sorted((other / "bounding_box_test").glob("*.jpg"))[::2]:
        f.unlink()
    longer = short_run(data, "optim.epochs=3", f"eval_data={other}")
    assert longer.fingerprint() != first.fingerprint()  # epochs differ: a new run, not a resume
    ckpt_dir = tmp_path / "run2"
    shutil.copytree(tmp_path / "run", ckpt_dir)
    same_but_split = short_run(data, "optim.epochs=2", f"eval_data={other}")
    assert same_but_split.fingerprint() == first.fingerprint()
    state = torch.load(ckpt_dir / "checkpoint.pt", weights_only=False)
    # rewind one epoch so the resumed run trains and evaluates again
    state["epoch"], state["iteration"] = 1, state["iteration"] // 2
    torch.save(state, ckpt_dir / "checkpoint.pt")
    logs.clear()
    metrics = train(same_but_split, LocalContext(ckpt_dir), log=logs.append)
    assert "eval_mAP" in metrics and "eval_mAP_init" not in metrics
    assert any("not reported for this run" in m for m in logs)
