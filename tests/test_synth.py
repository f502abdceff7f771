"""The synthetic world: determinism, ground truth, detection noise, videos, ReID split, CLI errors."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from cion_ray.io.market import parse_market_name
from cion_ray.io.mot import read_detections, read_gt, read_seqinfo
from cion_ray.io.video import iter_frames, probe_video
from cion_ray.synth import SynthConfig, generate_world, preset
from cion_ray.synth.detections import miss_probability
from cion_ray.synth.plan import make_plan
from cion_ray.synth.scene import VideoRenderer


def _video_ids(world: Path) -> list[str]:
    return [v["video_id"] for v in json.loads((world / "world.json").read_text())["videos"]]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a: (n, 4), b: (m, 4) corner boxes -> (n, m) IoU."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


# --- determinism -------------------------------------------------------------------------------

def test_same_seed_same_bytes_and_frames(tiny_world, tmp_path):
    again = tmp_path / "again"
    generate_world(preset("tiny"), again, workers=1, log=lambda m: None)  # other worker count too
    for vid in _video_ids(tiny_world):
        for name in ("gt.txt", "det.txt", "seqinfo.ini"):
            assert (tiny_world / "mot" / vid / name).read_bytes() == (again / "mot" / vid / name).read_bytes()
        video = f"videos/{vid}.mp4"
        assert (tiny_world / video).read_bytes() == (again / video).read_bytes(), vid
        fa = [f for _, f in iter_frames(tiny_world / video)]
        fb = [f for _, f in iter_frames(again / video)]
        assert len(fa) == len(fb) and all(np.array_equal(x, y) for x, y in zip(fa, fb))
    assert (tiny_world / "identities.json").read_bytes() == (again / "identities.json").read_bytes()
    a = sorted(p.relative_to(tiny_world) for p in (tiny_world / "reid").rglob("*.jpg"))
    b = sorted(p.relative_to(again) for p in (again / "reid").rglob("*.jpg"))
    assert a == b and all((tiny_world / p).read_bytes() == (again / p).read_bytes() for p in a)
    assert (tiny_world / "preview.png").read_bytes() == (again / "preview.png").read_bytes()


def test_other_seed_other_world(tmp_path):
    cfg = preset("tiny", frames=20)
    generate_world(cfg, tmp_path / "a", workers=1, log=lambda m: None)
    generate_world(preset("tiny", frames=20, seed=1), tmp_path / "b", workers=1, log=lambda m: None)
    assert (tmp_path / "a/mot/v0000/gt.txt").read_bytes() != (tmp_path / "b/mot/v0000/gt.txt").read_bytes()


def test_rerun_reuses_complete_world_and_refuses_other_config(tiny_world):
    s = generate_world(preset("tiny"), tiny_world, log=lambda m: None)
    assert s.reused
    from cion_ray.errors import CionError
    with pytest.raises(CionError, match="different configuration"):
        generate_world(preset("tiny", seed=9), tiny_world, log=lambda m: None)


def test_world_from_another_video_encoder_is_regenerated_not_reused(tmp_path):
    """A world whose videos another encoder recipe or build wrote has other bytes: not the same world."""
    from cion_ray.io.video import encoder_id

    cfg = preset("tiny", videos=2, frames=8)
    out = tmp_path / "w"
    generate_world(cfg, out, workers=1, log=lambda m: None)
    meta = out / "world.json"
    assert json.loads(meta.read_text())["encoder"] == encoder_id()
    videos = {p.name: p.read_bytes() for p in (out / "videos").glob("*.mp4")}
    for older in ({"recipe": "an older recipe"}, None):  # None: written before the encoder was recorded
        world = json.loads(meta.read_text())
        world.pop("encoder")
        if older:
            world["encoder"] = older
        meta.write_text(json.dumps(world))
        (out / "videos" / "v0000.mp4").write_bytes(b"stale")
        logs = []
        s = generate_world(cfg, out, workers=1, log=logs.append)
        assert not s.reused and any("regenerating" in m for m in logs)
        assert json.loads(meta.read_text())["encoder"] == encoder_id()
        assert {p.name: p.read_bytes() for p in (out / "videos").glob("*.mp4")} == videos
    assert generate_world(cfg, out, workers=1, log=lambda m: None).reused


# --- ground truth ------------------------------------------------------------------------------

def test_gt_boxes_inside_frame_and_tight_on_rendered_person(tiny_world):
    cfg = preset("tiny")
    plan = make_plan(cfg)
    for v in plan.videos:
        gt, bad = read_gt(tiny_world / "mot" / v.video_id / "gt.txt")
        assert not bad and len(gt)
        assert (gt[:, 2] >= 0).all() and (gt[:, 3] >= 0).all()
        assert (gt[:, 4] <= cfg.width).all() and (gt[:, 5] <= cfg.height).all()
        assert ((gt[:, 7] >= 0) & (gt[:, 7] <= 1)).all()
        renderer = VideoRenderer(v, plan.people, cfg.width, cfg.height)
        decoded = dict(iter_frames(tiny_world / "videos" / f"{v.video_id}.mp4"))
        for t in range(cfg.frames):
            frame = renderer.render(t)  # in order: same noise draws as generation
            rows = gt[gt[:, 0] == t + 1]
            assert sorted(rows[:, 1].astype(int)) == [b.track_id for b in frame.boxes]
            for row in rows:
                tid = int(row[1])
                x1, y1, x2, y2 = row[2:6].astype(int)
                ys, xs = np.nonzero(frame.labels == tid)
                if len(ys):  # every visible pixel of the person lies inside their box
                    assert xs.min() >= x1 and xs.max() < x2 and ys.min() >= y1 and ys.max() < y2
                vis = len(ys) / max(1, (x2 - x1) * (y2 - y1))
                assert vis <= 1.0
            # the video shows what was rendered: equal up to lossy coding of the sensor noise
            smooth = lambda im: cv2.GaussianBlur(im.astype(np.float32), (0, 0), 1.5)  # noqa: E731
            err = np.abs(smooth(decoded[t]) - smooth(frame.image)).mean()
            assert err < 3.0, (v.video_id, t, err)


def test_video_pixels_change_where_gt_says_people_are(tiny_world):
    cfg = preset("tiny")
    plan = make_plan(cfg)
    outside, inside = [], []
    for v in plan.videos:
        empty = VideoRenderer(v, plan.people, cfg.width, cfg.height).render_empty().astype(np.float32)
        gt, _ = read_gt(tiny_world / "mot" / v.video_id / "gt.txt")
        for t, img in iter_frames(tiny_world / "videos" / f"{v.video_id}.mp4"):
            changed = np.abs(img.astype(np.float32) - empty).max(-1) > 30
            covered = np.zeros(changed.shape, bool)
            for row in gt[gt[:, 0] == t + 1]:
                x1, y1, x2, y2 = row[2:6].astype(int)
                covered[y1:y2, x1:x2] = True
                if row[7] > 0.6 and y2 - y1 >= 20:
                    inside.append(changed[y1:y2, x1:x2].mean())
            outside.append(changed[~covered].mean() if (~covered).any() else 0.0)
    assert np.median(outside) < 0.01 and max(outside) < 0.08
    assert np.median(inside) > 0.4 and np.percentile(inside, 5) > 0.1


def test_identities_cover_every_gt_track(tiny_world):
    ids = json.loads((tiny_world / "identities.json").read_text())
    mapped = {(r["video_id"], r["track_id"]) for r in ids}
    in_gt = set()
    for vid in _video_ids(tiny_world):
        gt, _ = read_gt(tiny_world / "mot" / vid / "gt.txt")
        in_gt |= {(vid, int(t)) for t in np.unique(gt[:, 1])}
    assert mapped == in_gt
    assert len({(r["video_id"], r["identity"]) for r in ids}) == len(ids)  # one gt id per person per video


def test_default_world_identities_span_videos(default_world):
    cfg = SynthConfig()
    ids = json.loads((default_world / "identities.json").read_text())
    videos_of = defaultdict(set)
    for r in ids:
        videos_of[r["identity"]].add(int(r["video_id"][1:]))
    assert len(videos_of) == cfg.identities
    assert min(len(v) for v in videos_of.values()) >= 2
    # mostly nearby in the order, sometimes far apart
    gaps = [max(v) - min(v) for v in videos_of.values()]
    assert np.mean([g <= 2 * cfg.locality for g in gaps]) > 0.6
    assert max(gaps) > 2 * cfg.locality
    # several cameras, people occluding each other
    world = json.loads((default_world / "world.json").read_text())
    assert len({v["camera"] for v in world["videos"]}) == cfg.cameras
    vis = np.concatenate([read_gt(default_world / "mot" / v / "gt.txt")[0][:, 7] for v in _video_ids(default_world)])
    assert 0.05 < np.mean(vis < 0.7) < 0.5


def test_appearance_attributes_vary_and_some_colours_are_shared():
    plan = make_plan(SynthConfig())
    people = [plan.people[p] for p in plan.video_identities]
    tops = [p.top_name for p in people]
    assert len(set(tops)) >= 8 and len(set(tops)) < len(tops)  # shared colours
    for attr in ("pattern", "bag", "hair_style", "bottom_style", "sleeves"):
        assert len({getattr(p, attr) for p in people}) >= 2
    assert np.std([p.height for p in people]) > 0.03


# --- detections --------------------------------------------------------------------------------

def test_det_noise_matches_configuration(default_world):
    cfg = SynthConfig()
    d = cfg.det
    matched = expected_hit = var_hit = 0.0
    fps = 0
    rel_err, scores, score_expect = [], [], []
    n_frames = 0
    for vid in _video_ids(default_world):
        gt, _ = read_gt(default_world / "mot" / vid / "gt.txt")
        det, bad = read_detections(default_world / "mot" / vid / "det.txt")
        assert not bad
        for f in range(1, cfg.frames + 1):
            n_frames += 1
            g, dt = gt[gt[:, 0] == f], det[det[:, 0] == f]
            p = 1.0 - miss_probability(d, g[:, 7], g[:, 5] - g[:, 3])
            expected_hit += p.sum()
            var_hit += (p * (1 - p)).sum()
            if len(g) and len(dt):
                iou = _iou(g[:, 2:6], dt[:, 1:5])
                r, c = linear_sum_assignment(-iou)
                ok = iou[r, c] >= 0.5
                r, c = r[ok], c[ok]
            else:
                r = c = np.zeros(0, int)
            matched += len(r)
            fps += len(dt) - len(c)
            for i, j in zip(r, c):
                x1, y1, x2, y2 = g[i, 2:6]
                interior = x1 > 2 and y1 > 2 and x2 < cfg.width - 2 and y2 < cfg.height - 2
                if interior:
                    w, h = x2 - x1, y2 - y1
                    rel_err.append((dt[j, 1:5] - g[i, 2:6]) / np.array([w, h, w, h]))
                    scores.append(dt[j, 5])
                    score_expect.append(np.clip(d.score_mean - 0.3 * (1 - g[i, 7]), 0.05, 1.0))
    # recall follows the miss model (binomial, 4 sigma plus a little for ambiguous matches)
    assert abs(matched - expected_hit) < 4 * np.sqrt(var_hit) + 0.01 * expected_hit
    # false positives per frame (Poisson)
    lam = d.fp_per_frame * n_frames
    assert abs(fps - lam) < 4 * np.sqrt(lam) + 0.02 * matched
    # box jitter: each edge's relative error has std `jitter`
    std = np.std(np.array(rel_err), axis=0)
    assert np.all(np.abs(std - d.jitter) < 0.2 * d.jitter), std
    assert abs(np.mean(scores) - np.mean(score_expect)) < 0.02


# --- videos ------------------------------------------------------------------------------------

def test_videos_decode_to_stated_count_and_size(tiny_world):
    cfg = preset("tiny")
    for vid in _video_ids(tiny_world):
        info = read_seqinfo(tiny_world / "mot" / vid / "seqinfo.ini")
        assert (info.length, info.width, info.height) == (cfg.frames, cfg.width, cfg.height)
        frames = list(iter_frames(tiny_world / "videos" / f"{vid}.mp4"))
        assert [i for i, _ in frames] == list(range(cfg.frames))
        assert all(f.shape == (cfg.height, cfg.width, 3) and f.dtype == np.uint8 for _, f in frames)
        p = probe_video(tiny_world / "videos" / f"{vid}.mp4")
        assert (p.frames, p.width, p.height) == (cfg.frames, cfg.width, cfg.height)
        assert p.fps == pytest.approx(cfg.fps)
        assert p.codec in ("h264", "mpeg4")


def test_chunk_decoding_equals_full_pass(tiny_world):
    path = tiny_world / "videos" / "v0001.mp4"
    full = dict(iter_frames(path))
    part = list(iter_frames(path, start=23, stop=47, step=2))
    assert [i for i, _ in part] == list(range(23, 47, 2))
    assert all(np.array_equal(full[i], f) for i, f in part)


# --- ReID split --------------------------------------------------------------------------------

def test_market_split_counts_cameras_and_no_overlap(tiny_world):
    cfg = preset("tiny")
    split = {}
    for s in ("bounding_box_train", "query", "bounding_box_test"):
        names = sorted(p.name for p in (tiny_world / "reid" / s).glob("*.jpg"))
        parsed = [parse_market_name(n) for n in names]
        assert all(parsed), [n for n, p in zip(names, parsed) if p is None]
        split[s] = parsed
    train_ids = {p.pid for p in split["bounding_box_train"]}
    test_ids = {p.pid for p in split["bounding_box_test"]}
    assert len(train_ids) == cfg.reid.train_identities
    assert len(test_ids) == cfg.reid.test_identities
    assert {p.pid for p in split["query"]} == test_ids
    assert not train_ids & test_ids
    video_ids = {r["identity"] for r in json.loads((tiny_world / "identities.json").read_text())}
    assert not (train_ids | test_ids) & video_ids
    cams = defaultdict(set)
    for p in split["bounding_box_train"] + split["bounding_box_test"]:
        assert 1 <= p.camera <= cfg.cameras
        cams[p.pid].add(p.camera)
    assert all(cfg.reid.min_cameras <= len(c) <= cfg.reid.max_cameras for c in cams.values())
    # one query per identity and camera, each with a same-camera gallery image and other-camera matches
    q = [(p.pid, p.camera) for p in split["query"]]
    assert len(q) == len(set(q)) == sum(len(cams[i]) for i in test_ids)
    gallery = {(p.pid, p.camera) for p in split["bounding_box_test"]}
    assert set(q) <= gallery
    from PIL import Image
    img = Image.open(next((tiny_world / "reid" / "query").glob("*.jpg")))
    assert img.size == (64, 128)


def test_preview_written(tiny_world):
    from PIL import Image
    img = Image.open(tiny_world / "preview.png")
    assert img.size[0] > 200 and img.size[1] > 128


# --- command line ------------------------------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cion_ray.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args,msg", [
    (["--videos", "0"], "videos must be >= 1"),
    (["--frames", "0"], "frames must be >= 1"),
    (["--identities", "-3"], "identities must be >= 1"),
    (["--preset", "huge"], "unknown preset"),
    (["--set", "det.nope=1"], "unknown key"),
])
def test_cli_bad_arguments_exit_2_without_traceback(tmp_path, args, msg):
    r = _cli("synth", "--out", str(tmp_path / "w"), *args)
    assert r.returncode == 2
    assert msg in r.stderr and "Traceback" not in r.stderr


def test_cli_unwritable_out_dir(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    r = _cli("synth", "--out", str(f / "world"))
    assert r.returncode == 2
    assert "not writable" in r.stderr and str(f) in r.stderr and "Traceback" not in r.stderr


def test_cli_generates_world(tmp_path):
    r = _cli("synth", "--out", str(tmp_path / "w"), "--preset", "tiny", "--videos", "2", "--frames", "12",
             "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert "preview" in r.stdout
    assert (tmp_path / "w" / "world.json").is_file() and (tmp_path / "w" / "preview.png").is_file()
    assert len(list((tmp_path / "w" / "videos").glob("*.mp4"))) == 2
