"""Small local-file helpers: atomic writes, so a crash never leaves a half file under the final name."""
from __future__ import annotations

import json
import os
from pathlib import Path

from cion_ray.errors import CionError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def ensure_writable_dir(path: str | Path) -> Path:
    """Create `path` (and parents) and check we can write into it; CionError otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CionError(f"output directory {path}: not writable ({e.strerror or e})") from None
    return path
