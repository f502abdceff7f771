"""Fault injection on a real multi-node Ray cluster on loopback (tests/cluster.py): a head with no
CPUs (the GCS, the dashboard, the drivers) and two worker nodes of 3 logical CPUs each. Every stage
runs through its job entry point (jobs/*.py --address) as a driver subprocess attached to the head.

Faults: a pool actor's process SIGKILLed mid-run (tracking, embedding), a whole worker node
SIGKILLed (tracking, embedding, pre-training), a tracking actor dying after a chunk's rows were out,
the tracking run's ledger actor lost, a linking range task's worker
crashing once, a Ray Train worker killed, and the driver SIGKILLed mid-run and the job
re-submitted (tracking, curation). Each run is compared with an undisturbed run on the same
cluster: committed rows sorted by crop_id (file names and run ids ignored), the curated
identities, the pre-trained teacher (bitwise).

Kills wait for evidence that the run is under way (pool actors ALIVE, a first checkpoint, a
committed sub-stage), never for a fixed time. The test process never joins the cluster: it reads
the state API over HTTP with the cluster's token.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster import ROOT, LoopbackCluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]

WORKER_CPUS = 3  # a node lost leaves 3: the two pool actors and Ray Data's read / write tasks
RUN_TIMEOUT = 300


# ---------------------------------------------------------------- the cluster and the jobs


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LoopbackCluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start_head(num_cpus=0)
        c.add_worker(WORKER_CPUS)
        c.add_worker(WORKER_CPUS)
        yield c
    finally:
        for job in Job.started:  # a test that failed half-way leaves no driver behind
            job.kill()
        c.stop()


@pytest.fixture
def full_cluster(cluster):
    """The cluster with both worker nodes: a node lost by an earlier test is replaced first."""
    while sum(n.alive() for n in cluster.nodes) < 3:
        cluster.add_worker(WORKER_CPUS)
    return cluster


class Job:
    """A stage's job entry point run as a driver attached to the cluster, in its own process group."""
    started: list["Job"] = []

    def __init__(self, cluster: LoopbackCluster, argv: list[str], log: Path, **env: str):
        self.log = log
        self.cluster = cluster
        self.proc = subprocess.Popen([sys.executable, *argv, "--address", cluster.address], cwd=ROOT,
                                     env=cluster.env(**env), stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        Job.started.append(self)

    def running(self) -> bool:
        return self.proc.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.log.name}: still running after {timeout}s:\n{self.text()[-4000:]}")

    def ok(self) -> str:
        rc = self.wait()
        assert rc == 0, f"{self.log.name} exited {rc}:\n{self.text()[-6000:]}"
        return self.text()

    def kill(self) -> None:
        if self.running():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=60)


def track_argv(world: Path, out: Path, videos: Path | None = None) -> list[str]:
    return ["jobs/track.py", "--videos", str(videos or world / "videos"), "--mot", str(world / "mot"),
            "--detector", "mot-det", "--out", str(out), "--actors", "2"]


def curate_argv(crops: Path, out: Path, script: str = "jobs/curate.py") -> list[str]:
    return [script, "--crops", str(crops), "--out", str(out), "--actors", "2", "--window", "3", "--stride", "2",
            "--no-export"]


def wait_actors(cluster: LoopbackCluster, job: Job, udf: str, n: int = 1) -> list[dict]:
    """The pool's actors once n are ALIVE, while the job still runs (evidence the run is under way)."""
    def ready():
        assert job.running(), f"{job.log.name} ended before its {udf} actors were seen:\n{job.text()[-4000:]}"
        got = cluster.actors(udf)
        return got if got and len(got) >= n else None
    return wait_for(ready, RUN_TIMEOUT, f"{n} {udf} actor(s) ALIVE")


def victim_node(cluster: LoopbackCluster, job: Job, udf: str):
    """A worker node holding an ALIVE `udf` actor and not the tracking run's RunLedger (losing the
    ledger is its own test), or None while there is none yet. Never the head: it holds the GCS and
    the driver (and, with no CPUs, no pool actor or Train worker)."""
    assert job.running(), f"{job.log.name} ended before a node to lose was seen:\n{job.text()[-4000:]}"
    ledgers, actors = cluster.actors("RunLedger"), cluster.actors(udf)
    if ledgers is None or actors is None:
        return None
    spared = {cluster.nodes[0].node_id} | {a["node_id"] for a in ledgers}
    return next((cluster.node_of(a["node_id"]) for a in actors if a["node_id"] not in spared), None)


def listed(cluster: LoopbackCluster, udf: str) -> bool:
    """Whether the job running `udf` actors has listed its input: its ListFiles tasks all finished."""
    actors, tasks = cluster.actors(udf), cluster.state("tasks")
    if not actors or tasks is None:
        return False
    lists = [t for t in tasks if t.get("job_id") == actors[0]["job_id"] and "ListFiles" in (t.get("name") or "")]
    return bool(lists) and all(t.get("state") == "FINISHED" for t in lists)


def kill_pid(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------- committed output


def committed(out: Path, stage: str, what: str = "runs") -> pa.Table:
    """Every committed Parquet file of a stage, read through its manifest, sorted by crop_id."""
    from cion_ray.io import runs

    if what == "identities":
        from cion_ray.runtime.curate import identities_files
        files = identities_files(str(out))
    else:
        files = runs.committed_files(str(out), stage)
    t = pa.concat_tables([pq.read_table(f) for f in files]) if files else None
    assert t is not None and t.num_rows > 0, f"{out}: nothing committed"
    return t.sort_by("crop_id")


def assert_same_rows(got: pa.Table, want: pa.Table, what: str) -> None:
    ids = got.column("crop_id").to_pylist()
    assert len(set(ids)) == len(ids), f"{what}: {len(ids) - len(set(ids))} duplicate rows"
    assert got.num_rows == want.num_rows, f"{what}: {got.num_rows} rows, undisturbed {want.num_rows}"
    assert got.column_names == want.column_names
    for name in want.column_names:
        assert got.column(name).combine_chunks().equals(want.column(name).combine_chunks()), f"{what}: {name} differs"


def manifest(out: Path) -> dict:
    return json.loads((out / "_manifest.json").read_text())


# ---------------------------------------------------------------- inputs and undisturbed runs


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny world with 8 videos instead of 4: runs long enough to be interrupted in."""
    from cion_ray.synth import generate_world, preset

    out = tmp_path_factory.mktemp("world8")
    generate_world(preset("tiny", videos=8), out, workers=2, log=lambda m: None)
    return out


@pytest.fixture(scope="module")
def undisturbed(cluster, world, tmp_path_factory):
    """Tracking and curation run once on the cluster with nothing going wrong."""
    root = tmp_path_factory.mktemp("undisturbed")
    t0 = time.monotonic()
    Job(cluster, track_argv(world, root / "crops"), root / "track.log").ok()
    t1 = time.monotonic()
    Job(cluster, curate_argv(root / "crops", root / "curated"), root / "curate.log").ok()
    print(f"undisturbed runs: tracking {t1 - t0:.0f}s, curation {time.monotonic() - t1:.0f}s")
    return root


# ---------------------------------------------------------------- tracking


def test_track_survives_a_killed_pool_actor(full_cluster, world, undisturbed, tmp_path):
    out = tmp_path / "crops"
    job = Job(full_cluster, track_argv(world, out), tmp_path / "track.log")
    victim = wait_actors(full_cluster, job, "TrackActor")[0]
    assert not (out / "_manifest.json").exists()
    kill_pid(victim["pid"])
    job.ok()
    assert_same_rows(committed(out, "track"), committed(undisturbed / "crops", "track"), "crops")
    assert len(manifest(out)["runs"]) == 1


def test_track_survives_a_lost_worker_node(full_cluster, world, undisturbed, tmp_path):
    """A worker node holding a pool actor (not the run's ledger: see the next test) is lost."""
    out = tmp_path / "crops"
    job = Job(full_cluster, track_argv(world, out), tmp_path / "track.log")
    victim = wait_for(lambda: victim_node(full_cluster, job, "TrackActor"), RUN_TIMEOUT,
                      "a pool actor on a worker node without the RunLedger")
    assert not (out / "_manifest.json").exists()
    victim.kill()
    job.ok()
    assert_same_rows(committed(out, "track"), committed(undisturbed / "crops", "track"), "crops")


def test_track_survives_losing_the_run_ledger(full_cluster, world, undisturbed, tmp_path):
    """The RunLedger actor (per-chunk events) killed by its process once the pool runs, as an OOM
    kill would: the run still commits every video, its rows those of an undisturbed run (the
    report loses the ledger's messages, and says so)."""
    out = tmp_path / "crops"
    job = Job(full_cluster, track_argv(world, out), tmp_path / "track.log")
    wait_actors(full_cluster, job, "TrackActor")
    ledger = wait_actors(full_cluster, job, "RunLedger")[0]
    kill_pid(ledger["pid"])
    assert "ledger was lost" in job.ok()
    assert_same_rows(committed(out, "track"), committed(undisturbed / "crops", "track"), "crops")


def test_track_driver_killed_and_resubmitted(full_cluster, world, undisturbed, tmp_path):
    """Half the videos committed by a first job; the second job (all videos) is killed while its
    pool runs and re-submitted: the committed half is skipped, the rest tracked once."""
    videos = tmp_path / "videos"
    videos.mkdir()
    names = sorted(p.name for p in (world / "videos").glob("*.mp4"))
    for n in names[:4]:
        (videos / n).symlink_to(world / "videos" / n)
    out = tmp_path / "crops"
    Job(full_cluster, track_argv(world, out, videos), tmp_path / "first.log").ok()
    for n in names[4:]:
        (videos / n).symlink_to(world / "videos" / n)
    before = (out / "_manifest.json").read_text()
    job = Job(full_cluster, track_argv(world, out, videos), tmp_path / "killed.log")
    wait_actors(full_cluster, job, "TrackActor")
    job.kill()
    assert (out / "_manifest.json").read_text() == before, "the killed job committed nothing"
    text = Job(full_cluster, track_argv(world, out, videos), tmp_path / "again.log").ok()
    assert "4 of 8 videos already committed" in text
    m = manifest(out)
    assert len(m["runs"]) == 2 and sorted(m["runs"][1]["videos"]) == [n[:-4] for n in names[4:]]
    assert_same_rows(committed(out, "track"), committed(undisturbed / "crops", "track"), "crops")


# ---------------------------------------------------------------- embedding (curation)


def assert_same_curation(out: Path, undisturbed: Path) -> None:
    assert_same_rows(committed(out / "embeddings", "embed"), committed(undisturbed / "curated" / "embeddings", "embed"),
                     "embeddings")
    assert_same_rows(committed(out, "curate", "identities"), committed(undisturbed / "curated", "curate", "identities"),
                     "identities")


def test_embedding_survives_a_killed_pool_actor(full_cluster, undisturbed, tmp_path):
    out = tmp_path / "curated"
    job = Job(full_cluster, curate_argv(undisturbed / "crops", out), tmp_path / "curate.log")
    victim = wait_actors(full_cluster, job, "EmbedActor")[0]
    assert not (out / "embeddings" / "_manifest.json").exists()
    kill_pid(victim["pid"])
    job.ok()
    assert_same_curation(out, undisturbed)


def test_embedding_survives_a_lost_worker_node(full_cluster, undisturbed, tmp_path):
    out = tmp_path / "curated"
    job = Job(full_cluster, curate_argv(undisturbed / "crops", out), tmp_path / "curate.log")
    # once the crops' Parquet files are listed: Ray Data 2.60 lists them in ListFiles tasks through
    # FooterReader actors that do not survive their node (a loss then fails the read: see the report)
    victim = wait_for(lambda: listed(full_cluster, "EmbedActor") and victim_node(full_cluster, job, "EmbedActor"),
                      RUN_TIMEOUT, "an embedding actor on a worker node, the input listed")
    assert not (out / "embeddings" / "_manifest.json").exists()
    victim.kill()
    job.ok()
    assert_same_curation(out, undisturbed)


def test_curate_driver_killed_and_resubmitted(full_cluster, undisturbed, tmp_path):
    """Killed once the embeddings are committed (denoising and linking under way): the re-submitted
    job skips the embedding and finishes the rest once."""
    out = tmp_path / "curated"
    job = Job(full_cluster, curate_argv(undisturbed / "crops", out), tmp_path / "killed.log")
    wait_for(lambda: (out / "embeddings" / "_manifest.json").exists() or not job.running(), RUN_TIMEOUT,
             "the embeddings committed")
    job.kill()
    assert not (out / "_manifest.json").exists(), "the killed job got to the end before the kill"
    embedded = (out / "embeddings" / "_manifest.json").read_text()
    Job(full_cluster, curate_argv(undisturbed / "crops", out), tmp_path / "again.log").ok()
    assert (out / "embeddings" / "_manifest.json").read_text() == embedded, "the embedding ran again"
    assert len(manifest(out)["runs"]) == 1
    assert_same_curation(out, undisturbed)


# ---------------------------------------------------------------- linking

# A job entry point run with one piece of the stage wrapped so that its first attempt crashes its
# own worker process (as an OOM kill or a lost node would) at a chosen point. One attempt wins the
# flag file (unlink is atomic), leaves FLAG.crashed, and exits. The wrappers are defined in the
# driver's __main__, so they travel to the workers by value.
FAIL_ONCE = """
import os, runpy, sys
sys.path.insert(0, os.getcwd())
FLAG = os.environ["CION_TEST_FAIL_ONCE"]


def crash_once():
    try:
        os.unlink(FLAG)
    except FileNotFoundError:
        return
    open(FLAG + ".crashed", "w").write(str(os.getpid()))
    os._exit(1)
"""

RANGE_TASK_CRASHES = FAIL_ONCE + """
import cion_ray.runtime.curate as curate
_original = curate._ranges_task


def flaky_ranges_task(*args, **kwargs):
    crash_once()  # before computing: the task's worker dies mid-linking
    return _original(*args, **kwargs)


curate._ranges_task = flaky_ranges_task
sys.argv = ["jobs/curate.py"] + sys.argv[1:]
runpy.run_path("jobs/curate.py", run_name="__main__")
"""

ACTOR_DIES_AFTER_ITS_CHUNK = FAIL_ONCE + """
import cion_ray.runtime.track as track


class FlakyTrackActor(track.TrackActor):
    def __call__(self, batch):
        yield from super().__call__(batch)
        crash_once()  # the chunk's rows are out and its "done" event recorded; the task never returns


track.TrackActor = FlakyTrackActor
sys.argv = ["jobs/track.py"] + sys.argv[1:]
runpy.run_path("jobs/track.py", run_name="__main__")
"""


def run_failing_once(cluster: LoopbackCluster, wrapper: str, argv: list[str], tmp_path: Path) -> tuple[Job, Path]:
    flag = tmp_path / "fail-once"
    flag.write_text("")
    script = tmp_path / "wrapped_job.py"
    script.write_text(wrapper)
    job = Job(cluster, [str(script), *argv[1:]], tmp_path / "job.log", CION_TEST_FAIL_ONCE=str(flag))
    return job, flag


def test_linking_range_task_crash_is_retried(full_cluster, undisturbed, tmp_path):
    out = tmp_path / "curated"
    job, flag = run_failing_once(full_cluster, RANGE_TASK_CRASHES, curate_argv(undisturbed / "crops", out), tmp_path)
    text = job.ok()
    assert not flag.exists() and flag.with_suffix(".crashed").exists(), "no range task crashed"
    assert "4 computed, 0 reused" in text
    assert_same_rows(committed(out, "curate", "identities"), committed(undisturbed / "curated", "curate", "identities"),
                     "identities")


def test_track_chunk_retried_after_its_rows_were_out(full_cluster, world, undisturbed, tmp_path):
    """The actor dies after a chunk's rows were emitted and its 'done' event recorded, before the
    task returns: Ray Data retries the chunk on the restarted actor. The video is committed once
    (its two 'done' events count as one chunk) and its rows appear once; a re-run adds nothing."""
    out = tmp_path / "crops"
    job, flag = run_failing_once(full_cluster, ACTOR_DIES_AFTER_ITS_CHUNK, track_argv(world, out), tmp_path)
    text = job.ok()
    assert not flag.exists() and flag.with_suffix(".crashed").exists(), "no actor died"
    assert "tracked 8 videos" in text, text[-3000:]
    assert_same_rows(committed(out, "track"), committed(undisturbed / "crops", "track"), "crops")
    assert len(manifest(out)["units"]) == 8
    again = Job(full_cluster, track_argv(world, out), tmp_path / "again.log").ok()
    assert "8 of 8 videos already committed" in again
    assert_same_rows(committed(out, "track"), committed(undisturbed / "crops", "track"), "crops after a re-run")


# ---------------------------------------------------------------- pre-training

PRETRAIN_SET = ["model.arch=test_resnet_ibn", "model.out_dim=256", "model.hidden_dim=64", "model.bottleneck_dim=32",
                "views.local_crops=2", "views.global_size=64,32", "views.local_size=32,16", "scale.loader_workers=0",
                "optim.batch_per_worker=8", "optim.warmup_epochs=1", "optim.k_schedule=0:2,0.5:4",
                "optim.epochs=3", "optim.iters_per_epoch=3", "scale.max_failures=2"]


@pytest.fixture(scope="module")
def cion_al(tmp_path_factory):
    from test_pretrain_unit import _cion_al

    return _cion_al(tmp_path_factory.mktemp("cion_al"))


def pretrain_argv(data: Path, out: Path) -> list[str]:
    argv = ["jobs/pretrain.py", "--data", str(data), "--out", str(out), "--workers", "2"]
    for s in PRETRAIN_SET:
        argv += ["--set", s]
    return argv


@pytest.fixture(scope="module")
def pretrained(cluster, cion_al, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "run"
    Job(cluster, pretrain_argv(cion_al, out), out.parent / "pretrain.log").ok()
    return out


def teacher(out: Path) -> dict:
    import torch

    return torch.load(out / "export" / "teacher.pth", weights_only=True, map_location="cpu")["teacher"]


def first_checkpoint(out: Path, job: Job) -> bool:
    assert job.running(), f"pre-training ended before its first checkpoint:\n{job.text()[-4000:]}"
    return any((out / "train").glob("checkpoint_*/checkpoint.pt"))


def assert_same_teacher(out: Path, want_out: Path) -> None:
    got, want = teacher(out), teacher(want_out)
    assert set(got) == set(want)
    worst = max(float((got[k].double() - want[k].double()).abs().max()) for k in want if want[k].is_floating_point())
    print(f"teacher: largest difference to the uninterrupted run {worst:.3g}")
    for k in want:
        assert got[k].equal(want[k]), f"{k}: differs from the uninterrupted run (largest difference {worst:.3g})"


def test_pretrain_restores_after_a_killed_worker(full_cluster, cion_al, pretrained, tmp_path):
    out = tmp_path / "run"
    job = Job(full_cluster, pretrain_argv(cion_al, out), tmp_path / "pretrain.log")
    wait_for(lambda: first_checkpoint(out, job), RUN_TIMEOUT, "the first checkpoint")
    workers = wait_for(lambda: (lambda w: w if w and len(w) == 2 else None)(full_cluster.actors("RayTrainWorker")),
                       RUN_TIMEOUT, "two Train workers ALIVE")
    kill_pid(workers[-1]["pid"])
    assert "[FailurePolicy] RETRY" in job.ok()
    history = json.loads((out / "metrics.json").read_text())
    assert [m["epoch"] for m in history] == [1, 2, 3]
    assert_same_teacher(out, pretrained)


def test_pretrain_restores_after_a_lost_node(full_cluster, cion_al, pretrained, tmp_path):
    out = tmp_path / "run"
    job = Job(full_cluster, pretrain_argv(cion_al, out), tmp_path / "pretrain.log")
    wait_for(lambda: first_checkpoint(out, job), RUN_TIMEOUT, "the first checkpoint")
    victim = wait_for(lambda: victim_node(full_cluster, job, "RayTrainWorker"), RUN_TIMEOUT,
                      "a Train worker on a worker node")
    victim.kill()
    assert "[FailurePolicy] RETRY" in job.ok()
    history = json.loads((out / "metrics.json").read_text())
    assert [m["epoch"] for m in history] == [1, 2, 3]
    assert_same_teacher(out, pretrained)
