"""docs/config.md is generated from the config dataclasses (cion_ray.configdoc): it must match them,
and every key must carry a meaning (the comment on its field)."""
import dataclasses
import subprocess
import sys

from cion_ray import configdoc
from cion_ray.configdoc import DOC, REGENERATE, field_meanings, keys, missing_meanings, render, yaml_value


def test_docs_config_md_is_current():
    assert DOC.is_file(), f"{DOC} is missing: generate it with {REGENERATE}"
    assert DOC.read_text() == render(), f"docs/config.md is stale: regenerate it with {REGENERATE}"


def test_every_key_has_a_meaning():
    missing = missing_meanings()
    assert not missing, ("these config fields have no comment (add `# meaning` on the field's line, then "
                         f"{REGENERATE}): {', '.join(missing)}")


def test_every_stage_and_nested_key_is_documented():
    from cion_ray.curation.config import CurateConfig
    from cion_ray.pretrain.config import PretrainConfig

    text = render()
    for cmd, _cls in configdoc.stages():
        assert f"\n## {cmd}\n" in text
    for path in ("link.window", "pool.actors", "denoise.radius", "embed.dtype"):
        assert f"| `{path}` |" in text.split("\n## curate\n")[1].split("\n## ")[0]
    curate = {k.path: k for k in keys(CurateConfig)}
    assert curate["link.window"].default == "6" and curate["link.window"].type == "int"
    assert curate["link"].section and curate["link.window"].meaning.startswith("videos per sliding range")
    assert {k.path for k in keys(PretrainConfig)} >= {"optim.k_schedule", "scale.workers", "views.global_size"}


@dataclasses.dataclass
class _Inner:
    a: int = 1  # trailing comment
    # the line above
    # and another
    b: tuple[int, int] = (2, 3)  # and its own
    c: str = ""


@dataclasses.dataclass
class _Outer:
    inner: _Inner = dataclasses.field(default_factory=_Inner)  # a section
    d: float = 0.5  # x | y


def test_comments_are_read_from_the_source():
    assert field_meanings(_Inner) == {"a": "trailing comment", "b": "the line above and another and its own", "c": ""}
    ks = {k.path: k for k in keys(_Outer)}
    assert list(ks) == ["inner", "inner.a", "inner.b", "inner.c", "d"]
    assert ks["inner"].section and ks["inner"].meaning == "a section"
    assert (ks["inner.b"].type, ks["inner.b"].default) == ("tuple[int, int]", "[2, 3]")
    assert ks["inner.c"].default == '""' and ks["inner.c"].meaning == ""


def test_yaml_values():
    assert [yaml_value(v) for v in (None, True, 0.25, "", "0:2,0.4:4", (256, 128), "a b")] == \
        ["null", "true", "0.25", '""', "0:2,0.4:4", "[256, 128]", "'a b'"]


def test_check_flag_reports_a_stale_file(tmp_path, monkeypatch):
    monkeypatch.setattr(configdoc, "DOC", tmp_path / "config.md")
    assert configdoc.main(["--check"]) == 1
    assert configdoc.main(["--write"]) == 0 and configdoc.main(["--check"]) == 0


def test_module_prints_the_document():
    r = subprocess.run([sys.executable, "-m", "cion_ray.configdoc"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == render()
