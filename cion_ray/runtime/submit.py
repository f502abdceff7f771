"""Submitting the pipeline to a Ray cluster as a job (Ray's job SDK), and following it."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from ray.job_submission import JobStatus, JobSubmissionClient

from cion_ray.errors import CionError
from cion_ray.io.fs import redact


def submit_pipeline(cfg, metadata: dict[str, str], address: str, overwrite: tuple[str, ...] = (),
                    wait: bool = False) -> int:
    """Submit `cion-ray run` with cfg (resolved, shipped as the job's working dir) to the cluster
    whose dashboard is `address`, with `metadata`; with `wait`, print its output until it ends.
    The token comes from RAY_AUTH_MODE=token and RAY_AUTH_TOKEN, as for `ray job submit`."""
    from cion_ray.pipeline.config import digest, to_yaml

    with tempfile.TemporaryDirectory(prefix="cion-ray-job-") as d:
        Path(d, "pipeline.yaml").write_text(to_yaml(cfg))
        env = {k: os.environ[k] for k in ("CION_RAY_VERBOSE", "CION_RAY_PROGRESS_EVERY") if k in os.environ}
        submission_id = f"{cfg.name}-{digest(cfg)}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        try:
            client = JobSubmissionClient(address)
            job = client.submit_job(entrypoint="python -m cion_ray.cli run --config pipeline.yaml"
                                    + "".join(f" --overwrite {s}" for s in overwrite),
                                    runtime_env={"working_dir": d, **({"env_vars": env} if env else {})},
                                    metadata=metadata, submission_id=submission_id)
        except Exception as e:  # refused (auth), unreachable, bad address: one line
            lines = str(e).strip().splitlines()
            raise CionError(f"submitting to {address}: {redact(lines[-1] if lines else type(e).__name__)}") from None
    print(f"submitted {job} to {address}")
    print(f"  follow:  ray job logs --address {address} --follow {job}")
    print(f"  status:  ray job status --address {address} {job}   (stage and progress: {cfg.out}/status.json)")
    if not wait:
        return 0
    for lines in _follow(client, job):
        print(lines, end="", flush=True)
    state = client.get_job_status(job)
    print(f"job {job}: {getattr(state, 'value', state)}")
    return 0 if state == JobStatus.SUCCEEDED else 1


def _follow(client: JobSubmissionClient, job: str):
    """The job's output as it comes (the SDK's async log tail, driven from this thread)."""
    import asyncio

    loop = asyncio.new_event_loop()
    tail = client.tail_job_logs(job).__aiter__()
    try:
        while True:
            try:
                yield loop.run_until_complete(tail.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.close()
