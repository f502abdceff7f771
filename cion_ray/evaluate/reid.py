"""Evaluating a backbone on a Market-1501 style split (`query/`, `bounding_box_test/`).

Images are resized to the model's input size and normalised as in pre-training; a feature is
the backbone's output (optionally averaged with that of the mirrored image), compared by
cosine distance. Identities -1 (junk) and 0 (distractors) follow the Market convention: junk
images are dropped, distractors stay in the gallery as negatives.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Callable

import numpy as np

from cion_ray.errors import CionError
from cion_ray.evaluate.retrieval import RetrievalResult, cosine_distance, evaluate_ranking
from cion_ray.io import fs
from cion_ray.io.market import parse_market_name


@dataclass
class MarketSet:
    files: list[str]
    pids: np.ndarray
    cams: np.ndarray


def read_market_set(folder: str, keep_distractors: bool) -> MarketSet:
    """The images of one Market folder with the ids and cameras in their names (names that do
    not follow the convention are an error naming the first few)."""
    files = fs.list_files(folder, (".jpg", ".jpeg", ".png"))
    kept, pids, cams, bad = [], [], [], []
    for f in files:
        m = parse_market_name(posixpath.basename(f))
        if m is None:
            bad.append(posixpath.basename(f))
            continue
        if m.pid < 0 or (m.pid == 0 and not keep_distractors):
            continue
        kept.append(f)
        pids.append(m.pid)
        cams.append(m.camera)
    if bad:
        raise CionError(f"{folder}: {len(bad)} file names are not Market-style PPPP_cCsS_FFFFFF_NN.jpg "
                        f"(e.g. {', '.join(bad[:3])})")
    if not kept:
        raise CionError(f"{folder}: no images")
    return MarketSet(kept, np.asarray(pids), np.asarray(cams))


def read_market_split(root: str) -> tuple[MarketSet, MarketSet]:
    """(query, gallery) of a Market-style folder (local or s3://)."""
    for sub in ("query", "bounding_box_test"):
        if not fs.exists(fs.join(root, sub)):
            raise CionError(f"{root}: no {sub}/ folder (expected a Market-1501 style split)")
    return (read_market_set(fs.join(root, "query"), keep_distractors=False),
            read_market_set(fs.join(root, "bounding_box_test"), keep_distractors=True))


def extract_features(model, files: list[str], size: tuple[int, int], batch: int = 64, flip: bool = True,
                     device: str = "cpu", progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """(N, D) float32 features of the images at `files` (model in eval mode, no gradients)."""
    import torch
    from torchvision import transforms as T

    from cion_ray.pretrain.views import MEAN, STD, decode_jpeg

    tf = T.Compose([T.Resize(tuple(size), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                    T.Normalize(MEAN, STD)])
    was_training = model.training
    model.eval().to(device)
    out = []
    try:
        with torch.no_grad():
            for s in range(0, len(files), batch):
                x = torch.stack([tf(decode_jpeg(fs.read_bytes(f), f)) for f in files[s:s + batch]]).to(device)
                f = model(x).float()
                if flip:
                    f = (f + model(torch.flip(x, dims=[3])).float()) / 2
                out.append(f.cpu().numpy())
                if progress is not None:
                    progress(min(len(files), s + batch), len(files))
    finally:
        model.train(was_training)
    return np.concatenate(out).astype(np.float32)


def evaluate_backbone(model, root: str, size: tuple[int, int] = (256, 128), batch: int = 64, flip: bool = True,
                      device: str = "cpu", max_rank: int = 50) -> RetrievalResult:
    """CMC / mAP / mINP of `model`'s features on the Market-style split under `root`."""
    query, gallery = read_market_split(root)
    qf = extract_features(model, query.files, size, batch, flip, device)
    gf = extract_features(model, gallery.files, size, batch, flip, device)
    return evaluate_ranking(cosine_distance(qf, gf), query.pids, gallery.pids, query.cams, gallery.cams, max_rank)
