"""Embeddings from a timm backbone with user-given weights (path or s3:// URI), for example a
checkpoint produced by cion-ray's own pre-training."""
from __future__ import annotations

import cv2
import numpy as np

from cion_ray.errors import CionError
from cion_ray.io import fs
from cion_ray.pretrain import views

MEAN = np.array(views.MEAN, np.float32)  # the normalisation the backbones are pre-trained with
STD = np.array(views.STD, np.float32)


class TimmEmbedder:
    """Callable: list of JPEG bytes -> (n, D) float32 L2-normalised features.
    Undecodable crops get rows of NaN (curation drops and counts them)."""

    def __init__(self, name: str, weights: str, device: str = "cpu", height: int = 256, width: int = 128):
        import torch

        from cion_ray.zoo.checkpoints import load_backbone_state
        from cion_ray.zoo.factory import create_backbone, feature_dim

        if not weights:
            raise CionError(f"the timm:{name} embedder needs --weights (a checkpoint path or s3:// URI)")
        self.model = create_backbone(name, (height, width))
        state = load_backbone_state(fs.local_copy(weights))
        result = self.model.load_state_dict(state, strict=False)
        if result.missing_keys:
            raise CionError(f"weights {weights} do not fit {name}: {len(result.missing_keys)} missing keys, "
                            f"e.g. {', '.join(result.missing_keys[:3])}")
        self.name = f"timm:{name}"
        self.size = (height, width)
        self.device = torch.device(device)
        self.model.eval().to(self.device)
        self.dim = feature_dim(self.model.cpu(), self.size)
        self.model.to(self.device)

    def __call__(self, jpegs: list[bytes]) -> np.ndarray:
        import torch

        h, w = self.size
        batch = np.zeros((len(jpegs), h, w, 3), np.float32)
        ok = np.zeros(len(jpegs), bool)
        for i, b in enumerate(jpegs):
            img = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) if b else None
            if img is None:
                continue
            batch[i] = cv2.resize(img[..., ::-1], (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
            ok[i] = True
        x = torch.from_numpy(((batch - MEAN) / STD).transpose(0, 3, 1, 2).copy()).to(self.device)
        with torch.no_grad(), torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            f = self.model(x).float()
        f = torch.nn.functional.normalize(f, dim=1).cpu().numpy()
        f[~ok] = np.nan
        return f


def build_embedder(spec: str, weights: str = "", device: str = "cpu", height: int = 256, width: int = 128):
    """'handcrafted' or 'timm:<name>' -> an embedder callable with `.dim` and `.name`."""
    if spec == "handcrafted":
        from cion_ray.embed.handcrafted import HandcraftedEmbedder
        return HandcraftedEmbedder()
    if spec.startswith("timm:"):
        return TimmEmbedder(spec[5:], weights, device, height, width)
    raise CionError(f"unknown embedder {spec!r}: use 'handcrafted' or 'timm:<name>'")
