"""What a fine-tuning run leaves behind, and how to read it back.

- checkpoints (`checkpoint_state`): model, optimizer, iteration and the retrieval metrics of the
  initialisation with the split they were measured on (eval_init_data), by name; a resumed run
  restores all of them (the initial metrics only when it evaluates on the same split);
- `export/model.pth`: {"format", "arch", "size", "neck", "neck_feat", "num_classes", "model": the whole
  ReID model's state dict (backbone.*, neck.*, classifier.*)}: `load_finetuned` rebuilds the model
  with its BNNeck, and zoo.checkpoints.load_backbone_state reads the backbone out of it;
- `export/backbone.pth`: the backbone's plain state dict (strict-loadable into
  create_backbone(arch)), what `curate --embedder timm:ARCH --weights` and pre-training exports use;
- `metrics.json`: one entry per logged iteration, rewritten whole each time (valid at any moment;
  on resume, entries past the checkpoint are dropped).
"""
from __future__ import annotations

import io

import torch

from cion_ray.errors import CionError
from cion_ray.io import fs

FORMAT = "cion-ray-finetune/1"
MODEL_FORMAT = "cion-ray-finetune-model/1"


def _cpu(sd: dict) -> dict:
    return {k: v.detach().cpu() for k, v in sd.items()}


def checkpoint_state(cfg, model: torch.nn.Module, opt: torch.optim.Optimizer, iteration: int,
                     eval_init: dict, metrics: dict | None = None) -> dict:
    from dataclasses import asdict

    return {"format": FORMAT, "arch": cfg.model.arch, "size": list(cfg.augment.size),
            "neck": cfg.model.neck, "neck_feat": cfg.model.neck_feat, "num_classes": int(model.classifier.out_features),
            "iteration": iteration, "model": _cpu(model.state_dict()), "optimizer": opt.state_dict(),
            "eval_init": dict(eval_init), "eval_init_data": cfg.eval_split, "metrics": dict(metrics or {}),
            "config": asdict(cfg),
            "fingerprint": cfg.fingerprint()}


def model_export(state: dict) -> dict:
    if state.get("format") != FORMAT:
        raise CionError("not a cion-ray fine-tuning checkpoint")
    return {"format": MODEL_FORMAT, **{k: state[k] for k in ("arch", "size", "neck", "neck_feat", "num_classes")},
            "model": state["model"]}


def backbone_export(state: dict) -> dict:
    out = {k[len("backbone."):]: v for k, v in state["model"].items() if k.startswith("backbone.")}
    if not out:
        raise CionError("the fine-tuning checkpoint holds no backbone keys")
    return out


def write_exports(state: dict, out: str) -> dict[str, str]:
    """model.pth and backbone.pth under `out` (a folder or s3:// prefix) -> {name: URI}."""
    uris = {}
    for name, obj in (("model.pth", model_export(state)), ("backbone.pth", backbone_export(state))):
        buf = io.BytesIO()
        torch.save(obj, buf)
        uris[name] = fs.join(out, name)
        fs.write_bytes_atomic(uris[name], buf.getvalue())
    return uris


def load_finetuned(uri: str):
    """A model.pth export (path or s3:// URI) -> the ReIDModel in eval mode (on the CPU): model(x)
    gives the retrieval feature it was evaluated with."""
    from cion_ray.finetune.model import ReIDModel
    from cion_ray.zoo.factory import create_backbone, feature_dim

    try:
        obj = torch.load(str(fs.local_copy(uri)), map_location="cpu", weights_only=True)
    except CionError:
        raise
    except Exception as e:
        raise CionError(f"{uri}: cannot load ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or obj.get("format") != MODEL_FORMAT:
        raise CionError(f"{uri}: not a cion-ray fine-tuned model export (export/model.pth)")
    size = tuple(obj["size"])
    backbone = create_backbone(obj["arch"], size)
    model = ReIDModel(backbone, feature_dim(backbone, size), int(obj["num_classes"]), obj["neck_feat"], obj["neck"])
    model.load_state_dict(obj["model"])
    return model.eval()


class MetricsLog:
    """Rank 0's hook: metrics.json under `out`, one entry per logged iteration."""

    def __init__(self, out: str):
        self.uri = fs.join(out, "metrics.json")
        self.history: list[dict] = fs.read_json(self.uri) if fs.exists(self.uri) else []

    def __call__(self, metrics: dict) -> None:
        step = int(metrics["step"])
        self.history = [m for m in self.history if int(m["step"]) < step] + [dict(metrics)]
        fs.write_json(self.uri, self.history)
