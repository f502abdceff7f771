"""Filesystems for local paths and s3:// URIs, through fsspec (s3fs for S3).

S3 endpoints and credentials come from the standard AWS environment
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, instance
roles); nothing here reaches the network until a file is opened.
"""
from __future__ import annotations

import json
import os
import posixpath
from pathlib import Path

import fsspec
import pyarrow.fs as pafs

from cion_ray.errors import CionError


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def _storage_options(uri: str) -> dict:
    if str(uri).startswith("s3://"):
        opts: dict = {}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["client_kwargs"] = {"endpoint_url": endpoint}
        return opts
    return {}


def get_fs(uri: str | Path) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path or URI."""
    uri = str(uri)
    try:
        fs, path = fsspec.core.url_to_fs(uri, **_storage_options(uri))
    except (ImportError, ValueError) as e:
        raise CionError(f"{uri}: unsupported location ({e})") from None
    if not is_remote(uri):
        path = os.path.abspath(path)
    return fs, path


def arrow_fs(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem (for Parquet and Ray Data) and the path inside it."""
    fs, path = get_fs(uri)
    if not is_remote(str(uri)):
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def join(uri: str | Path, *parts: str) -> str:
    uri = str(uri)
    if is_remote(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return str(Path(uri, *parts))


def exists(uri: str | Path) -> bool:
    fs, path = get_fs(uri)
    try:
        return fs.exists(path)
    except Exception as e:  # network / permission problems are the user's to see
        raise CionError(f"{uri}: cannot check ({e})") from None


def read_bytes(uri: str | Path) -> bytes:
    fs, path = get_fs(uri)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CionError(f"{uri}: not found") from None
    except Exception as e:
        raise CionError(f"{uri}: cannot read ({e})") from None


def read_text(uri: str | Path) -> str:
    try:
        return read_bytes(uri).decode()
    except UnicodeDecodeError as e:
        raise CionError(f"{uri}: not text ({e})") from None


def write_bytes_atomic(uri: str | Path, data: bytes) -> None:
    """Write a whole object: a local file is written then renamed; an S3 PUT is atomic by itself."""
    fs, path = get_fs(uri)
    try:
        if is_remote(str(uri)):
            with fs.open(path, "wb") as f:
                f.write(data)
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(path).with_name(f".{Path(path).name}.partial")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        raise CionError(f"{uri}: cannot write ({e.strerror or e})") from None


def write_json(uri: str | Path, obj) -> None:
    write_bytes_atomic(uri, (json.dumps(obj, indent=1) + "\n").encode())


def read_json(uri: str | Path):
    try:
        return json.loads(read_text(uri))
    except json.JSONDecodeError as e:
        raise CionError(f"{uri}: not valid JSON ({e})") from None


def makedirs(uri: str | Path) -> None:
    fs, path = get_fs(uri)
    if is_remote(str(uri)):
        return  # object stores have no directories
    try:
        fs.makedirs(path, exist_ok=True)
        probe = Path(path) / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CionError(f"{uri}: not writable ({e.strerror or e})") from None


def remove_tree(uri: str | Path) -> None:
    fs, path = get_fs(uri)
    try:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass


def list_files(uri: str | Path, suffixes: tuple[str, ...] = ()) -> list[str]:
    """Files under `uri` (recursive), as URIs of the same kind, sorted."""
    fs, path = get_fs(uri)
    try:
        if not fs.exists(path):
            raise CionError(f"{uri}: not found")
        if fs.isfile(path):
            found = [path]
        else:
            found = [p for p in fs.find(path) if not posixpath.basename(p).startswith(".")]
    except CionError:
        raise
    except Exception as e:
        raise CionError(f"{uri}: cannot list ({e})") from None
    if suffixes:
        found = [p for p in found if p.lower().endswith(suffixes)]
    if is_remote(str(uri)):
        proto = str(uri).split("://", 1)[0]
        return sorted(f"{proto}://{p.lstrip('/')}" for p in found)
    return sorted(found)


def open_input(uri: str | Path):
    """A binary file object for reading (PyAV and pyarrow accept it)."""
    fs, path = get_fs(uri)
    try:
        return fs.open(path, "rb")
    except FileNotFoundError:
        raise CionError(f"{uri}: not found") from None
    except Exception as e:
        raise CionError(f"{uri}: cannot open ({e})") from None


def local_copy(uri: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A local path for `uri`: itself when local, else a cached download (for model weights)."""
    if not is_remote(str(uri)):
        p = Path(str(uri)).expanduser()
        if not p.exists():
            raise CionError(f"{uri}: not found")
        return p
    cache = Path(cache_dir or Path.home() / ".cache" / "cion-ray" / "downloads")
    cache.mkdir(parents=True, exist_ok=True)
    fs, path = get_fs(uri)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise CionError(f"{uri}: not found") from None
    except Exception as e:
        raise CionError(f"{uri}: cannot read ({e})") from None
    tag = str(info.get("ETag") or info.get("etag") or info.get("size", "")).strip('"')
    dest = cache / f"{tag}-{posixpath.basename(path)}"
    if not dest.exists():
        tmp = dest.with_name(f".{dest.name}.partial")
        fs.get(path, str(tmp))
        os.replace(tmp, dest)
    return dest
