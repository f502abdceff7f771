"""Parquet schemas of the stage outputs: the data contracts between stages.

docs/data.md describes the same fields for people; a test keeps the two in step.
Frames are 1-based, as in MOTChallenge files, so crops join directly with gt.txt.
Boxes are corner pixels (x1, y1, x2, y2) in the original frame.
"""
from __future__ import annotations

import pyarrow as pa

# track stage: one row per person crop of a kept tracklet
CROPS = pa.schema([
    pa.field("crop_id", pa.string(), nullable=False),  # "<video_id>/<frame:06d>/<track_id>"
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("chunk", pa.int32(), nullable=False),  # chunk of the video this row was tracked in
    pa.field("frame", pa.int32(), nullable=False),  # 1-based frame index in the video
    pa.field("track_id", pa.int64(), nullable=False),  # tracklet id, unique within the video
    pa.field("x1", pa.float32(), nullable=False),
    pa.field("y1", pa.float32(), nullable=False),
    pa.field("x2", pa.float32(), nullable=False),
    pa.field("y2", pa.float32(), nullable=False),
    pa.field("score", pa.float32(), nullable=False),  # detector confidence in [0, 1]
    pa.field("crop", pa.binary(), nullable=False),  # JPEG bytes, resized to the configured height
])

def embeddings_schema(dim: int, dtype: str = "float32") -> pa.Schema:
    """curate stage, embedding step: one row per crop with its L2-normalised embedding."""
    value = pa.float16() if dtype == "float16" else pa.float32()
    return pa.schema([
        pa.field("crop_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("track_id", pa.int64(), nullable=False),
        pa.field("frame", pa.int32(), nullable=False),
        pa.field("x1", pa.float32(), nullable=False),
        pa.field("y1", pa.float32(), nullable=False),
        pa.field("x2", pa.float32(), nullable=False),
        pa.field("y2", pa.float32(), nullable=False),
        pa.field("embedding", pa.list_(value, dim), nullable=False),  # NaN where the crop was undecodable
    ])


# curate stage: one row per crop kept in the curated set
IDENTITIES = pa.schema([
    pa.field("crop_id", pa.string(), nullable=False),
    pa.field("identity", pa.int64(), nullable=False),  # global identity id, >= 0
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("track_id", pa.int64(), nullable=False),
])


def crop_id(video_id: str, frame: int, track_id: int) -> str:
    return f"{video_id}/{frame:06d}/{track_id}"
