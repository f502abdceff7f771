"""docs/data.md names every field of every Parquet schema."""
from pathlib import Path

from cion_ray.io import schemas

DOC = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()


def test_every_schema_field_documented():
    for schema in (schemas.CROPS, schemas.IDENTITIES, schemas.embeddings_schema(8)):
        for name in schema.names:
            assert f"`{name}`" in DOC, name


def test_crop_id_format():
    assert schemas.crop_id("v0003", 42, 7) == "v0003/000042/7"
