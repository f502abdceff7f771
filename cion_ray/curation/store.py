"""Per-video curation results, stored one file per video (`<out>/videos/<video_id>-<key>.npz`).

They make re-runs and incremental curation cheap: a video's L1/L2 result is computed once,
and the linking step reads only each video's identity sums and sizes.
"""
from __future__ import annotations

import io
import json
import threading

import numpy as np

from cion_ray.curation.core import VideoLevels
from cion_ray.io import fs


def video_uri(out: str, video_id: str, key: str) -> str:
    """Where a video's L1/L2 result is cached: named by the content key of what it was computed
    from (its embeddings, the denoising settings, its ground truth), never by the video alone."""
    return fs.join(out, "videos", f"{video_id}-{key}.npz")


def save_levels(uri: str, lv: VideoLevels, frame: np.ndarray, gt: np.ndarray | None) -> None:
    buf = io.BytesIO()
    np.savez(buf, crop_id=lv.crop_id.astype(str), track_id=lv.track_id, frame=frame, l1=lv.l1, l2=lv.l2,
             sums=lv.sums.astype(np.float32), counts=lv.counts,
             gt=(gt.astype(str) if gt is not None else np.zeros(0, str)),
             stats=np.array(json.dumps(lv.stats)))
    fs.write_bytes_atomic(uri, buf.getvalue())


# numpy parses each array's header with ast.literal_eval, and CPython 3.11's ast is not safe
# across threads ("SystemError: AST constructor recursion depth mismatch"); the runtime loads
# these files from a thread pool, so the reads run in parallel and the decoding one at a time
_DECODE = threading.Lock()


def _arrays(data: bytes) -> dict[str, np.ndarray]:
    with _DECODE, np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_levels(uri: str) -> dict:
    """-> dict of arrays (crop_id, track_id, frame, l1, l2, sums, counts, gt) and stats (dict)."""
    d = _arrays(fs.read_bytes(uri))
    d["stats"] = json.loads(str(d["stats"]))
    return d


def distances_uri(out: str, video_id: str, key: str) -> str:
    """Where a video's calibration distances are cached (named by the content key of its
    embeddings and the sampling settings)."""
    return fs.join(out, "calibration", f"{video_id}-{key}.npz")


def save_distances(uri: str, d) -> None:
    buf = io.BytesIO()
    np.savez(buf, **d.to_npz())
    fs.write_bytes_atomic(uri, buf.getvalue())


def load_distances(uri: str):
    from cion_ray.curation.calibrate import Distances

    return Distances.from_npz(_arrays(fs.read_bytes(uri)))
