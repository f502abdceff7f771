"""Pre-training refuses bad input before anything is written or started (issue 11): a CION-AL
JSON whose paths leave its folder, whose ids are not non-negative integers or that gives one file
two ids; a run the sampler could not serve at some K of its schedule; a cluster too small. A
refused run leaves no pretrain.json behind, so the same command, fixed, runs."""
from __future__ import annotations

import json
import posixpath

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_pretrain_unit import _cion_al, small_cfg

from cion_ray.errors import CionError
from cion_ray.pretrain.data import load_labels


def write_json(folder, entries, name="cion_al.json"):
    p = folder / name
    p.write_text(json.dumps(entries))
    return p


def one_line_naming(e: CionError, uri) -> str:
    msg = str(e)
    assert msg.startswith(str(uri)), msg
    assert "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------- CION-AL JSON entries

GOOD = [{"file_path": "img/a.jpg", "id": 0}, {"file_path": "img/b.jpg", "id": 1},
        {"file_path": "img/c.jpg", "id": 1}]


@pytest.mark.parametrize("path", ["../../etc/passwd", "img/../../x.jpg", "..", ".", "", "/etc/passwd",
                                  "s3://other-bucket/x.jpg", "file:///etc/passwd", "img/a\x00.jpg", 5, None])
def test_a_path_that_leaves_the_json_folder_is_refused(tmp_path, path):
    j = write_json(tmp_path, GOOD + [{"file_path": path, "id": 2}])
    with pytest.raises(CionError) as e:
        load_labels(str(j))
    msg = one_line_naming(e.value, j)
    assert "entry 3" in msg and "file_path" in msg


def test_paths_inside_the_folder_are_normalised(tmp_path):
    j = write_json(tmp_path, [{"file_path": "img/./a.jpg", "id": 0}, {"file_path": "img/x/../b.jpg", "id": 1}])
    t = load_labels(str(j))
    assert sorted(t.keys) == [str(tmp_path / "img" / "a.jpg"), str(tmp_path / "img" / "b.jpg")]


@pytest.mark.parametrize("pid", ["5", 0.9, 5.0, -5, True, False, None, [1], 2 ** 70])
def test_an_id_that_is_not_a_non_negative_integer_is_refused(tmp_path, pid):
    j = write_json(tmp_path, GOOD + [{"file_path": "img/d.jpg", "id": pid}])
    with pytest.raises(CionError) as e:
        load_labels(str(j))
    msg = one_line_naming(e.value, j)
    assert "entry 3" in msg and "id" in msg


def test_one_file_with_two_ids_is_refused_and_a_repeat_with_its_id_is_not(tmp_path):
    j = write_json(tmp_path, GOOD + [{"file_path": "img/./b.jpg", "id": 0}])
    with pytest.raises(CionError, match=r"entry 3: img/b\.jpg has id 0, but entry 1 gave it id 1") as e:
        load_labels(str(j))
    one_line_naming(e.value, j)
    again = write_json(tmp_path, GOOD + [{"file_path": "img/b.jpg", "id": 1}], "again.json")
    assert len(load_labels(str(again)).keys) == 4


@pytest.mark.parametrize("doc, problem", [
    ([], "no images"), ({"file_path": "a.jpg", "id": 0}, "not a CION-AL JSON"), ("a.jpg", "not a CION-AL JSON"),
    ([["a.jpg", 0]], "entry 0"), ([{"file_path": "a.jpg"}], "entry 0"), ([{"id": 0}], "entry 0")])
def test_a_document_that_is_not_a_list_of_entries_is_refused(tmp_path, doc, problem):
    j = write_json(tmp_path, doc)
    with pytest.raises(CionError, match=problem) as e:
        load_labels(str(j))
    one_line_naming(e.value, j)


def test_s3_paths_stay_under_the_json_prefix():
    from cion_ray.pretrain.data import cion_al_entries

    uri = "s3://bucket/al/cion_al.json"
    keys, ids = cion_al_entries(uri, [{"file_path": "images/a.jpg", "id": 3}, {"file_path": "b.jpg", "id": 0}])
    assert keys == ["s3://bucket/al/images/a.jpg", "s3://bucket/al/b.jpg"] and ids.tolist() == [3, 0]
    for bad in ("../other/a.jpg", "s3://bucket/al/images/a.jpg", "s3://elsewhere/a.jpg", "/al/a.jpg"):
        with pytest.raises(CionError, match=r"^s3://bucket/al/cion_al\.json: entry 0: file_path"):
            cion_al_entries(uri, [{"file_path": bad, "id": 0}])


# names a CION-AL JSON might hold, traversals and odd strings included
INSIDE = st.sampled_from(["a.jpg", "img/a.jpg", "img/b.jpg", "./img/a.jpg", "img//a.jpg", "a/../b.jpg", "~/a.jpg",
                          "C:\\a.jpg", "img/c d.jpg", "img/../img/e.jpg"])
NAMES = st.one_of(
    INSIDE, st.sampled_from(["../a.jpg", "img/../../a.jpg", "/etc/passwd", "s3://x/a.jpg", "file:///a.jpg", "..",
                             ".", "", "img/.."]),
    st.text(max_size=12), st.integers(), st.none())
IDS = st.one_of(st.integers(min_value=-3, max_value=6), st.integers(), st.booleans(), st.floats(),
                st.text(max_size=3), st.none())
ENTRY = st.one_of(st.fixed_dictionaries({"file_path": NAMES, "id": IDS}),
                  st.fixed_dictionaries({"file_path": NAMES}), st.fixed_dictionaries({"id": IDS}),
                  st.lists(st.integers(), max_size=2), st.text(max_size=3), st.integers())
# well-formed documents (one id per file), and the same with one entry swapped for any other
WELL_FORMED = st.lists(st.tuples(INSIDE, st.integers(0, 3)), min_size=1, max_size=6).map(
    lambda pairs: [{"file_path": p, "id": dict((posixpath.normpath(q), i) for q, i in pairs)[posixpath.normpath(p)]}
                   for p, _ in pairs])
SPOILED = st.tuples(WELL_FORMED, st.integers(0, 5), ENTRY).map(
    lambda t: t[0][:t[1] % len(t[0])] + [t[2]] + t[0][t[1] % len(t[0]) + 1:])
DOCS = st.one_of(WELL_FORMED, SPOILED, st.lists(ENTRY, max_size=8),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.text(max_size=5), st.none())


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=DOCS)
def test_fuzz_a_json_loads_correctly_or_is_a_one_line_error_naming_it(tmp_path, doc):
    j = write_json(tmp_path, doc)
    try:
        t = load_labels(str(j))
    except CionError as e:
        one_line_naming(e, j)
        return
    # loaded: every entry was a relative path inside the folder with a non-negative integer id
    assert isinstance(doc, list) and len(t.keys) == len(doc) > 0
    root = str(tmp_path) + "/"
    assert all(k.startswith(root) and "/../" not in k for k in t.keys)
    assert all(type(e["id"]) is int and e["id"] >= 0 for e in doc)
    by_key = {}
    for k, i in zip(t.keys, t.identity):
        assert by_key.setdefault(k, i) == i, "one file, one identity"
    assert t.n_identities == len({e["id"] for e in doc})


def test_cli_refuses_a_bad_json_with_one_line_and_status_2(tmp_path, capsys, monkeypatch):
    """The refusal comes from the driver, before Ray starts: no worker tracebacks, nothing written."""
    import cion_ray.runtime.pretrain as rp
    from cion_ray.cli import main

    monkeypatch.setattr(rp, "ensure_ray", _no_ray)
    j = _cion_al(tmp_path)
    entries = json.loads(j.read_text())
    entries[5]["file_path"] = "../../etc/passwd"
    j.write_text(json.dumps(entries))
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(j), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "entry 5" in err[0] and str(j) in err[0], err
    assert not (out / "pretrain.json").exists()


# ---------------------------------------------------------------- refused runs leave nothing behind


class RayWouldStart(Exception):
    pass


def _no_ray(address=None):
    raise RayWouldStart("the pre-flight checks let this run through to Ray")


def run_cfg(data, out, *extra):
    return small_cfg(f"data={data}", f"out={out}", "model.arch=test_resnet", "optim.epochs=2",
                     "optim.iters_per_epoch=1", "optim.warmup_epochs=0", *extra)


def test_a_run_the_sampler_cannot_serve_at_its_smallest_k_is_refused_before_ray(tmp_path, monkeypatch):
    """6 identities, batch 8: K 4 needs 2 identities per batch, K 1 needs 8. The check used to size
    P at the largest K and let the run crash on its workers."""
    import cion_ray.runtime.pretrain as rp

    monkeypatch.setattr(rp, "ensure_ray", _no_ray)
    j = _cion_al(tmp_path, n_ids=6, per_id=2)
    out = tmp_path / "run"
    with pytest.raises(CionError) as e:
        rp.run_pretrain(run_cfg(j, out, "optim.batch_per_worker=8", "optim.k_schedule=0:1,0.5:4"), log=lambda m: None)
    msg = one_line_naming(e.value, j)
    assert "6 identities" in msg and "K 1" in msg and "8 identities" in msg, msg
    assert not out.exists() or not any(out.iterdir())
    # a K the run never reaches does not count: 1 epoch of that schedule is all K 1, 2 epochs of
    # 0:4,0.9:1 never reach K 1
    with pytest.raises(RayWouldStart):
        rp.run_pretrain(run_cfg(j, out, "optim.batch_per_worker=8", "optim.k_schedule=0:4,0.9:1"), log=lambda m: None)


def test_workers_beyond_the_shards_are_refused_before_ray(tmp_path, monkeypatch):
    import cion_ray.runtime.pretrain as rp

    monkeypatch.setattr(rp, "ensure_ray", _no_ray)
    j = _cion_al(tmp_path, n_ids=7, per_id=1)
    out = tmp_path / "run"
    with pytest.raises(CionError, match=r"worker \d has 3") as e:  # 7 identities over 2 workers: 4 and 3
        rp.run_pretrain(run_cfg(j, out, "scale.workers=2", "optim.batch_per_worker=8", "optim.k_schedule=0:2"),
                        log=lambda m: None)
    one_line_naming(e.value, j)
    with pytest.raises(RayWouldStart):
        rp.run_pretrain(run_cfg(j, out, "scale.workers=1", "optim.batch_per_worker=8", "optim.k_schedule=0:2"),
                        log=lambda m: None)


class FakeTrainer:
    """Stands in for TorchTrainer: a run that got this far has passed every check."""

    def __init__(self, *a, **kw):
        pass

    def fit(self):
        raise RayWouldStart("training started")


def test_a_cluster_too_small_leaves_nothing_and_the_fixed_command_runs(ray_session, tmp_path, monkeypatch):
    """(ray_session: the run reaches Ray calls past the mocked ensure_ray, which would start a Ray
    of their own and leave it to the next module.)"""
    import ray
    import ray.train.torch

    import cion_ray.runtime.pretrain as rp

    monkeypatch.setattr(rp, "ensure_ray", lambda address=None: None)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray.train.torch, "TorchTrainer", FakeTrainer)
    j = _cion_al(tmp_path, n_ids=12, per_id=2)
    out = tmp_path / "run"
    common = ["optim.batch_per_worker=4", "optim.k_schedule=0:2", "scale.gpus_per_worker=0"]
    with pytest.raises(CionError, match=r"3 workers need 3 CPUs \(the cluster has 2\)"):
        rp.run_pretrain(run_cfg(j, out, "scale.workers=3", *common), log=lambda m: None)
    assert not (out / "pretrain.json").exists()
    with pytest.raises(CionError, match="no pre-training run to resume"):
        rp.run_pretrain(run_cfg(j, out, "scale.workers=3", *common), resume=True, log=lambda m: None)
    with pytest.raises(CionError, match="pre-training failed: training started"):  # not "holds a run already"
        rp.run_pretrain(run_cfg(j, out, "scale.workers=2", *common), log=lambda m: None)
    # it failed before its first checkpoint: nothing to resume, the folder is given back
    assert not (out / "pretrain.json").exists() and not (out / "train").exists()
    monkeypatch.setattr(ray.train.torch, "TorchTrainer", CheckpointThenFail)
    with pytest.raises(CionError, match="pre-training failed: after a checkpoint"):
        rp.run_pretrain(run_cfg(j, out, "scale.workers=2", *common), log=lambda m: None)
    assert json.loads((out / "pretrain.json").read_text())["config"]["scale"]["workers"] == 2
    with pytest.raises(CionError, match="holds a pre-training run already"):  # resumable: kept
        rp.run_pretrain(run_cfg(j, out, "scale.workers=2", *common), log=lambda m: None)


class CheckpointThenFail:
    """A run that wrote a checkpoint, then failed."""

    def __init__(self, *a, run_config=None, **kw):
        self.storage = run_config.storage_path

    def fit(self):
        import os
        d = os.path.join(self.storage, "train", "checkpoint_000000")
        os.makedirs(d)
        open(os.path.join(d, "checkpoint.pt"), "wb").write(b"x")
        raise RayWouldStart("after a checkpoint")


def test_a_folder_refusal_comes_before_ray_starts(tmp_path, monkeypatch):
    import cion_ray.runtime.pretrain as rp

    monkeypatch.setattr(rp, "ensure_ray", _no_ray)
    j = _cion_al(tmp_path, n_ids=12, per_id=2)
    out = tmp_path / "run"
    cfg = run_cfg(j, out, "optim.batch_per_worker=4", "optim.k_schedule=0:2")
    with pytest.raises(CionError, match="no pre-training run to resume"):
        rp.run_pretrain(cfg, resume=True, log=lambda m: None)
    out.mkdir()
    (out / "pretrain.json").write_text(json.dumps({"fingerprint": "x", "config": {}}))
    with pytest.raises(CionError, match="holds a pre-training run already"):
        rp.run_pretrain(cfg, log=lambda m: None)
    with pytest.raises(CionError, match="another configuration"):
        rp.run_pretrain(cfg, resume=True, log=lambda m: None)


# ---------------------------------------------------------------- the check is the sampler's own rule


@settings(max_examples=150, deadline=None, derandomize=True)
@given(sizes=st.lists(st.integers(1, 5), min_size=1, max_size=14), workers=st.integers(1, 4),
       batch=st.integers(1, 12), ks=st.lists(st.integers(1, 12), min_size=1, max_size=3),
       epochs=st.integers(1, 5), seed=st.integers(0, 3))
def test_the_pre_flight_check_accepts_exactly_what_every_worker_can_sample(sizes, workers, batch, ks, epochs, seed):
    from cion_ray.pretrain.sampler import IdentitySampler, shard_identities, worker_shortfall
    from cion_ray.pretrain.schedules import k_at_epoch, k_values

    steps = [(i / len(ks), k) for i, k in enumerate(ks)]
    labels = np.repeat(np.arange(len(sizes)), sizes)
    run_ks = k_values(steps, epochs)
    assert run_ks == sorted({k_at_epoch(steps, epochs, e) for e in range(epochs)})
    short = worker_shortfall(np.unique(labels), workers, seed, batch, run_ks)
    served = True
    for rank in range(workers):
        mine = shard_identities(labels, workers, rank, seed)
        if len(mine) == 0:
            served = False
            continue
        sampler = IdentitySampler(labels[np.isin(labels, mine)], batch, seed, rank)
        for epoch in range(epochs):
            try:
                sampler.batches(epoch, k_at_epoch(steps, epochs, epoch), 1)
            except ValueError:
                served = False
    assert (short is None) == served, (short, served)


# ---------------------------------------------------------------- the evaluation loaders' list files


@pytest.mark.parametrize("line, problem", [
    ("../../../etc/passwd_0_01_x.jpg 0", "is not a path inside"), ("/etc/0000_000_01_x.jpg 0", "is not a path inside"),
    ("0000/0000_000_01_x.jpg 5.0", "is not `"), ("0000/0000_000_01_x.jpg 5_0", "is not `"),
    ("0000/0000_000_01_x.jpg +5", "is not `"), ("0000/0000_000_01_x.jpg -5", "is not `")])
def test_an_msmt17_list_line_leaving_its_folder_or_with_a_bad_id_is_named(tmp_path, line, problem):
    """Market-style folders take names from a listing and ids from a 4-digit pattern; MSMT17's
    list files are the one place a loader takes paths and ids from a file's text."""
    from test_evaluate_datasets import msmt17

    from cion_ray.evaluate.datasets import load_dataset

    root = msmt17(tmp_path / "MSMT17_V1", "V1")
    (root / "list_query.txt").write_text("0000/0000_000_01_0303morning_0016_0.jpg 0\n" + line + "\n")
    with pytest.raises(CionError, match=rf"list_query\.txt: line 2:? .*{problem}") as e:
        load_dataset("msmt17", str(root))
    assert "\n" not in str(e.value)
