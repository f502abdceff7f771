"""Turn chunk results into crops tables (see `cion_ray.io.schemas.CROPS`)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from cion_ray.io.schemas import CROPS, crop_id
from cion_ray.tracking.manifest import Chunk
from cion_ray.tracking.stitch import renumber
from cion_ray.tracking.tracker import ChunkResult


def _table(video_id: str, chunk: int, frame, track_id, boxes: np.ndarray, score, crop, ids_final: bool) -> pa.Table:
    frame = np.asarray(frame, np.int32)
    track_id = np.asarray(track_id, np.int64)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(frame)
    cid = [crop_id(video_id, int(f), int(t)) for f, t in zip(frame, track_id)] if ids_final else [""] * n
    return pa.Table.from_arrays([
        pa.array(cid, pa.string()), pa.array([video_id] * n, pa.string()),
        pa.array(np.full(n, chunk, np.int32)), pa.array(frame), pa.array(track_id),
        pa.array(boxes[:, 0]), pa.array(boxes[:, 1]), pa.array(boxes[:, 2]), pa.array(boxes[:, 3]),
        pa.array(np.asarray(score, np.float32)), pa.array(crop, pa.binary()),
    ], schema=CROPS)


def final_table(chunk: Chunk, res: ChunkResult, min_track_len: int) -> pa.Table:
    """A whole video tracked as one chunk: drop short tracklets, number the rest 1..k."""
    frame = np.asarray(res.frame, np.int64)
    ids = renumber(frame, np.asarray(res.track_id, np.int64), np.ones(len(frame), bool), min_track_len)
    keep = ids > 0
    boxes = np.asarray(res.boxes, np.float32).reshape(-1, 4)
    return _table(chunk.video_id, chunk.chunk, frame[keep], ids[keep], boxes[keep],
                  np.asarray(res.score, np.float32)[keep], [c for c, k in zip(res.crop, keep) if k], True)


def raw_table(chunk: Chunk, res: ChunkResult) -> pa.Table:
    """One chunk of a multi-chunk video, chunk-local ids, lead-in rows included (empty crops)."""
    return _table(chunk.video_id, chunk.chunk, res.frame, res.track_id, np.asarray(res.boxes, np.float32),
                  res.score, res.crop, False)


def relabel_table(table: pa.Table, ids: dict[tuple[str, int, int], int], own_start: dict[tuple[str, int], int]
                  ) -> pa.Table:
    """Apply stitched ids to raw rows; drop lead-in rows and rows whose id is 0 (dropped tracks)."""
    vid = table.column("video_id").to_pylist()
    ch = table.column("chunk").to_numpy()
    fr = table.column("frame").to_numpy()
    raw = table.column("track_id").to_numpy()
    new = np.array([ids.get((v, int(c), int(t)), 0) for v, c, t in zip(vid, ch, raw)], np.int64)
    owned = np.array([f > own_start[(v, int(c))] for v, c, f in zip(vid, ch, fr)], bool)
    keep = (new > 0) & owned
    t = table.filter(pa.array(keep))
    new = new[keep]
    cid = [crop_id(v, int(f), int(i)) for v, f, i in zip(t.column("video_id").to_pylist(),
                                                          t.column("frame").to_numpy(), new)]
    t = t.set_column(t.schema.get_field_index("track_id"), CROPS.field("track_id"), pa.array(new))
    return t.set_column(t.schema.get_field_index("crop_id"), CROPS.field("crop_id"), pa.array(cid, pa.string()))
