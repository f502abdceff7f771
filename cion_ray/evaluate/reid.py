"""Evaluating a backbone on a ReID split in one call (pre-training's and fine-tuning's in-loop
evaluation), and the Market-1501 folder readers.

Features come from the shared extractor (cion_ray.zoo.features: PIL bicubic resize, MEAN / STD,
optionally averaged with the mirrored image's), compared by cosine distance. Identities -1
(junk) and 0 (distractors) follow the Market convention: junk images are dropped, distractors
stay in the gallery as negatives.
"""
from __future__ import annotations

from cion_ray.errors import CionError
from cion_ray.evaluate.datasets import MARKET, ImageSet, load_dataset, read_folder
from cion_ray.evaluate.retrieval import RetrievalResult
from cion_ray.evaluate.search import RankingOptions, evaluate_features
from cion_ray.io import fs
from cion_ray.zoo.features import extract_features

__all__ = ["MarketSet", "read_market_set", "read_market_split", "extract_features", "evaluate_backbone"]

MarketSet = ImageSet  # the name this module used before the dataset loaders


def read_market_set(folder: str, keep_distractors: bool) -> ImageSet:
    """The images of one Market folder with the ids and cameras in their names (names that do
    not follow the convention are an error naming the first few)."""
    return read_folder(folder, MARKET, keep_distractors)


def read_market_split(root: str) -> tuple[ImageSet, ImageSet]:
    """(query, gallery) of a Market-style folder (local or s3://)."""
    for sub in ("query", "bounding_box_test"):
        if not fs.exists(fs.join(root, sub)):
            raise CionError(f"{root}: no {sub}/ folder (expected a Market-1501 style split)")
    return (read_market_set(fs.join(root, "query"), keep_distractors=False),
            read_market_set(fs.join(root, "bounding_box_test"), keep_distractors=True))


def evaluate_backbone(model, root: str, size: tuple[int, int] = (256, 128), batch: int = 64, flip: bool = True,
                      device: str = "cpu", max_rank: int = 50) -> RetrievalResult:
    """CMC / mAP / mINP of `model`'s features (cosine distance) on the split under `root`: any
    layout cion_ray.evaluate.datasets detects (a Market-style folder, a synthetic world, ...)."""
    d = load_dataset(None, root, with_train=False)
    feats = extract_features(model, d.query.files + d.gallery.files, size, batch, flip, device)
    qf, gf = feats[:len(d.query)], feats[len(d.query):]
    return evaluate_features(qf, gf, d.query.pids, d.gallery.pids, d.query.cams, d.gallery.cams,
                             RankingOptions(max_rank=max_rank, backend="dense"))
