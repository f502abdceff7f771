"""Loading backbone weights from the checkpoint layouts people have.

Accepted: a plain state dict; a dict holding it under "teacher", "state_dict" or "model"
(the released CION code and our pre-training export use "teacher"); keys prefixed by
"module." (DDP) and/or "backbone." (a DINO-style wrapper, whose head is then left out).

`load_backbone(arch, weights, size)` builds a backbone from any of them: a checkpoint file (our
exports backbone.pth / teacher.pth, a Ray Train checkpoint.pt, a released CION .pth), a folder
holding one (a pre-training or fine-tuning run: its newest checkpoint), or a seeded random
initialisation; without a size, at the input size the checkpoint was trained at.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

from cion_ray.errors import CionError

CONTAINERS = ("teacher", "state_dict", "model")


def _strip(k: str, prefix: str) -> str:
    return k[len(prefix):] if k.startswith(prefix) else k


def extract_backbone_state(obj) -> dict:
    """A checkpoint object -> the backbone's state dict.

    "module." prefixes are stripped; when keys carry "backbone." (a wrapper holding a backbone and a
    projection head), only those keys are kept, without the prefix."""
    if not isinstance(obj, dict):
        raise CionError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    for key in CONTAINERS:
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    tensors = {_strip(k, "module."): v for k, v in obj.items() if hasattr(v, "shape")}
    if any(k.startswith("backbone.") for k in tensors):
        tensors = {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}
    if not tensors:
        raise CionError("checkpoint has no tensors")
    return tensors


def load_backbone_state(path: str | Path) -> dict:
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CionError(f"weights {path}: not found") from None
    except Exception as e:  # a truncated or foreign file
        raise CionError(f"weights {path}: cannot load ({type(e).__name__}: {e})") from None
    try:
        return extract_backbone_state(obj)
    except CionError as e:
        raise CionError(f"weights {path}: {e}") from None


# --- finding a checkpoint and loading it into a backbone (evaluation, the timm embedder) ---

RANDOM = "random"  # `weights` that ask for a seeded random initialisation instead of a checkpoint
WEIGHT_FILES = ("backbone.pth", "export/backbone.pth", "teacher.pth", "export/teacher.pth")
CKPT_FILE = "checkpoint.pt"  # a training checkpoint: Ray Train's checkpoint_*/, local fine-tuning's checkpoint/
DEFAULT_SIZE = (256, 128)  # (H, W) input size of a backbone whose checkpoint does not record one


@dataclass
class LoadedWeights:
    """Where a backbone's weights came from: `file` (a checkpoint file, or "random"), the arch,
    epoch, iteration and training input size (H, W) the checkpoint records (None when it does
    not); `size`: the input size the backbone was built at (load_backbone)."""
    source: str
    file: str
    arch: str | None = None
    epoch: int | None = None
    seed: int | None = None
    iteration: int | None = None
    trained_size: tuple[int, int] | None = None
    size: tuple[int, int] | None = None


def _run_of(rel: str) -> str | None:
    """The run folder ("" for the listed folder itself) of a training checkpoint at `rel` (a path
    relative to the listed folder), None when `rel` is not one. Pre-training and fine-tuning on
    Ray keep theirs as <run>/train/checkpoint_*/checkpoint.pt (any other Ray Train run folder:
    <ray run>/checkpoint_*/checkpoint.pt), local fine-tuning as <run>/checkpoint/checkpoint.pt."""
    parts = rel.split("/")
    if parts[-1] != CKPT_FILE:
        return None
    if len(parts) == 1:  # the folder is one checkpoint
        return ""
    if parts[-2].startswith("checkpoint_"):
        run = parts[:-2]
        return "/".join(run[:-1] if run and run[-1] == "train" else run)
    if parts[-2] == "checkpoint":
        return "/".join(parts[:-2])
    return None


def find_checkpoint_file(uri: str) -> str:
    """The checkpoint file `uri` names (local path or s3://): a file is itself; in a folder (a
    pre-training or fine-tuning run, its train/ folder, one Ray Train checkpoint), the newest
    training checkpoint (see _run_of), else backbone.pth / teacher.pth (also under export/), else
    the folder's only .pth / .pt file. CionError naming the folder when there is none, or when
    the training checkpoints below it belong to several runs (which one is meant is not for the
    newest file to decide)."""
    from cion_ray.io import fs

    fsys, root = fs.get_fs(uri)
    try:
        if not fsys.exists(root):
            raise CionError(f"weights {uri}: not found")
        if fsys.isfile(root):
            return str(uri)
        root = root.rstrip("/")
        rels = sorted(p[len(root) + 1:] for p in fsys.find(root) if p.endswith((".pt", ".pth")))
    except CionError:
        raise
    except Exception as e:  # network / permission problems
        raise CionError(f"weights {uri}: cannot list ({e})") from None
    runs = {r: _run_of(r) for r in rels}
    ckpts = [r for r, run in runs.items() if run is not None]
    found = sorted({runs[r] for r in ckpts})
    if len(found) > 1:
        named = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
        raise CionError(f"weights {uri}: holds checkpoints of {len(found)} runs ({named}); name one of them")
    if ckpts:  # Ray Train names them checkpoint_<date_time> (or _<index>): the name orders them
        return fs.join(uri, *max(ckpts, key=lambda r: posixpath.basename(posixpath.dirname(r))).split("/"))
    picked = [r for r in WEIGHT_FILES if r in rels] or (rels if len(rels) == 1 else [])
    if picked:
        return fs.join(uri, *picked[0].split("/"))
    listed = f"{len(rels)} .pt/.pth files" if rels else "no .pt/.pth file"
    raise CionError(f"weights {uri}: a folder with {listed}; expected a pre-training run (train/checkpoint_*/"
                    "checkpoint.pt), an export (backbone.pth, teacher.pth) or a checkpoint file")


def read_checkpoint(uri: str) -> tuple[dict, LoadedWeights]:
    """(backbone state dict, where it came from) of a checkpoint file or folder (see
    find_checkpoint_file), local or s3://."""
    import torch

    from cion_ray.io import fs

    file = find_checkpoint_file(uri)
    path = fs.local_copy(file)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise CionError(f"weights {file}: cannot load ({_load_error(e)})") from None
    try:
        state = extract_backbone_state(obj)
    except CionError as e:
        raise CionError(f"weights {file}: {e}") from None

    def recorded(key: str, kind: type):
        v = obj.get(key)
        return v if isinstance(v, kind) and not isinstance(v, bool) else None

    return state, LoadedWeights(str(uri), file, recorded("arch", str), recorded("epoch", int), None,
                                recorded("iteration", int), trained_size(obj))


def trained_size(obj: dict) -> tuple[int, int] | None:
    """The (H, W) input size a checkpoint object records having been trained at: fine-tuning's
    checkpoints and model.pth ("size": augment.size), pre-training's checkpoints ("config" ->
    views.global_size); None for plain state dicts and other layouts."""
    size = obj.get("size")
    config = obj.get("config")
    if size is None and isinstance(config, dict) and isinstance(config.get("views"), dict):
        size = config["views"].get("global_size")
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size):
        return int(size[0]), int(size[1])
    return None


def _load_error(e: Exception) -> str:
    """One line for torch.load's (often multi-paragraph) error."""
    text = str(e)
    if "WeightsUnpickler error:" in text:  # weights_only refused it: say why, not the upgrade notes
        detail = [ln.strip() for ln in text.split("WeightsUnpickler error:", 1)[1].splitlines() if ln.strip()]
        return f"not a checkpoint of tensors and plain values: {detail[0] if detail else type(e).__name__}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def load_state_strict(model, state: dict, file: str, arch: str) -> None:
    """Load `state` into `model`; missing or unexpected keys and shape mismatches are a CionError
    naming `file`."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # size mismatches
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
        raise CionError(f"weights {file} do not fit {arch}: {lines[0] if lines else str(e).splitlines()[0]}") from None
    for what, keys in (("missing", result.missing_keys), ("unexpected", result.unexpected_keys)):
        if keys:
            raise CionError(f"weights {file} do not fit {arch}: {len(keys)} {what} backbone keys, "
                            f"e.g. {', '.join(keys[:3])}")


def load_backbone(arch: str | None, weights: str, size: tuple[int, int] | None, seed: int = 0):
    """(backbone, LoadedWeights): `arch` built at input `size` (H, W) with the weights of a
    checkpoint (file or folder, local or s3://), or `weights="random"`: a random initialisation
    from torch seed `seed`. `arch` may be left out when the checkpoint records it; a checkpoint
    recording another arch is an error. `size` None: the size the checkpoint was trained at,
    else DEFAULT_SIZE (info.size says which)."""
    import torch

    from cion_ray.zoo.factory import create_backbone

    if not weights:
        raise CionError("no weights given: a checkpoint (file, run folder or s3:// URI), or 'random'")
    if weights == RANDOM:
        if not arch:
            raise CionError("random weights need an arch (--arch)")
        size = tuple(size or DEFAULT_SIZE)
        torch.manual_seed(seed)
        return create_backbone(arch, size), LoadedWeights(RANDOM, RANDOM, arch, None, seed, size=size)
    state, info = read_checkpoint(weights)
    if arch and info.arch and arch != info.arch:
        raise CionError(f"weights {info.file} hold a {info.arch} backbone, not {arch}")
    arch = arch or info.arch
    if not arch:
        raise CionError(f"weights {info.file} do not record their backbone: give it (--arch)")
    info.size = tuple(size or info.trained_size or DEFAULT_SIZE)
    model = create_backbone(arch, info.size)
    load_state_strict(model, state, info.file, arch)
    info.arch = arch
    return model, info
