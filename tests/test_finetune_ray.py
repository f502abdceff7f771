"""Fine-tuning on Ray Train with a local 2-CPU Ray: 2 CPU workers (gloo, DDP), each on its own
shard of the synthetic world's training identities; metrics, result and exports."""
from __future__ import annotations

import json

import pytest
import torch

from cion_ray.config import load_config
from cion_ray.finetune.config import FinetuneConfig

pytestmark = pytest.mark.ray


def test_two_workers_finetune_and_export(ray_session, default_world, tmp_path):
    from cion_ray.finetune.outputs import load_finetuned
    from cion_ray.runtime.finetune import run_finetune

    out = tmp_path / "ft"
    cfg = load_config(FinetuneConfig, None, [
        f"data={default_world / 'reid'}", f"out={out}", "model.arch=test_resnet", "augment.size=32,16",
        "optim.steps=4", "optim.identities_per_batch=4", "optim.images_per_identity=2", "log_every=2",
        "scale.workers=2", "scale.loader_workers=0", "eval.flip=false"])
    r = run_finetune(cfg, log=lambda m: None)
    history = json.loads((out / "metrics.json").read_text())
    assert [m["step"] for m in history] == [2, 4]
    # 2 workers x 4 identities x 2 images per iteration, over all 16 identities
    assert history[-1]["images"] == 4 * 16 and history[-1]["identities"] == 16
    assert r.metrics["step"] == 4 and 0 < r.metrics["eval_mAP"] <= 1 and 0 < r.metrics["eval_mAP_init"] <= 1
    result = json.loads((out / "result.json").read_text())
    assert result["workers"] == 2 and result["metrics"]["eval_mAP"] == r.metrics["eval_mAP"]
    model = load_finetuned(r.exports["model.pth"])
    assert model.classifier.out_features == 16
    assert model(torch.zeros(2, 3, 32, 16)).shape == (2, model.feat_dim)


def test_protocol_fractions_in_parallel(ray_session, default_world, tmp_path):
    """Two fractions at once, each a 1-worker TorchTrainer driven by its own task, on 2 CPUs."""
    from cion_ray.runtime.finetune import run_protocol

    out = tmp_path / "proto"
    cfg = load_config(FinetuneConfig, None, [
        f"data={default_world / 'reid'}", f"out={out}", "model.arch=test_resnet", "augment.size=32,16",
        "optim.steps=2", "optim.identities_per_batch=4", "optim.images_per_identity=2", "log_every=2",
        "scale.loader_workers=0", "eval.flip=false", "fractions=0.5,1", "parallel=true", "label=par"])
    p = run_protocol(cfg, log=lambda m: None)
    assert [(r["fraction"], r["identities"], r["steps"]) for r in p.rows] == [(0.5, 8, 2), (1.0, 16, 2)]
    assert all(0 < r["mAP"] <= 1 and 0 < r["mAP_init"] <= 1 for r in p.rows)
    assert (out / "protocol.png").exists() and (out / "fraction-50pc" / "export" / "model.pth").exists()
    # times the workers recorded when they started (data, model) and at their last step: each run's
    # worker started before the other's last step (one after the other, the second would start after
    # the first ended)
    spans = [json.loads((out / d / "result.json").read_text())["metrics"] for d in ("fraction-50pc", "fraction-100pc")]
    print("training spans:", [(s["worker_started_at"], s["step_at"]) for s in spans])
    assert max(s["worker_started_at"] for s in spans) < min(s["step_at"] for s in spans), "the two runs trained together"
