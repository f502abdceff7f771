"""Loading backbone weights from the checkpoint layouts people have.

Accepted: a plain state dict; a dict holding it under "teacher", "state_dict" or "model"
(the released CION code and our pre-training export use "teacher"); keys prefixed by
"module." (DDP) and/or "backbone." (a DINO-style wrapper, whose head is then left out).
"""
from __future__ import annotations

from pathlib import Path

from cion_ray.errors import CionError

CONTAINERS = ("teacher", "state_dict", "model")


def _strip(k: str, prefix: str) -> str:
    return k[len(prefix):] if k.startswith(prefix) else k


def extract_backbone_state(obj) -> dict:
    """A checkpoint object -> the backbone's state dict.

    "module." prefixes are stripped; when keys carry "backbone." (a wrapper holding a backbone and a
    projection head), only those keys are kept, without the prefix."""
    if not isinstance(obj, dict):
        raise CionError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    for key in CONTAINERS:
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    tensors = {_strip(k, "module."): v for k, v in obj.items() if hasattr(v, "shape")}
    if any(k.startswith("backbone.") for k in tensors):
        tensors = {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}
    if not tensors:
        raise CionError("checkpoint has no tensors")
    return tensors


def load_backbone_state(path: str | Path) -> dict:
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CionError(f"weights {path}: not found") from None
    except Exception as e:  # a truncated or foreign file
        raise CionError(f"weights {path}: cannot load ({type(e).__name__}: {e})") from None
    try:
        return extract_backbone_state(obj)
    except CionError as e:
        raise CionError(f"weights {path}: {e}") from None
