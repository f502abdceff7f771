"""Person detector sources.

A detector maps a batch of frames to per-frame detections, (n, 5) float32
arrays of x1, y1, x2, y2, score in frame pixels. Two sources:
- `YoloDetector`: ultralytics YOLO, class 0 (person) only, batched;
- `MotDetections`: public detections from a MOTChallenge det.txt.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from cion_ray.errors import CionError
from cion_ray.io import fs
from cion_ray.io.mot import read_detections

EMPTY = np.zeros((0, 5), np.float32)


class Detector(Protocol):
    def __call__(self, frames: list[np.ndarray], indices: list[int]) -> list[np.ndarray]:
        """frames: RGB uint8 (H, W, 3); indices: 0-based frame numbers -> per-frame (n, 5) arrays."""


class MotDetections:
    """Detections of one video from its det.txt (frames there are 1-based).

    Malformed lines are skipped; `problems` lists them (file, line, reason)."""

    def __init__(self, det_uri: str, min_score: float = -np.inf):
        text = fs.read_text(det_uri)
        arr, self.problems = read_detections(det_uri, text)
        arr = arr[arr[:, 5] >= min_score]
        self.count = len(arr)
        self._by_frame: dict[int, np.ndarray] = {}
        if len(arr):
            order = np.argsort(arr[:, 0], kind="stable")
            arr = arr[order]
            frames = arr[:, 0].astype(np.int64) - 1
            cuts = np.flatnonzero(np.diff(frames)) + 1
            for block in np.split(np.arange(len(arr)), cuts):
                self._by_frame[int(frames[block[0]])] = arr[block, 1:6].astype(np.float32)

    def __call__(self, frames: list[np.ndarray], indices: list[int]) -> list[np.ndarray]:
        out = []
        for img, i in zip(frames, indices):
            d = self._by_frame.get(int(i), EMPTY)
            if len(d):  # clip to the frame, drop empty boxes
                h, w = img.shape[:2]
                d = d.copy()
                d[:, [0, 2]] = np.clip(d[:, [0, 2]], 0, w)
                d[:, [1, 3]] = np.clip(d[:, [1, 3]], 0, h)
                d = d[(d[:, 2] - d[:, 0] >= 1) & (d[:, 3] - d[:, 1] >= 1)]
            out.append(d)
        return out


def check_weights(weights: str) -> None:
    """Fail early, on the driver, when the weights cannot be found."""
    if not weights:
        raise CionError("the yolo detector needs --weights (a .pt file or s3:// URI, or a model .yaml)")
    if weights.endswith((".yaml", ".yml")) and not fs.is_remote(weights) and not Path(weights).exists():
        return  # an architecture name such as yolo11n.yaml, built untrained by ultralytics
    if not fs.exists(weights):
        raise CionError(f"detector weights {weights}: not found")


class YoloDetector:
    """Ultralytics YOLO restricted to persons; weights from a local path or s3:// URI (never downloaded
    from the internet: YOLO_OFFLINE is set). Frames are passed as one batch per call."""

    def __init__(self, weights: str, device: str = "cpu", imgsz: int = 640, conf: float = 0.1, half: bool = True):
        os.environ.setdefault("YOLO_OFFLINE", "1")
        from ultralytics import YOLO  # heavy: import only when a YOLO detector is built

        check_weights(weights)
        src = weights
        if not (weights.endswith((".yaml", ".yml")) and not fs.is_remote(weights)):
            src = str(fs.local_copy(weights))
        try:
            self.model = YOLO(src, task="detect")
        except Exception as e:  # corrupt file, wrong format
            raise CionError(f"detector weights {weights}: cannot load ({type(e).__name__}: {e})") from None
        self.device = device
        self.imgsz = imgsz
        self.conf = conf
        self.half = half and device.startswith("cuda")

    def __call__(self, frames: list[np.ndarray], indices: list[int]) -> list[np.ndarray]:
        if not frames:
            return []
        bgr = [np.ascontiguousarray(f[..., ::-1]) for f in frames]
        results = self.model.predict(bgr, imgsz=self.imgsz, conf=self.conf, classes=[0], device=self.device,
                                     half=self.half, verbose=False, batch=len(bgr))
        out = []
        for r in results:
            b = r.boxes
            if b is None or len(b) == 0:
                out.append(EMPTY)
                continue
            xyxy = b.xyxy.float().cpu().numpy()
            conf = b.conf.float().cpu().numpy()[:, None]
            out.append(np.concatenate([xyxy, conf], axis=1).astype(np.float32))
        return out
