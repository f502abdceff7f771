"""Reading person crops (JPEG bytes) back from a tracking output's crops Parquet, by crop id."""
from __future__ import annotations

from typing import Iterable

from cion_ray.io import fs


def read_crop_images(crop_files: list[str], crop_ids: Iterable[str]) -> dict[str, bytes]:
    """crop id -> JPEG bytes for the wanted ids found in `crop_files` (absent ids are left out);
    only the matching rows' crop column is read from each file."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    wanted = pa.array(list(crop_ids), type=pa.string())
    images: dict[str, bytes] = {}
    for f in crop_files:
        pa_fs, path = fs.arrow_fs(f)
        t = pq.read_table(path, filesystem=pa_fs, columns=["crop_id", "crop"], filters=pc.field("crop_id").isin(wanted))
        images.update(zip(t.column("crop_id").to_pylist(), t.column("crop").to_pylist()))
    return images
