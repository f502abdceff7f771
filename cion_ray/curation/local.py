"""A synthetic world tracked, embedded and labelled in one process, ready for `curate_local`
(tests and benchmarks: no Ray, no files but the world's)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cion_ray.curation.core import VideoCrops
from cion_ray.curation.gt import crop_identities, gt_layout, load_gt


def embedded_world(cfg, folder: str | Path, embedder=None) -> tuple[list[VideoCrops], np.ndarray]:
    """Generate the synthetic world `cfg` (a SynthConfig) in `folder` (kept when it is already
    there), track it in process (public detections + ByteTrack), embed the crops (the hand-crafted
    descriptor unless `embedder` is given) and label each crop with its ground-truth identity.
    -> (per video, curation.core.VideoCrops in the natural order; (n,) ground-truth labels)."""
    from cion_ray.embed.handcrafted import HandcraftedEmbedder
    from cion_ray.synth import generate_world
    from cion_ray.tracking.config import DetectorConfig, TrackConfig
    from cion_ray.tracking.local import track_local
    from cion_ray.tracking.manifest import list_videos, probe_entry

    folder = Path(folder)
    if not (folder / "identities.json").exists():
        generate_world(cfg, folder)
    tcfg = TrackConfig(detector=DetectorConfig(kind="mot-det", mot=str(folder / "mot")))
    t = track_local(tcfg, [probe_entry(u) for u in list_videos(str(folder / "videos"))]).table()
    return labelled_videos(t, (embedder or HandcraftedEmbedder())(t.column("crop").to_pylist()), folder)


def labelled_videos(t, feats: np.ndarray, world: str | Path) -> tuple[list[VideoCrops], np.ndarray]:
    """Tracked crops (a pyarrow table with video_id, crop_id, track_id, frame, x1..y2) and their
    (n, D) embeddings -> (per video, VideoCrops in the natural order; (n,) ground-truth labels of
    the synthetic world or MOT folder `world`, in the same order)."""
    vid = np.array(t.column("video_id").to_pylist())
    _, mapping = gt_layout(str(world))
    videos, gts = [], []
    for v in sorted(set(vid)):
        m = vid == v
        fr, tr = t.column("frame").to_numpy()[m], t.column("track_id").to_numpy()[m]
        boxes = np.stack([t.column(c).to_numpy()[m] for c in ("x1", "y1", "x2", "y2")], axis=1)
        videos.append(VideoCrops(v, np.array(t.column("crop_id").to_pylist(), object)[m], tr, fr, feats[m]))
        gts.append(crop_identities(v, fr, boxes, load_gt(str(world), v), mapping))
    return videos, np.concatenate(gts)
