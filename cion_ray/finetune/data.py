"""Fine-tuning data: the training identities, their nested fractions, and seeded P x K batches.

The training images (`--data`, local or s3://), in this order of preference:
- with `dataset` named: that loader's train split (cion_ray.evaluate.datasets: market1501,
  dukemtmc, cuhk03np, msmt17, synthetic);
- a curated output: its Market export `<data>/market/bounding_box_train/`;
- any dataset folder the loaders detect: its train split;
- `<data>/bounding_box_train/`, else `<data>` itself: Market-style names (PPPP_cCsS_FFFFFF_NN.jpg).
Junk (-1) and distractors (0) are never trained on. A seeded fraction of the identities is kept
(pretrain.data.select_identities: a smaller fraction is a subset of a larger one, as the
data-efficiency protocol needs) and relabelled 0..C-1 for the classifier. Each worker of a
multi-worker run loads only its shard of whole identities.

Batches: one IdentitySampler pass per "epoch" (training images / total batch iterations), cut
to the run's length in iterations; every image index travels with its augmentation seed
(seed, rank, iteration, position).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from cion_ray.curation.export import market_export
from cion_ray.errors import CionError
from cion_ray.evaluate.datasets import MARKET, ImageSet, ReIDDataset, load_dataset, read_folder
from cion_ray.finetune.augment import TrainTransform
from cion_ray.io import fs
from cion_ray.io.images import decode_jpeg
from cion_ray.pretrain.data import select_identities
from cion_ray.pretrain.sampler import IdentitySampler, shard_identities


@dataclass
class TrainSet:
    """files: N image URIs; pids: (N,) identity ids from the names; labels: (N,) class index
    0..C-1 of the kept identities (sorted by pid)."""

    files: list[str]
    pids: np.ndarray
    labels: np.ndarray
    source: str

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def subset(self, mask: np.ndarray) -> "TrainSet":
        return TrainSet([f for f, m in zip(self.files, mask) if m], self.pids[mask], self.labels[mask], self.source)


def train_split(data: str, dataset: str = "") -> tuple[ImageSet, str]:
    """(the training images, where they were read) of a --data argument (see the module doc)."""
    if not data:
        raise CionError("fine-tuning needs --data: a ReID dataset folder, a curated output or a folder of "
                        "Market-style training images")
    if not fs.exists(data):
        raise CionError(f"training data {data}: not found")
    curated = market_export(data) or fs.join(data, "market", "bounding_box_train")
    if not dataset and fs.exists(curated):
        return read_folder(curated, MARKET, False), curated
    try:
        d = load_dataset(dataset or None, data, with_train=True)
    except CionError:
        if dataset:
            raise
        d = None
    if d is not None:
        if d.train is None:
            raise CionError(f"{d.root}: the {d.name} dataset there has no training split")
        return d.train, f"{d.name} {d.root}"
    folder = fs.join(data, "bounding_box_train")
    folder = folder if fs.exists(folder) else data
    return read_folder(folder, MARKET, False), folder


def eval_dataset(data: str, eval_data: str, dataset: str = "") -> ReIDDataset:
    """The query / gallery to evaluate on: eval_data's (layout detected), else data's own."""
    if eval_data:
        return load_dataset(None, eval_data, with_train=False)
    try:
        return load_dataset(dataset or None, data, with_train=False)
    except CionError as e:
        raise CionError(f"{data}: no query / gallery to evaluate on ({e}); pass --eval-data ROOT, "
                        "or --set eval.enabled=false") from None


def load_train_set(data: str, fraction: float = 1.0, seed: int = 0, dataset: str = "") -> TrainSet:
    """The kept identities' images of `data` (names only; nothing is read yet)."""
    s, source = train_split(data, dataset)
    kept = select_identities(s.pids, fraction, seed)
    mask = np.isin(s.pids, kept)
    pids = s.pids[mask]
    return TrainSet([f for f, m in zip(s.files, mask) if m], pids, np.searchsorted(kept, pids).astype(np.int64),
                    source)


def read_images(files: list[str], threads: int = 8) -> list[bytes]:
    """The encoded bytes of every file, in order (threads hide s3:// latency)."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return list(pool.map(fs.read_bytes, files))


class TrainImages(torch.utils.data.Dataset):
    """Indexed by (image index, augmentation seed) -> ((3, H, W) float32, class index int64)."""

    def __init__(self, images: list[bytes], names: list[str], labels: np.ndarray, transform: TrainTransform):
        self.images, self.names, self.labels, self.transform = images, names, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, item):
        i, seed = item
        img = decode_jpeg(self.images[i], self.names[i])
        return self.transform(img, np.random.default_rng(list(seed))), int(self.labels[i])


def iterations_per_epoch(images: int, batch: int, world_size: int) -> int:
    return max(1, images // (batch * world_size))


def shared_identities_per_batch(pids: np.ndarray, p: int, world_size: int, seed: int) -> int:
    """P lowered to the fewest identities any worker's shard holds (so every worker draws the same
    batch size); at least 2, or an error naming the counts."""
    fewest = min(len(shard_identities(pids, world_size, r, seed)) for r in range(world_size))
    if fewest < 2:
        raise CionError(f"{len(np.unique(pids))} training identities over {world_size} worker(s) leave a worker "
                        f"with {fewest}: a P x K batch needs at least 2 (use more data or fewer workers)")
    return min(p, fewest)


class StepBatches:
    """The batches of iterations start..total-1 as lists of (local image index, augmentation seed);
    a DataLoader batch_sampler. Iteration it draws batch it % ipe of sampler pass it // ipe."""

    def __init__(self, sampler: IdentitySampler, k: int, ipe: int, start: int, total: int, seed: int, rank: int):
        self.sampler, self.k, self.ipe = sampler, k, ipe
        self.start, self.total, self.seed, self.rank = start, total, seed, rank

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self):
        it = self.start
        while it < self.total:
            epoch = it // self.ipe
            for b in self.sampler.batches(epoch, self.k, self.ipe)[it - epoch * self.ipe:]:
                if it >= self.total:
                    return
                yield [(int(i), (self.seed, self.rank, it, j)) for j, i in enumerate(b)]
                it += 1


def total_iterations(steps: int, epochs: int, ipe: int) -> int:
    return steps if steps > 0 else epochs * ipe
