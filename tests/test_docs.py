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


def test_reliability_doc_cites_only_tests_that_exist():
    import re

    doc = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    tests = Path(__file__).resolve().parent
    defined = set()
    for f in tests.glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", f.read_text(), re.M))
    cited = set(re.findall(r"`(test_\w+)`", doc))
    assert len(cited) >= 40 and cited <= defined, sorted(cited - defined)
    # the fault table's figure is its own row count
    faults = [r for r in doc.split("## Faults on a multi-node cluster")[1].split("##")[0].splitlines()
              if r.startswith("| ") and "`test_" in r]
    assert f"**{len(faults)} faults, {len(faults)} survived.**" in doc
