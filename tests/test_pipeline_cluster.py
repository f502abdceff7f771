"""The platform team's path, end to end: a real two-node Ray cluster on loopback (token auth on),
the pipeline submitted as a Ray job on a small world read from a real S3 endpoint (moto server),
every stage's output written to the bucket, tasks on both nodes; a re-submission (through
`cion-ray run --submit`) skips every stage; a submission without the token is refused.

The token is obtained as cluster/README.md says (`ray get-auth-token`, with RAY_AUTH_MODE=token),
pointed at this cluster's token file so ~/.ray is never touched. Only the processes this module
started are stopped (tests/cluster.py)."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import boto3
import pytest
import yaml

from cluster import RAY, ROOT, LoopbackCluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]

BUCKET = "pipeline"
JOB_TIMEOUT = 900


@pytest.fixture(scope="module")
def bucket(s3_endpoint, tiny_world):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    for sub in ("videos", "mot", "reid"):
        for f in (tiny_world / sub).rglob("*"):
            if f.is_file():
                s3.upload_file(str(f), BUCKET, f"world/{f.relative_to(tiny_world)}")
    return s3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LoopbackCluster(tmp_path_factory.mktemp("pipeline-cluster"))
    try:
        c.start_head(num_cpus=1)
        c.add_worker(num_cpus=2)
        yield c
    finally:
        c.stop()  # by the process groups it started, whatever happened


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipeline-config") / "pipeline.yaml"
    cfg = yaml.safe_load((ROOT / "configs" / "pipeline-laptop.yaml").read_text())
    cfg.update(out=f"s3://{BUCKET}/cion", videos=f"s3://{BUCKET}/world/videos", name="loopback")
    cfg["track"]["detector"]["mot"] = f"s3://{BUCKET}/world/mot"
    cfg["curate"].update(gt="", link={"min_images": 2})
    cfg["pretrain"].update(eval_data="")
    cfg["pretrain"]["optim"].update(epochs=2, iters_per_epoch=3, warmup_epochs=1, batch_per_worker=16)
    cfg["pretrain"]["scale"] = {"workers": 2, "cpus_per_worker": 1, "loader_workers": 0}
    cfg["evaluate"]["data"] = f"s3://{BUCKET}/world/reid"
    path.write_text(yaml.safe_dump(cfg))
    return path


def client_env(cluster: LoopbackCluster, token: str | None) -> dict[str, str]:
    env = cluster.env()
    env.pop("RAY_AUTH_TOKEN")
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token
    return env


def readme_token(cluster: LoopbackCluster, tmp_path) -> str:
    """`export RAY_AUTH_MODE=token; export RAY_AUTH_TOKEN=$(ray get-auth-token)`, as documented, with
    the token file of this cluster instead of ~/.ray/auth_token."""
    token_file = tmp_path / "auth_token"
    token_file.write_text(cluster.token)
    env = client_env(cluster, None)
    env["RAY_AUTH_TOKEN_PATH"] = str(token_file)
    got = subprocess.run([RAY, "get-auth-token"], env=env, capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr[-2000:]
    return got.stdout.strip()


def job_info(cluster: LoopbackCluster, job: str) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{cluster.dashboard_port}/api/jobs/{job}",
                                 headers={"Authorization": f"Bearer {cluster.token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def wait_job(cluster: LoopbackCluster, job: str) -> dict:
    return wait_for(lambda: (lambda i: i if i["status"] in ("SUCCEEDED", "FAILED", "STOPPED") else None)(
        job_info(cluster, job)), JOB_TIMEOUT, f"job {job} to end", every=2)


def job_logs(cluster: LoopbackCluster, job: str) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{cluster.dashboard_port}/api/jobs/{job}/logs",
                                 headers={"Authorization": f"Bearer {cluster.token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read()).get("logs", "")


def s3_json(s3, key: str) -> dict:
    return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def test_a_submission_without_the_token_is_refused(cluster, config):
    url = f"http://127.0.0.1:{cluster.dashboard_port}"
    got = subprocess.run([RAY, "job", "submit", "--address", url, "--no-wait", "--",
                          "python", str(ROOT / "jobs" / "pipeline.py"), "--config", str(config)],
                         env=client_env(cluster, None), capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert got.returncode != 0
    assert "token" in (got.stdout + got.stderr).lower()
    with pytest.raises(urllib.error.HTTPError) as e:  # and the REST API itself
        urllib.request.urlopen(f"{url}/api/jobs/", timeout=30)
    assert e.value.code in (401, 403)
    # cion-ray run --submit says so in one line, exit 2
    got = subprocess.run([sys.executable, "-m", "cion_ray.cli", "run", "--config", str(config), "--submit", url],
                         env=client_env(cluster, "not-the-token"), capture_output=True, text=True, timeout=120)
    assert got.returncode == 2 and len(got.stderr.strip().splitlines()) == 1, got.stderr[-2000:]
    assert "submitting to" in got.stderr


def test_the_pipeline_job_runs_on_both_nodes_and_a_resubmission_skips_every_stage(cluster, bucket, config,
                                                                                   tmp_path):
    url = f"http://127.0.0.1:{cluster.dashboard_port}"
    env = client_env(cluster, readme_token(cluster, tmp_path))
    meta = {"cion_ray.pipeline": "loopback", "team": "reid"}
    sub = subprocess.run([RAY, "job", "submit", "--address", url, "--submission-id", "pipeline-1", "--no-wait",
                          "--metadata-json", json.dumps(meta), "--",
                          "python", str(ROOT / "jobs" / "pipeline.py"), "--config", str(config)],
                         env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert sub.returncode == 0, sub.stdout[-2000:] + sub.stderr[-2000:]
    info = wait_job(cluster, "pipeline-1")
    logs = job_logs(cluster, "pipeline-1")
    assert info["status"] == "SUCCEEDED", logs[-6000:]
    assert info["metadata"]["team"] == "reid"

    # every stage's output is in the bucket
    status = s3_json(bucket, "cion/status.json")
    assert status["state"] == "SUCCEEDED" and status["job"]["submission_id"] == "pipeline-1"
    assert {s: v["state"] for s, v in status["stages"].items()} == dict.fromkeys(
        ("track", "curate", "pretrain", "evaluate"), "done")
    assert s3_json(bucket, "cion/crops/_manifest.json")["units"]
    assert s3_json(bucket, "cion/curated/_manifest.json")["identities"]["identities"] > 0
    backbone = status["stages"]["pretrain"]["outputs"]["backbone.pth"]
    assert backbone.startswith(f"s3://{BUCKET}/cion/pretrain/")
    bucket.head_object(Bucket=BUCKET, Key=backbone.split("/", 3)[3])
    result = s3_json(bucket, status["stages"]["evaluate"]["outputs"]["result"].split("/", 3)[3])
    assert 0 <= result["metrics"]["mAP"] <= 1

    # tasks and actors ran on both nodes
    head, worker = cluster.nodes[0].node_id, cluster.nodes[1].node_id
    nodes = {t.get("node_id") for t in cluster.state("tasks") or []}
    assert {head, worker} <= nodes, nodes

    # re-submitted through cion-ray run: every stage skipped; the pipeline's name in the job's metadata
    again = subprocess.run([sys.executable, "-m", "cion_ray.cli", "run", "--config", str(config), "--submit", url,
                            "--wait"], env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-2000:]
    job = again.stdout.split()[1]
    assert job_info(cluster, job)["metadata"]["cion_ray.pipeline"] == "loopback"
    status = s3_json(bucket, "cion/status.json")
    assert status["job"]["submission_id"] == job
    assert {v["state"] for v in status["stages"].values()} == {"skipped"}, status
    assert "0 stage(s) ran, 4 skipped" in again.stdout
