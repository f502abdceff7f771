"""Evaluation with the dataset and the checkpoint in S3 (moto's server on loopback): layout
detection one folder down, a pre-training run folder's newest checkpoint, local and Ray-pool
extraction, and the JSON result written back to the bucket."""
from __future__ import annotations

import io
import json

import boto3
import numpy as np
import pytest
import torch
from PIL import Image

from cion_ray.evaluate.datasets import load_dataset
from cion_ray.evaluate.pipeline import EvaluateConfig, FeatureOptions
from cion_ray.evaluate.reid import evaluate_backbone
from cion_ray.runtime.evaluate import run_evaluate
from cion_ray.zoo.factory import create_backbone

pytestmark = pytest.mark.s3
BUCKET, ARCH, SIZE = "cion-eval", "test_resnet", (64, 32)


def jpeg(pid: int, rng) -> bytes:
    a = np.clip(np.full((64, 32, 3), 25 * pid) + rng.integers(-30, 30, (64, 32, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def bucket(s3_endpoint, tmp_path_factory):
    """s3://cion-eval/datasets/market/Market-1501/{query,bounding_box_test}, datasets/msmt17/MSMT17_V2
    (list files), run/train/checkpoint_*/checkpoint.pt (two, the newer one last), and the same
    Market split on local disk."""
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    rng = np.random.default_rng(0)
    local = tmp_path_factory.mktemp("market")
    for pid in range(1, 7):
        for folder, cams in (("query", [1]), ("bounding_box_test", [2, 3])):
            for cam in cams:
                name = f"{pid:04d}_c{cam}s1_{pid * 10 + cam:06d}_01.jpg"
                data = jpeg(pid, rng)
                s3.put_object(Bucket=BUCKET, Key=f"datasets/market/Market-1501/{folder}/{name}", Body=data)
                (local / folder).mkdir(exist_ok=True)
                (local / folder / name).write_bytes(data)
    msmt = "datasets/msmt17/MSMT17_V2"
    for split, folder in (("query", "mask_test_v2"), ("gallery", "mask_test_v2"), ("train", "mask_train_v2")):
        lines = [f"0001/0001_00{i}_0{i + 2}_0303morning_00{i}_0.jpg 1" for i in range(2)]
        for line in lines:
            s3.put_object(Bucket=BUCKET, Key=f"{msmt}/{folder}/{line.split()[0]}", Body=jpeg(1, rng))
        s3.put_object(Bucket=BUCKET, Key=f"{msmt}/list_{split}.txt", Body="\n".join(lines).encode())
    models = []
    for seed, name in ((1, "checkpoint_2026-01-01_10-00-00.000001"), (2, "checkpoint_2026-01-01_11-00-00.000001")):
        torch.manual_seed(seed)
        m = create_backbone(ARCH, SIZE)
        buf = io.BytesIO()
        torch.save({"arch": ARCH, "epoch": seed, "teacher": {f"backbone.{k}": v for k, v in m.state_dict().items()}},
                   buf)
        s3.put_object(Bucket=BUCKET, Key=f"run/train/{name}/checkpoint.pt", Body=buf.getvalue())
        models.append(m)
    return f"s3://{BUCKET}", local, models[-1]


def test_dataset_layouts_are_found_in_s3(bucket):
    uri, _, _ = bucket
    d = load_dataset(None, f"{uri}/datasets/msmt17")
    assert (d.name, d.root) == ("msmt17_v2", f"{uri}/datasets/msmt17/MSMT17_V2")
    assert d.query.files[0] == f"{uri}/datasets/msmt17/MSMT17_V2/mask_test_v2/0001/0001_000_02_0303morning_000_0.jpg"
    assert d.query.cams.tolist() == [2, 3] and len(d.train) == 2
    m = load_dataset(None, f"{uri}/datasets/market")
    assert (m.name, len(m.query), len(m.gallery)) == ("market1501", 6, 12)


@pytest.mark.parametrize("ray_above", [10_000, 0])
def test_evaluate_from_s3_equals_local(request, bucket, ray_above):
    if ray_above == 0:
        request.getfixturevalue("ray_session")  # the Ray pool's actors read the images from S3 too
    uri, local, newest = bucket
    cfg = EvaluateConfig(weights=f"{uri}/run", data=f"{uri}/datasets/market", out=f"{uri}/eval/r{ray_above}.json",
                         features=FeatureOptions(size=SIZE, batch=5, ray_above=ray_above))
    r = run_evaluate(cfg, log=lambda m: None)
    assert r["extraction"]["where"] == ("ray" if ray_above == 0 else "local")
    assert r["model"]["file"].endswith("checkpoint_2026-01-01_11-00-00.000001/checkpoint.pt")
    assert (r["model"]["arch"], r["model"]["epoch"]) == (ARCH, 2)
    want = evaluate_backbone(newest, str(local), SIZE, batch=5)
    assert r["metrics"]["mAP"] == pytest.approx(want.mAP, abs=1e-6) and r["metrics"]["queries"] == want.queries
    body = boto3.client("s3").get_object(Bucket=BUCKET, Key=f"eval/r{ray_above}.json")["Body"].read()
    assert json.loads(body)["metrics"] == r["metrics"]
