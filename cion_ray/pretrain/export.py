"""Exports of a pre-training checkpoint.

- `teacher.pth`: {"teacher": {"module.backbone.<k>": ..., "module.head.<k>": ...}}, the layout the
  released CION fine-tuning code loads (it strips "module.backbone." and keeps the backbone keys);
- `backbone.pth`: the teacher backbone's plain state dict (timm style, strict-loadable into
  create_backbone(arch)); also what `cion-ray curate --embedder timm:<arch> --weights` accepts.
"""
from __future__ import annotations

import io

from cion_ray.errors import CionError
from cion_ray.io import fs

PREFIX = "module.backbone."


def teacher_export(state: dict) -> dict:
    if "teacher" not in state:
        raise CionError("not a pre-training checkpoint: it holds no teacher")
    return {"teacher": {"module." + k: v for k, v in state["teacher"].items()}, "arch": state.get("arch"),
            "epoch": state.get("epoch")}


def backbone_export(state: dict) -> dict:
    t = state["teacher"]
    out = {k[len("backbone."):]: v for k, v in t.items() if k.startswith("backbone.")}
    if not out:
        raise CionError("the checkpoint's teacher has no backbone keys")
    return out


def strip_released_prefix(teacher: dict) -> dict:
    """What the released fine-tuning code does with a "teacher" dict: keep the backbone keys,
    without "module.backbone."."""
    return {k[len(PREFIX):]: v for k, v in teacher.items() if k.startswith(PREFIX)}


def write_exports(state: dict, out: str) -> dict[str, str]:
    """Write teacher.pth and backbone.pth under `out` (a folder or s3:// prefix); returns their URIs."""
    import torch

    uris = {}
    for name, obj in (("teacher.pth", teacher_export(state)), ("backbone.pth", backbone_export(state))):
        buf = io.BytesIO()
        torch.save(obj, buf)
        uri = fs.join(out, name)
        fs.write_bytes_atomic(uri, buf.getvalue())
        uris[name] = uri
    return uris
