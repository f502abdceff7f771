"""Per-epoch metrics of a pre-training run: TensorBoard scalars and `metrics.json` (one entry per
epoch, rewritten whole each epoch so it is valid at any time; on resume, epochs after the
checkpoint are dropped before new ones are added). TensorBoard event files are written locally
and copied to an s3:// output after every epoch."""
from __future__ import annotations

import tempfile
from pathlib import Path

from cion_ray.io import fs

SCALARS = ("loss", "teacher_entropy", "kl", "teacher_mean_entropy", "koleo", "feature_similarity", "teacher_temp",
           "lr", "weight_decay", "momentum", "images_per_s", "k",
           # retrieval at checkpoints: the labelled held-out split (eval_*) and the validation identities (val_*)
           "eval_mAP", "eval_rank1", "eval_mINP", "val_mAP", "val_rank1", "val_mINP")


class EpochLog:
    def __init__(self, out: str):
        self.out = out
        self.remote = fs.is_remote(out)
        self.tb_dir = Path(tempfile.mkdtemp(prefix="cion-tb-")) if self.remote else Path(out) / "tensorboard"
        self.metrics_uri = fs.join(out, "metrics.json")
        self.history: list[dict] = fs.read_json(self.metrics_uri) if fs.exists(self.metrics_uri) else []
        self._writer = None

    def _tb(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.tb_dir))
        return self._writer

    def __call__(self, metrics: dict) -> None:
        epoch = int(metrics["epoch"])
        self.history = [m for m in self.history if int(m["epoch"]) < epoch] + [dict(metrics)]
        fs.write_json(self.metrics_uri, self.history)
        w = self._tb()
        for k in SCALARS:
            if k in metrics:
                w.add_scalar(f"pretrain/{k}", float(metrics[k]), epoch)
        w.flush()
        if self.remote:
            for f in self.tb_dir.iterdir():
                fs.write_bytes_atomic(fs.join(self.out, "tensorboard", f.name), f.read_bytes())

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
