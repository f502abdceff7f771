"""The one stage-output layer every stage uses: content keys, file records, verified reads.

- **Content keys**: a cache entry is named by a digest of what it was computed from (the input's
  content key and the settings), never by a video name alone, so a changed input is never served
  a stale result and an unchanged one is never computed twice.
- **Sources**: what an input file *is* (size and modification time, with a SHA-256 of its bytes
  locally; size and ETag on S3), so a re-run can tell "already done" from "another file of the
  same name".
- **File records**: each committed file is listed in the manifest with its row count, size and
  checksum (SHA-256 locally, the ETag on S3). Readers check that every listed file is there at its
  listed size before they read, and refuse a damaged output with a message naming it.
- **Write beside, then publish**: a stage writes a run's files under a folder of their own
  (`<table>/run-<id>/`), then publishes the manifest (one atomic write); what the previous run
  committed is removed only after that, so a killed or failed run loses nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath

import pyarrow.parquet as pq

from cion_ray.errors import CionError
from cion_ray.io import fs

KEY_CHARS = 20


def content_key(*parts) -> str:
    """A short stable digest of JSON-able parts (same parts -> same key, on any machine)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:KEY_CHARS]


def _sha256_local(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _info(uri: str) -> dict:
    f, path = fs.get_fs(uri)
    try:
        return f.info(path)
    except FileNotFoundError:
        raise CionError(f"{uri}: not found") from None
    except Exception as e:
        raise CionError(f"{uri}: cannot read ({e})") from None


def source_identity(uri: str, known: dict | None = None) -> dict:
    """What an input file is: {"size", "mtime", "sha256"} locally, {"size", "etag"} on S3.

    With `known` (the identity recorded before), a local file whose size and mtime are unchanged
    is not hashed again (the make rule); otherwise its bytes are hashed."""
    if fs.is_remote(uri):
        info = _info(uri)
        etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
        return {"size": int(info.get("size") or 0), "etag": etag}
    _, path = fs.get_fs(uri)
    try:
        st = os.stat(path)
    except OSError as e:
        raise CionError(f"{uri}: cannot read ({e.strerror or e})") from None
    ident = {"size": st.st_size, "mtime": st.st_mtime_ns}
    if known and known.get("size") == ident["size"] and known.get("mtime") == ident["mtime"] and "sha256" in known:
        return {**ident, "sha256": known["sha256"]}
    try:
        ident["sha256"] = _sha256_local(path)
    except OSError as e:
        raise CionError(f"{uri}: cannot read ({e.strerror or e})") from None
    return ident


def same_source(a: dict | None, b: dict) -> bool:
    """Whether two source identities name the same bytes (content, not the modification time)."""
    if not a:
        return False
    if "sha256" in a and "sha256" in b:
        return a["sha256"] == b["sha256"] and a.get("size") == b.get("size")
    if a.get("etag") and b.get("etag"):
        return a["etag"] == b["etag"] and a.get("size") == b.get("size")
    return False


def relative(out: str, uri: str) -> str:
    """`uri` relative to the output `out` (as listed in manifests)."""
    if fs.is_remote(out):
        base = out.rstrip("/") + "/"
    else:  # either may be relative to the working directory (an API caller's out="runs/x")
        base, uri = os.path.abspath(out).rstrip(os.sep) + os.sep, os.path.abspath(uri)
    if not uri.startswith(base):
        raise CionError(f"{uri}: not inside the output {out}")
    return uri[len(base):].replace(os.sep, "/")


def file_record(out: str, uri: str) -> dict:
    """{"path" (relative to out), "bytes", "rows" (Parquet), "sha256" | "etag"} of a written file."""
    rec: dict = {"path": relative(out, uri)}
    if fs.is_remote(uri):
        info = _info(uri)
        rec["bytes"] = int(info.get("size") or 0)
        rec["etag"] = str(info.get("ETag") or info.get("etag") or "").strip('"')
    else:
        _, path = fs.get_fs(uri)
        rec["bytes"] = os.path.getsize(path)
        rec["sha256"] = _sha256_local(path)
    if uri.endswith(".parquet"):
        pa_fs, path = fs.arrow_fs(uri)
        try:
            with pa_fs.open_input_file(path) as f:
                rec["rows"] = pq.ParquetFile(f).metadata.num_rows
        except Exception as e:
            raise CionError(f"{uri}: written but not readable as Parquet ({e})") from None
    return rec


def file_records(out: str, uris: list[str]) -> list[dict]:
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(lambda u: file_record(out, u), uris))


def _listing(root: str) -> dict[str, int]:
    """{relative path: size} of every file under `root` (one listing)."""
    f, path = fs.get_fs(root)
    try:
        found = f.find(path, detail=True) if f.exists(path) else {}
    except Exception as e:
        raise CionError(f"{root}: cannot list ({e})") from None
    base = path.rstrip("/") + "/"
    return {p[len(base):] if p.startswith(base) else p: int(d.get("size") or 0) for p, d in found.items()
            if not p.endswith("/")}  # "folder/" directory markers are not files


def check_records(out: str, records: list[dict], what: str) -> None:
    """Refuse an output whose listed files are missing or of another size than committed."""
    if not records:
        return
    tops = sorted({r["path"].split("/", 1)[0] for r in records})
    have: dict[str, int] = {}
    for top in tops:
        have.update({posixpath.join(top, k): v for k, v in _listing(fs.join(out, top)).items()})
    missing = [r["path"] for r in records if r["path"] not in have]
    changed = [r["path"] for r in records if r["path"] in have and have[r["path"]] != r["bytes"]]
    if missing or changed:
        bad = missing + changed
        kind = "missing" if missing else "changed since they were committed"
        raise CionError(f"{out}: the committed {what} is damaged: {len(bad)} of its {len(records)} files are {kind} "
                        f"(e.g. {bad[0]}); re-run the stage with --overwrite")


def publish_link(out: str, name: str, target: str) -> None:
    """Point the local `out/name` at `target` (relative to out) in one atomic rename. A real folder
    there (the first curation layout wrote its export in place) is superseded and removed first."""
    link = os.path.join(out, name)
    if os.path.isdir(link) and not os.path.islink(link):
        fs.remove_tree(link)
    tmp = os.path.join(out, f".{name}.link-partial")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def remove_unnamed(root: str, keep: set[str]) -> None:
    """After a commit: remove the entries directly under `root` whose names are not in `keep` (the
    runs a manifest no longer names: replaced ones, and any a killed run left before its commit)."""
    if not fs.exists(root):
        return
    f, path = fs.get_fs(root)
    for child in f.ls(path, detail=False):
        name = child.rstrip("/").rsplit("/", 1)[-1]
        if name not in keep:
            fs.remove_tree(fs.join(root, name))
