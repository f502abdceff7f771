"""Pre-training with data in S3 (a CION-AL JSON and its images) and the run folder in S3: Ray Train
checkpoints, metrics, TensorBoard files and exports all land in the bucket (moto's server on
loopback)."""
from __future__ import annotations

import io
import json

import boto3
import pytest
import torch

from cion_ray.config import load_config
from cion_ray.pretrain.config import PretrainConfig

pytestmark = [pytest.mark.ray, pytest.mark.s3]


@pytest.fixture(scope="module")
def s3_data(s3_endpoint, default_world):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="cion-pretrain")
    entries = []
    for f in sorted((default_world / "reid" / "bounding_box_train").glob("*.jpg")):
        s3.upload_file(str(f), "cion-pretrain", f"al/images/{f.name}")
        entries.append({"file_path": f"images/{f.name}", "id": int(f.name[:4])})
    s3.put_object(Bucket="cion-pretrain", Key="al/cion_al.json", Body=json.dumps(entries).encode())
    return "s3://cion-pretrain"


def test_pretrain_reads_and_writes_s3(ray_session, s3_data):
    from cion_ray.pretrain.export import strip_released_prefix
    from cion_ray.runtime.pretrain import run_pretrain
    from cion_ray.zoo.factory import create_backbone

    cfg = load_config(PretrainConfig, None, [
        f"data={s3_data}/al/cion_al.json", f"out={s3_data}/run", "model.arch=test_resnet_ibn", "model.out_dim=256",
        "model.hidden_dim=64", "model.bottleneck_dim=32", "views.local_crops=2", "views.global_size=64,32",
        "views.local_size=32,16", "scale.loader_workers=0", "optim.batch_per_worker=8", "optim.epochs=2",
        "optim.iters_per_epoch=2", "optim.warmup_epochs=1", "optim.k_schedule=0:2"])
    r = run_pretrain(cfg, log=lambda m: None)
    assert r.checkpoint.startswith("cion-pretrain/run/train/checkpoint_")
    s3 = boto3.client("s3")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="cion-pretrain", Prefix="run/")["Contents"]}
    assert {"run/pretrain.json", "run/metrics.json", "run/export/teacher.pth", "run/export/backbone.pth"} <= keys
    assert any(k.startswith("run/train/checkpoint_") and k.endswith("/checkpoint.pt") for k in keys)
    assert any(k.startswith("run/tensorboard/events.out.tfevents") for k in keys)
    history = json.loads(s3.get_object(Bucket="cion-pretrain", Key="run/metrics.json")["Body"].read())
    assert [m["epoch"] for m in history] == [1, 2] and history[-1]["identities"] == 16
    blob = s3.get_object(Bucket="cion-pretrain", Key="run/export/teacher.pth")["Body"].read()
    teacher = torch.load(io.BytesIO(blob), weights_only=True)["teacher"]
    create_backbone("test_resnet_ibn").load_state_dict(strip_released_prefix(teacher), strict=True)
