"""Synthetic curated crops without video: crops Parquet tables of real JPEG bytes and the
per-video L2 labels a curation would have cached, for the export tests and benchmarks at sizes
(hundreds of thousands of crops, more than 9999 identities) the synthetic world never reaches."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cion_ray.curation.core import VideoLevels
from cion_ray.curation.store import save_levels, video_uri
from cion_ray.io import fs


def jpeg_pool(n: int = 8, height: int = 128, width: int = 64, quality: int = 93, seed: int = 0) -> list[bytes]:
    """n distinct JPEGs of smooth random colour fields with noise: about 5-10 KB each at 128x64,
    the size of a real person crop."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(0, 256, (height // 8, width // 8, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(base).resize((width, height), Image.BILINEAR), np.int16)
        img = np.clip(img + rng.normal(0, 16, img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


@dataclass
class CuratedCrops:
    """What `write_curated_crops` made: the crops files, each video's L2 labels file and the
    labeller's inputs (identity_of, offsets), and the expected identity of every crop."""

    crop_files: list[str]
    video_ids: list[str]
    level_uris: dict[str, str]
    identity_of: np.ndarray
    offsets: dict[str, int]
    levels: list[dict]
    final: list[np.ndarray]
    expected: dict[str, int]  # crop id -> identity; dropped crops are absent


def write_curated_crops(root: str, identities: int, per_identity: int = 2, videos: int = 10,
                        dropped_every: int = 0, row_group: int = 2000, files: int = 2,
                        jpegs: list[bytes] | None = None) -> CuratedCrops:
    """Identity i has 1 + i % per_identity crops, crop k of it in video (i + k // 2) % videos (two
    crops per video) at frame i, track k; every dropped_every-th crop is not kept (L2 label -1). The crops go to `files`
    Parquet files under root/crops (row groups of row_group rows); the labels to root/videos."""
    jpegs = jpegs or jpeg_pool()
    counts = 1 + np.arange(identities) % per_identity
    ident = np.repeat(np.arange(identities), counts)
    k = np.arange(len(ident)) - np.repeat(np.cumsum(counts) - counts, counts)
    vpos = (ident + k // 2) % videos
    vids = [f"v{j:05d}" for j in range(videos)]
    crop_ids = np.array([f"{vids[p]}/{f}/{t}" for p, f, t in zip(vpos, ident, k)], object)
    kept = np.ones(len(ident), bool)
    if dropped_every:
        kept[::dropped_every] = False
    level_uris, offsets, levels, final, id_of = {}, {}, [], [], []
    for p, v in enumerate(vids):
        sel = np.flatnonzero(vpos == p)
        local = np.full(len(sel), -1, np.int64)
        ks = kept[sel]
        local[ks] = np.arange(int(ks.sum()))
        offsets[v] = len(id_of)
        id_of.extend(ident[sel][ks].tolist())
        lv = VideoLevels(v, crop_ids[sel].astype(str), k[sel], local, local, np.zeros((int(ks.sum()), 1)),
                         np.ones(int(ks.sum()), np.int64))
        level_uris[v] = video_uri(root, v, "synthetic")
        save_levels(level_uris[v], lv, ident[sel], None)
        levels.append({"video_id": v, "crop_id": crop_ids[sel].astype(str)})
        final.append(np.where(ks, ident[sel], -1))
    table = pa.table({"crop_id": pa.array(crop_ids.tolist(), pa.string()),
                      "video_id": pa.array([vids[p] for p in vpos], pa.string()),
                      "track_id": pa.array(k, pa.int64()), "frame": pa.array(ident, pa.int64()),
                      "crop": pa.array([jpegs[i % len(jpegs)] for i in range(len(ident))], pa.binary())})
    fs.makedirs(fs.join(root, "crops"))
    crop_files = []
    step = -(-table.num_rows // files)
    for j in range(files):
        uri = fs.join(root, "crops", f"part-{j}.parquet")
        pq.write_table(table.slice(j * step, step), uri, row_group_size=row_group)
        crop_files.append(uri)
    expected = {c: int(i) for c, i, kk in zip(crop_ids.tolist(), ident.tolist(), kept.tolist()) if kk}
    return CuratedCrops(crop_files, vids, level_uris, np.asarray(id_of, np.int64), offsets, levels, final, expected)
