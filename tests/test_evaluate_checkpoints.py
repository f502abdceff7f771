"""Loading a backbone for evaluation from every checkpoint layout (zoo.checkpoints.load_backbone),
and the errors that name the file."""
from __future__ import annotations

import pytest
import torch

from cion_ray.errors import CionError
from cion_ray.zoo.checkpoints import find_checkpoint_file, load_backbone
from cion_ray.zoo.factory import create_backbone

ARCH = "test_resnet_ibn"
SIZE = (64, 32)


def fresh(seed: int, arch: str = ARCH):
    torch.manual_seed(seed)
    return create_backbone(arch, SIZE)


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def ray_train_state(model, epoch: int) -> dict:
    """What pre-training's checkpoints hold (cion_ray.pretrain.loop.checkpoint_state), in short."""
    teacher = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    teacher["head.last.weight"] = torch.zeros(4, 4)
    return {"format": "cion-ray-pretrain/1", "arch": ARCH, "epoch": epoch, "iteration": 10 * epoch,
            "student": dict(teacher), "teacher": teacher, "optimizer": {"state": {}, "param_groups": []}}


def test_every_layout_loads_the_same_backbone(tmp_path):
    from cion_ray.pretrain.export import write_exports

    want = fresh(1)
    old = fresh(2)
    run = tmp_path / "run"
    for name, model, epoch in (("checkpoint_2026-01-01_10-00-00.000001", old, 1),
                               ("checkpoint_2026-01-01_11-00-00.000001", want, 2)):
        (run / "train" / name).mkdir(parents=True)
        torch.save(ray_train_state(model, epoch), run / "train" / name / "checkpoint.pt")
    write_exports(ray_train_state(want, 2), str(run / "export"))
    released = tmp_path / "cion_resnet.pth"
    torch.save({"teacher": {f"module.backbone.{k}": v for k, v in want.state_dict().items()}}, released)
    ckpt_dir = run / "train" / "checkpoint_2026-01-01_11-00-00.000001"
    for weights, arch, epoch in ((run, None, 2), (run / "train", ARCH, 2), (ckpt_dir, None, 2),
                                 (ckpt_dir / "checkpoint.pt", ARCH, 2), (run / "export" / "backbone.pth", ARCH, None),
                                 (run / "export" / "teacher.pth", None, 2), (released, ARCH, None)):
        model, info = load_backbone(arch, str(weights), SIZE)
        assert same_weights(model, want), weights
        assert (info.arch, info.epoch) == (ARCH, epoch), weights
    assert find_checkpoint_file(str(run)).endswith("11-00-00.000001/checkpoint.pt")
    (tmp_path / "exports").mkdir()
    torch.save(want.state_dict(), tmp_path / "exports" / "backbone.pth")
    torch.save({"teacher": {}}, tmp_path / "exports" / "teacher.pth")
    assert find_checkpoint_file(str(tmp_path / "exports")).endswith("backbone.pth")


def test_random_initialisation_is_seeded():
    a, info = load_backbone(ARCH, "random", SIZE, seed=3)
    b, _ = load_backbone(ARCH, "random", SIZE, seed=3)
    c, _ = load_backbone(ARCH, "random", SIZE, seed=4)
    assert same_weights(a, b) and not same_weights(a, c)
    assert (info.file, info.seed, info.arch) == ("random", 3, ARCH)
    with pytest.raises(CionError, match="random weights need an arch"):
        load_backbone(None, "random", SIZE)


def test_bad_checkpoints_are_errors_naming_the_file(tmp_path):
    other = fresh(0, "test_resnet")
    torch.save(other.state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(CionError, match=r"resnet.pth do not fit test_resnet_ibn: \d+ (missing|unexpected) backbone keys"):
        load_backbone(ARCH, str(tmp_path / "resnet.pth"), SIZE)
    state = fresh(0).state_dict()
    state["fc.weight"] = torch.zeros(2, 2)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(CionError, match="extra.pth do not fit .*1 unexpected backbone keys, e.g. fc.weight"):
        load_backbone(ARCH, str(tmp_path / "extra.pth"), SIZE)
    state = fresh(0).state_dict()
    state["conv1.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(CionError, match="shape.pth do not fit .*size mismatch for conv1.weight"):
        load_backbone(ARCH, str(tmp_path / "shape.pth"), SIZE)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CionError, match="junk.pth: cannot load"):
        load_backbone(ARCH, str(tmp_path / "junk.pth"), SIZE)
    with pytest.raises(CionError, match="nope.pth: not found"):
        load_backbone(ARCH, str(tmp_path / "nope.pth"), SIZE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CionError, match="empty: a folder with no .pt/.pth file"):
        load_backbone(ARCH, str(tmp_path / "empty"), SIZE)
    torch.save({"arch": "test_resnet", "teacher": other.state_dict()}, tmp_path / "tagged.pth")
    with pytest.raises(CionError, match="tagged.pth hold a test_resnet backbone, not test_resnet_ibn"):
        load_backbone(ARCH, str(tmp_path / "tagged.pth"), SIZE)
    torch.save(fresh(0).state_dict(), tmp_path / "plain.pth")
    with pytest.raises(CionError, match="plain.pth do not record their backbone"):
        load_backbone(None, str(tmp_path / "plain.pth"), SIZE)


def test_the_training_size_a_checkpoint_records(tmp_path):
    """Fine-tuning checkpoints and model.pth record "size" (augment.size), pre-training checkpoints
    their config's views.global_size; load_backbone builds at it unless given a size."""
    want = fresh(5)
    ft = {"format": "cion-ray-finetune/1", "arch": ARCH, "size": [32, 16], "iteration": 7,
          "model": {**{f"backbone.{k}": v for k, v in want.state_dict().items()},
                    "classifier.weight": torch.zeros(3, 8)}}
    torch.save(ft, tmp_path / "ft.pt")
    pre = {**ray_train_state(want, 2), "config": {"views": {"global_size": (48, 24)}}}
    torch.save(pre, tmp_path / "pre.pt")
    torch.save(want.state_dict(), tmp_path / "plain.pth")
    for file, arch, size, trained, built in (("ft.pt", None, None, (32, 16), (32, 16)),
                                             ("pre.pt", None, None, (48, 24), (48, 24)),
                                             ("pre.pt", ARCH, (64, 32), (48, 24), (64, 32)),
                                             ("plain.pth", ARCH, None, None, (256, 128))):
        model, info = load_backbone(arch, str(tmp_path / file), size)
        assert same_weights(model, want) and (info.trained_size, info.size) == (trained, built), file
    assert load_backbone(None, str(tmp_path / "ft.pt"), None)[1].iteration == 7
    assert load_backbone(ARCH, "random", None)[1].size == (256, 128)


def test_a_folder_of_several_runs_is_an_error_naming_them(tmp_path):
    """A parent of several runs does not pick whichever wrote last; one run, its train/ folder, a
    local fine-tuning run (checkpoint/checkpoint.pt) and a Ray Train run folder of any name are one run."""
    def checkpoint(*parts):
        (tmp_path.joinpath(*parts[:-1])).mkdir(parents=True, exist_ok=True)
        torch.save(ray_train_state(fresh(0), 1), tmp_path.joinpath(*parts))

    checkpoint("runs", "a", "train", "checkpoint_2026-01-01_10-00-00.000001", "checkpoint.pt")
    checkpoint("runs", "a", "train", "checkpoint_2026-01-01_11-00-00.000001", "checkpoint.pt")
    checkpoint("runs", "a", "export", "backbone.pth")
    assert find_checkpoint_file(str(tmp_path / "runs")).endswith("a/train/checkpoint_2026-01-01_11-00-00.000001/"
                                                                 "checkpoint.pt")
    checkpoint("runs", "b", "checkpoint", "checkpoint.pt")  # a local fine-tuning run
    assert find_checkpoint_file(str(tmp_path / "runs" / "b")).endswith("b/checkpoint/checkpoint.pt")
    checkpoint("runs", "ray", "my_run", "checkpoint_000001", "checkpoint.pt")
    assert find_checkpoint_file(str(tmp_path / "runs" / "ray")).endswith("my_run/checkpoint_000001/checkpoint.pt")
    with pytest.raises(CionError, match=r"weights .*runs: holds checkpoints of 3 runs \(a, b, ray/my_run\); "
                                        "name one of them"):
        find_checkpoint_file(str(tmp_path / "runs"))
    with pytest.raises(CionError, match="3 runs"):
        load_backbone(ARCH, str(tmp_path / "runs"), SIZE)
    for one in ("a", "a/train", "b", "ray/my_run"):
        find_checkpoint_file(str(tmp_path / "runs" / one))
