"""`cion-ray evaluate` end to end on a tiny Market-style split, its one-line errors (exit 2), the
in-memory entry point, and feature extraction through a Ray Data actor pool."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cion_ray.cli import main
from cion_ray.evaluate.pipeline import EvaluateConfig, FeatureOptions
from cion_ray.evaluate.reid import evaluate_backbone
from cion_ray.evaluate.search import RankingOptions
from cion_ray.runtime.evaluate import run_evaluate
from cion_ray.zoo.factory import create_backbone

ARCH = "test_resnet"
SIZE = (64, 32)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """8 people (a colour each, noisy), 3 cameras; query from camera 1; a distractor and junk."""
    root = tmp_path_factory.mktemp("market")
    rng = np.random.default_rng(0)
    colours = rng.integers(30, 220, (9, 3))

    def save(folder, name, pid):
        (root / folder).mkdir(exist_ok=True)
        a = colours[pid] + rng.integers(-40, 40, (64, 32, 3))
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(root / folder / name)

    frame = 0
    for pid in range(1, 9):
        for cam in (1, 2, 3):
            frame += 1
            save("bounding_box_test", f"{pid:04d}_c{cam}s1_{frame:06d}_01.jpg", pid)
        save("query", f"{pid:04d}_c1s1_{frame:06d}_02.jpg", pid)
        save("bounding_box_train", f"{pid + 10:04d}_c1s1_{frame:06d}_01.jpg", pid)
    save("bounding_box_test", "0000_c2s1_000900_01.jpg", 0)
    save("bounding_box_test", "-1_c3s1_000901_01.jpg", 0)
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = create_backbone(ARCH, SIZE)
    path = tmp_path_factory.mktemp("weights") / "backbone.pth"
    torch.save(model.state_dict(), path)
    return model, path


def run(capsys, *args) -> tuple[int, str, str]:
    rc = main(["evaluate", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_end_to_end_equals_the_in_memory_evaluation(split, weights, tmp_path, capsys):
    model, path = weights
    rc, out, _ = run(capsys, "--weights", path, "--arch", ARCH, "--data", split, "--size", "64,32",
                     "--out", tmp_path / "res" / "r.json")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"{ARCH} ({path}) on market1501 {split}: cosine, 64x32, flip")
    assert lines[1].split() == ["rank-1", "rank-5", "rank-10", "mAP", "mINP", "queries", "gallery"]
    res = json.loads((tmp_path / "res" / "r.json").read_text())
    m = res["metrics"]
    want = evaluate_backbone(model, str(split), SIZE, batch=64)
    assert m["mAP"] == pytest.approx(want.mAP, abs=1e-6) and m["rank1"] == pytest.approx(want.rank(1))
    assert (m["queries"], m["gallery"]) == (8, 25), "junk dropped, the distractor kept"
    assert lines[2].split()[-2:] == ["8", "25"] and float(lines[2].split()[3]) == pytest.approx(100 * m["mAP"], abs=0.01)
    assert res["settings"]["distance"] == "cosine" and res["settings"]["size"] == [64, 32] and not res["settings"]["rerank"]
    assert res["model"]["file"] == str(path) and res["dataset"]["query"]["images"] == 8
    assert res["extraction"] == {"where": "local", "actors": 0} and len(res["cmc"]) == 25


def test_cli_rerank_euclidean_and_seeded_random_weights(split, capsys, tmp_path):
    args = ["--weights", "random", "--arch", ARCH, "--data", split, "--size", "64,32", "--no-flip",
            "--distance", "euclidean", "--rerank", "--set", "ranking.k1=5", "--set", "ranking.k2=2"]
    assert run(capsys, *args, "--out", tmp_path / "a.json")[0] == 0
    assert run(capsys, *args, "--out", tmp_path / "b.json")[0] == 0
    assert run(capsys, *args, "--seed", 1, "--out", tmp_path / "c.json")[0] == 0
    a, b, c = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "abc")
    assert a["metrics"] == b["metrics"] and a["model"]["seed"] == 0 and c["model"]["seed"] == 1
    assert c["metrics"]["mAP"] != a["metrics"]["mAP"], "another seed, another network"
    s = a["settings"]
    assert (s["distance"], s["rerank"], s["k1"], s["k2"], s["flip"]) == ("euclidean", True, 5, 2, False)


@pytest.mark.parametrize("case", ["missing folder", "not a dataset", "junk checkpoint", "checkpoint of another arch",
                                  "unknown arch", "bad size", "no arch for random"])
def test_cli_errors_are_one_line_with_exit_2(case, split, weights, tmp_path, capsys):
    _, path = weights
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00 not torch")
    (tmp_path / "photos").mkdir()
    args, named = {
        "missing folder": (["--weights", path, "--arch", ARCH, "--data", tmp_path / "nope"], "nope: not found"),
        "not a dataset": (["--weights", path, "--arch", ARCH, "--data", tmp_path / "photos"],
                          "photos: not a ReID dataset folder"),
        "junk checkpoint": (["--weights", junk, "--arch", ARCH, "--data", split], "junk.pth: cannot load"),
        "checkpoint of another arch": (["--weights", path, "--arch", "test_resnet_ibn", "--data", split],
                                       "backbone.pth do not fit test_resnet_ibn"),
        "unknown arch": (["--weights", path, "--arch", "resnet_9000", "--data", split], "unknown backbone 'resnet_9000'"),
        "bad size": (["--weights", path, "--arch", ARCH, "--data", split, "--size", "256x128"], "--size '256x128'"),
        "no arch for random": (["--weights", "random", "--data", split], "random weights need an arch"),
    }[case]
    rc, out, err = run(capsys, *args)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("cion-ray evaluate: error: ") and named in err


def test_job_entry_point(split, weights, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("job", Path(__file__).resolve().parents[1] / "jobs" / "evaluate.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    _, path = weights
    assert job.main(["--weights", str(path), "--arch", ARCH, "--data", str(split), "--size", "64,32"]) == 0
    assert "rank-1" in capsys.readouterr().out
    assert job.main(["--weights", str(tmp_path / "none.pth"), "--arch", ARCH, "--data", str(split)]) == 2
    assert "none.pth: not found" in capsys.readouterr().err


def small_cfg(split, **features) -> EvaluateConfig:
    return EvaluateConfig(arch=ARCH, data=str(split), features=FeatureOptions(size=SIZE, batch=4, **features),
                          ranking=RankingOptions())


def test_in_memory_model_equals_its_checkpoint(split, weights):
    model, path = weights
    a = run_evaluate(small_cfg(split), model=model, log=lambda m: None)
    cfg = small_cfg(split)
    cfg.weights = str(path)
    b = run_evaluate(cfg, log=lambda m: None)
    assert a["metrics"] == b["metrics"] and a["model"]["weights"] == "in memory"


@pytest.mark.ray
def test_ray_actor_pool_extraction_equals_the_local_loop(ray_session, split, weights):
    from cion_ray.evaluate.datasets import load_dataset
    from cion_ray.evaluate.pipeline import local_extractor
    from cion_ray.runtime.evaluate import ray_extractor

    model, _ = weights
    d = load_dataset(None, str(split))
    files = d.query.files + d.gallery.files
    opts = FeatureOptions(size=SIZE, batch=4, ray_above=0)
    lines = []
    pooled = ray_extractor(model, opts, log=lines.append)(files, "split")
    local = local_extractor(model, opts, log=lambda m: None)(files, "split")
    assert pooled.shape == local.shape and np.isfinite(pooled).all()
    np.testing.assert_allclose(pooled, local, atol=1e-5)
    assert lines and lines[-1].startswith(f"split (1 Ray actor): {len(files)}/{len(files)} images")
    a = run_evaluate(small_cfg(split, ray_above=0), model=model, log=lambda m: None)
    b = run_evaluate(small_cfg(split), model=model, log=lambda m: None)
    assert a["extraction"] == {"where": "ray", "actors": 1} and b["extraction"]["where"] == "local"
    assert a["metrics"]["mAP"] == pytest.approx(b["metrics"]["mAP"], abs=1e-6)
    assert a["metrics"]["rank1"] == b["metrics"]["rank1"]


def pretrain_run(root, model, size, epoch: int = 3):
    """A pre-training run folder in short: one Ray Train checkpoint whose config records the views'
    global size (what cion_ray.pretrain.loop.checkpoint_state writes)."""
    from dataclasses import asdict

    from cion_ray.config import load_config
    from cion_ray.pretrain.config import PretrainConfig

    cfg = load_config(PretrainConfig, None, [f"model.arch={ARCH}", f"views.global_size={size[0]},{size[1]}"])
    ckpt = root / "train" / "checkpoint_2026-01-01_10-00-00.000001"
    ckpt.mkdir(parents=True)
    teacher = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    torch.save({"format": "cion-ray-pretrain/1", "arch": ARCH, "epoch": epoch, "iteration": 10 * epoch,
                "teacher": teacher, "config": asdict(cfg)}, ckpt / "checkpoint.pt")
    return ckpt / "checkpoint.pt"


def test_size_defaults_to_what_the_checkpoint_was_trained_at(split, weights, tmp_path, capsys):
    """A run trained at 64x32 evaluates at 64x32 without --size; --size wins; a plain state dict
    keeps 256x128. The table and the JSON name the size, where it came from, the checkpoint file
    and its epoch / iteration."""
    torch.set_num_threads(1)
    model, plain = weights
    file = pretrain_run(tmp_path / "run", model, SIZE)

    def evaluate(name, *args):
        rc, out, err = run(capsys, "--data", split, "--no-flip", "--out", tmp_path / f"{name}.json", *args)
        assert rc == 0, err
        return out.splitlines()[0], json.loads((tmp_path / f"{name}.json").read_text())

    title, recorded = evaluate("recorded", "--weights", tmp_path / "run")
    _, given = evaluate("given", "--weights", tmp_path / "run", "--size", "64,32")
    _, large = evaluate("large", "--weights", tmp_path / "run", "--size", "256,128")
    _, default = evaluate("default", "--weights", plain, "--arch", ARCH)
    assert recorded["settings"]["size"] == [64, 32] and recorded["settings"]["size_from"] == "checkpoint"
    assert recorded["metrics"] == given["metrics"] and given["settings"]["size_from"] == "given"
    assert large["settings"]["size"] == [256, 128] and large["metrics"] != recorded["metrics"]
    assert (default["settings"]["size"], default["settings"]["size_from"]) == ([256, 128], "default")
    m = recorded["model"]
    assert (m["file"], m["epoch"], m["iteration"], m["trained_size"]) == (str(file), 3, 30, [64, 32])
    assert title.startswith(f"{ARCH} ({file}, epoch 3, iteration 30) on market1501 {split}: cosine, "
                            "64x32 (as trained: recorded by the checkpoint)"), title
