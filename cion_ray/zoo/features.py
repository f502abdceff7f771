"""One feature extractor for every place that turns person images into backbone features:
evaluation (cion_ray/evaluate), pre-training's in-loop evaluation, the timm embedder of curation,
and the Ray actors of the evaluate stage.

Images are JPEG/PNG bytes or file URIs (local paths or s3://, read through cion_ray.io.fs); they
are prepared as in cion_ray.io.images (PIL bicubic resize to (H, W), MEAN / STD). The next batch
is read and decoded by a few threads while the model runs on the current one.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

from cion_ray.errors import CionError
from cion_ray.io import fs
from cion_ray.io.images import MEAN, STD, decode_jpeg, eval_array

__all__ = ["MEAN", "STD", "decode_jpeg", "extract_features", "ProgressLine"]

ImageRef = bytes | str  # encoded image bytes, or a local path / s3:// URI of an image file


def _prepare(item: ImageRef, index: int, size: tuple[int, int], on_error: str) -> np.ndarray | None:
    """(3, H, W) float32 model input of one image, or None for a bad image when on_error='nan'."""
    name = item if isinstance(item, str) else f"image {index}"
    try:
        data = fs.read_bytes(item) if isinstance(item, str) else item
        return eval_array(decode_jpeg(data, name), size)
    except CionError:  # unreadable (named by fs) or undecodable (ImageDecodeError)
        if on_error == "nan":
            return None
        raise


def extract_features(model, images: Sequence[ImageRef], size: tuple[int, int] = (256, 128), batch: int = 64,
                     flip: bool = True, device: str = "cpu", progress: Callable[[int, int], None] | None = None,
                     on_error: str = "raise", normalize: bool = False, amp: bool = False,
                     threads: int = 4) -> np.ndarray:
    """(N, D) float32 features of `images` (bytes or file URIs), in order.

    model: (B, 3, H, W) -> (B, D), run in eval mode without gradients (its mode is restored).
    size: (H, W) input size. flip: average with the features of the mirrored images.
    on_error: 'raise' (a CionError naming the image) or 'nan' (its row is NaN).
    normalize: L2-normalise the rows. amp: autocast (float16/bfloat16) on CUDA.
    progress: called as progress(done, total) after each batch."""
    import torch

    if on_error not in ("raise", "nan"):
        raise ValueError(f"on_error must be 'raise' or 'nan', got {on_error!r}")
    n = len(images)
    dev = torch.device(device)
    was_training = model.training
    model.eval().to(dev)
    out: list[np.ndarray] = []
    batches = [range(s, min(n, s + batch)) for s in range(0, n, max(1, batch))]

    def load(rows: range) -> list[np.ndarray | None]:
        return list(pool.map(lambda i: _prepare(images[i], i, size, on_error), rows))

    try:
        with ThreadPoolExecutor(max(1, threads)) as pool, ThreadPoolExecutor(1) as ahead, torch.no_grad():
            pending = ahead.submit(load, batches[0]) if batches else None
            for b, rows in enumerate(batches):
                arrays = pending.result()
                pending = ahead.submit(load, batches[b + 1]) if b + 1 < len(batches) else None
                ok = np.array([a is not None for a in arrays])
                feats = None
                if ok.any():
                    x = torch.from_numpy(np.stack([a for a in arrays if a is not None])).to(dev)
                    with torch.autocast(dev.type, enabled=amp and dev.type == "cuda"):
                        f = model(x).float()
                        if flip:
                            f = (f + model(torch.flip(x, dims=[3])).float()) / 2
                    if normalize:
                        f = torch.nn.functional.normalize(f, dim=1)
                    feats = f.cpu().numpy()
                if feats is None or not ok.all():
                    full = np.full((len(rows), _dim(model, feats, size, dev)), np.nan, np.float32)
                    if feats is not None:
                        full[ok] = feats
                    feats = full
                out.append(feats.astype(np.float32, copy=False))
                if progress is not None:
                    progress(rows.stop, n)
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, _dim(model, None, size, dev)), np.float32)
    return np.concatenate(out)


def _dim(model, feats: np.ndarray | None, size: tuple[int, int], dev) -> int:
    """The feature size: from a computed batch, else from a dummy forward."""
    if feats is not None:
        return feats.shape[1]
    import torch

    with torch.no_grad():
        return int(model(torch.zeros(1, 3, *size, device=dev)).shape[-1])


class ProgressLine:
    """A progress(done, total) callback that logs a line at most every `every_s` seconds (and
    at the end): images done, images/s and the time left."""

    def __init__(self, log: Callable[[str], None], what: str = "features", every_s: float = 5.0):
        self.log, self.what, self.every_s = log, what, every_s
        self.t0 = self.last = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - self.last < self.every_s and done < total:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        eta = (total - done) / rate if rate > 0 else float("inf")
        self.log(f"{self.what}: {done}/{total} images, {rate:.1f} img/s, {eta:.0f}s left")
