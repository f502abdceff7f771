"""docs/config.md, generated from the config dataclasses so that it cannot drift from them.

A key's meaning is the comment on its field's line (`window: int = 6  # videos per range`),
after the comment lines right above the field when there are some. Regenerate with
`python -m cion_ray.configdoc --write` (or `> docs/config.md`); `--check` exits 1 when the file
is stale. tests/test_configdoc.py fails when it is, or when a field has no comment.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import io
import sys
import textwrap
import tokenize
import typing
from functools import lru_cache
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"
REGENERATE = "python -m cion_ray.configdoc --write"

# (command, module, class) of every stage, in pipeline order
STAGES = [("synth", "cion_ray.synth.config", "SynthConfig"),
          ("track", "cion_ray.tracking.config", "TrackConfig"),
          ("curate", "cion_ray.curation.config", "CurateConfig"),
          ("pretrain", "cion_ray.pretrain.config", "PretrainConfig"),
          ("evaluate", "cion_ray.evaluate.pipeline", "EvaluateConfig"),
          ("finetune", "cion_ray.finetune.config", "FinetuneConfig"),
          ("compare", "cion_ray.compare.config", "CompareConfig")]
# the whole pipeline (cion-ray run): documented when its module is there
PIPELINE = ("run", "cion_ray.pipeline.config", "PipelineConfig")


@dataclasses.dataclass
class Key:
    """One documented key: its dotted path, type, default (as YAML would write it) and meaning."""
    path: str
    type: str
    default: str
    meaning: str
    section: bool = False  # a nested section (its keys follow), not a value


def stages() -> list[tuple[str, type]]:
    """(command, config class) of every stage, the pipeline's last when cion_ray.pipeline.config imports."""
    out = [(cmd, getattr(importlib.import_module(mod), name)) for cmd, mod, name in STAGES]
    cmd, mod, name = PIPELINE
    try:
        out.append((cmd, getattr(importlib.import_module(mod), name)))
    except ImportError:
        pass
    return out


@lru_cache(maxsize=None)
def _fields_source(cls: type) -> dict[str, tuple[str, str]]:
    """{field: (annotation as written, comment)} from the class's source: the comment lines right
    above a field, then the comment on its own line(s), joined."""
    src = textwrap.dedent(inspect.getsource(cls))
    lines = src.splitlines()
    comments: dict[int, str] = {}  # line number (1-based) -> the comment's text
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    body = next(n for n in ast.parse(src).body if isinstance(n, ast.ClassDef)).body
    out = {}
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above = []
        ln = node.lineno - 1
        while ln >= 1 and lines[ln - 1].lstrip().startswith("#"):
            above.insert(0, comments[ln])
            ln -= 1
        own = [comments[i] for i in range(node.lineno, node.end_lineno + 1) if i in comments]
        out[node.target.id] = (ast.get_source_segment(src, node.annotation), " ".join(above + own).strip())
    return out


def field_meanings(cls: type) -> dict[str, str]:
    """{field: meaning} of dataclass `cls` ("" where its source has no comment)."""
    found = _fields_source(cls)
    return {f.name: found.get(f.name, ("", ""))[1] for f in dataclasses.fields(cls)}


def yaml_value(v) -> str:
    """`v` as it would be written in a config YAML file."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '""' if v == "" else v if v.replace(":", "").replace(",", "").replace(".", "").replace(
            "_", "").replace("-", "").replace("/", "").isalnum() else repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(yaml_value(x) for x in v) + "]"
    return repr(v)


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def keys(cls: type, prefix: str = "", stage_classes: dict[type, str] | None = None) -> list[Key]:
    """Every key of `cls`, nested sections expanded depth first; a field whose type is another
    stage's config (the pipeline's sections) refers to that stage's table instead."""
    hints = typing.get_type_hints(cls)
    src = _fields_source(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp, path = hints[f.name], prefix + f.name
        written, meaning = src.get(f.name, ("", ""))
        if dataclasses.is_dataclass(tp):
            if stage_classes and tp in stage_classes:
                cmd = stage_classes[tp]
                ref = f"its keys: [{cmd}](#{cmd}), each under `{path}.`"
                out.append(Key(path, tp.__name__, "section", f"{meaning}; {ref}" if meaning else ref, True))
                continue
            out.append(Key(path, tp.__name__, "section", meaning, True))
            out += keys(tp, path + ".", stage_classes)
            continue
        default = _default(f)
        out.append(Key(path, written or str(f.type), "required" if default is dataclasses.MISSING
                       else yaml_value(default), meaning))
    return out


def missing_meanings() -> list[str]:
    """Dotted `Class.path` of every documented key without a meaning."""
    found = []
    for cmd, cls in stages():
        others = {c: n for n, c in stages() if c is not cls}
        found += [f"{cls.__name__}.{k.path}" for k in keys(cls, stage_classes=others) if not k.meaning]
    return found


def _cell(text: str) -> str:
    """Text for a Markdown table cell: `|` would end the cell and `<video_id>` read as an HTML tag."""
    return text.replace("|", "\\|").replace("<", "&lt;")


def _intro(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return " ".join(doc.split("\n\n")[0].split())


def render() -> str:
    """The whole of docs/config.md."""
    all_stages = stages()
    out = ["# Configuration reference", "",
           f"<!-- generated by `{REGENERATE}` from the config dataclasses: do not edit by hand -->", "",
           "Every stage reads its settings from a config dataclass. A YAML file (`--config FILE`) nests them",
           "as the dotted keys below do (`link.window: 4` is `link:` then `  window: 4`); `--set KEY=VALUE`",
           "overrides one key (repeatable; values are YAML scalars, lists are comma-separated). Precedence,",
           "lowest first: the defaults below, the YAML file, the command's own flags, `--set`. An unknown key",
           "is an error that names where a key of that name does exist. Values are checked before Ray",
           "starts: a bad one is a one-line error and exit status 2.", "",
           "Types are Python's: `tuple[int, int]` is a list of two integers (`[256, 128]` in YAML,",
           "`256,128` in `--set`). A `section` groups the keys under it.", ""]
    out += [" · ".join(f"[{cmd}](#{cmd})" for cmd, _ in all_stages), ""]
    for cmd, cls in all_stages:
        others = {c: n for n, c in all_stages if c is not cls}
        how = ("no `--config`: its flags and `--set` set these keys; `--set` overrides the pre-training "
               "profile") if cmd == "compare" else f"`cion-ray {cmd} --config FILE --set KEY=VALUE`"
        out += [f"## {cmd}", "", f"`{cls.__module__}.{cls.__name__}`; {how}.", ""]
        if _intro(cls):
            out += [_intro(cls), ""]
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for k in keys(cls, stage_classes=others):
            path = f"**{k.path}**" if k.section else f"`{k.path}`"
            default = k.default if k.section else f"`{k.default}`"
            out.append(f"| {path} | {_cell(k.type)} | {_cell(default)} | {_cell(k.meaning)} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cion_ray.configdoc", description=__doc__.split("\n\n")[0])
    p.add_argument("--write", action="store_true", help=f"write {DOC.relative_to(DOC.parents[1])}")
    p.add_argument("--check", action="store_true", help="exit 1 when the file differs from the generated text")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        current = DOC.read_text() if DOC.is_file() else ""
        if current != text:
            print(f"{DOC} is stale: regenerate it with {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    if args.write:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(text)
        print(f"wrote {DOC}")
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
