"""Tracking building blocks without Ray: chunk plans, detections, stitching, quality, one chunk end to end."""
from __future__ import annotations


import numpy as np
import pytest

from cion_ray.errors import CionError
from cion_ray.io.mot import read_gt
from cion_ray.io.video import iter_frames
from cion_ray.tracking.config import ChunkConfig, CropConfig, TrackConfig, TrackerConfig
from cion_ray.tracking.detectors import MotDetections
from cion_ray.tracking.manifest import VideoEntry, plan_chunks, probe_entry
from cion_ray.tracking.quality import combine, mot_quality
from cion_ray.tracking.stitch import box_iou, renumber, stitch_group, stitch_video
from cion_ray.tracking.tracker import Detections, chunk_frames, encode_crop, make_tracker, process_chunk


def _entry(frames: int) -> VideoEntry:
    return VideoEntry("v", "/x/v.mp4", 25.0, frames, 320, 240)


@pytest.mark.parametrize("n,size,overlap", [(200, 60, 10), (200, 0, 10), (61, 60, 5), (10, 100, 3), (100, 25, 0)])
def test_chunks_partition_frames_with_lead_in(n, size, overlap):
    chunks = plan_chunks(_entry(n), size, overlap, step=1)
    owned = [f for c in chunks for f in range(c.own_start, c.stop)]
    assert owned == list(range(n))
    assert chunks[0].start == 0
    for prev, c in zip(chunks, chunks[1:]):
        assert c.start == max(0, c.own_start - overlap) and c.own_start == prev.stop
    assert all(c.n_chunks == len(chunks) for c in chunks)


def test_frame_step_and_target_fps():
    assert ChunkConfig(frame_step=3).step_for(25) == 3
    assert ChunkConfig(target_fps=5).step_for(25) == 5
    assert ChunkConfig(target_fps=50).step_for(25) == 1


def test_mot_detections_report_malformed_lines(tmp_path):
    p = tmp_path / "det.txt"
    p.write_text("1,-1,10,20,30,60,0.9,-1,-1,-1\n"
                 "garbage line\n"
                 "2,-1,10,20,-5,60,0.9,-1,-1,-1\n"
                 "0,-1,10,20,30,60,0.9,-1,-1,-1\n"
                 "2,-1,11,21,30,60,0.8,-1,-1,-1\n"
                 "2,-1,400,21,30,60,0.8\n")
    d = MotDetections(str(p))
    assert len(d.problems) == 3 and all(str(p) in m for m in d.problems)
    assert any(":2:" in m for m in d.problems) and any(":3:" in m for m in d.problems)
    img = np.zeros((240, 320, 3), np.uint8)
    f0, f1, f2 = d([img, img, img], [0, 1, 2])
    assert f0.shape == (1, 5) and np.allclose(f0[0], [10, 20, 40, 80, 0.9])
    assert f1.shape == (1, 5)  # the box at x=400 lies outside the 320-wide frame: dropped
    assert f2.shape == (0, 5)


def test_detections_adapter_feeds_bytetrack():
    tr = make_tracker(TrackerConfig())
    boxes = np.array([[10, 10, 40, 100, 0.9], [200, 50, 230, 140, 0.8]], np.float32)
    ids = []
    for k in range(5):
        out = tr.update(Detections(boxes + [2 * k, 0, 2 * k, 0, 0]), None)
        ids.append(sorted(out[:, 4].astype(int).tolist()))
    assert ids[-1] == ids[-2] and len(ids[-1]) == 2


def test_box_iou_and_renumber():
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], float)
    assert np.allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0]])
    frame = np.array([3, 1, 2, 4, 5, 1])
    ids = np.array([7, 7, 7, 9, 9, 4])
    out = renumber(frame, ids, np.ones(6, bool), min_len=2)
    assert out.tolist() == [1, 1, 1, 2, 2, 0]  # id 4 too short; 7 first seen before 9


def _split_tracks(n_frames=60, chunk=25, overlap=6):
    """Two people moving right; chunk-local ids differ per chunk."""
    rows = []
    for c in plan_chunks(_entry(n_frames), chunk, overlap, 1):
        for i in range(c.start, c.stop):
            for person, y in ((1, 10), (2, 120)):
                x = 2.0 * i + 50 * person
                rows.append((c.chunk, i + 1, 100 * c.chunk + person + 10 * c.chunk, [x, y, x + 30, y + 90]))
    ch = np.array([r[0] for r in rows])
    fr = np.array([r[1] for r in rows])
    tid = np.array([r[2] for r in rows])
    bx = np.array([r[3] for r in rows], float)
    own = {c.chunk: c.own_start for c in plan_chunks(_entry(n_frames), chunk, overlap, 1)}
    return ch, fr, tid, bx, own


def test_stitch_joins_tracks_across_chunks():
    ch, fr, tid, bx, own = _split_tracks()
    ids = stitch_video(ch, fr, tid, bx, own)
    person_of = (bx[:, 1] > 50).astype(int)
    # each person gets exactly one video-level id, different from the other's
    assert len(set(ids[person_of == 0])) == 1 and len(set(ids[person_of == 1])) == 1
    assert ids[person_of == 0][0] != ids[person_of == 1][0]
    g = stitch_group("v", ch, fr, tid, bx, own, min_track_len=5)
    assert sorted(set(g["final_id"].tolist())) == [1, 2] and g["tracklets"][0] == 2
    assert g["crops"][0] == 2 * 60  # owned rows only, each frame once


def test_stitch_does_not_join_distant_tracks():
    ch, fr, tid, bx, own = _split_tracks()
    bx[ch == 1] += [0, 60, 0, 60]  # chunk 1 boxes moved far away from chunk 0's: no continuation
    ids = stitch_video(ch, fr, tid, bx, own)
    assert not set(ids[ch == 0]) & set(ids[ch == 1])


def test_mot_quality_perfect_and_switch():
    gt = np.array([[f, 1, 10, 10, 40, 100, 1, 1.0] for f in range(1, 11)]
                  + [[f, 2, 200, 10, 230, 100, 1, 1.0] for f in range(1, 11)])
    hyp = gt[:, :6].copy()
    q = mot_quality(gt, hyp)
    assert q["mota"] == 1.0 and q["idf1"] == 1.0 and q["num_switches"] == 0
    hyp2 = hyp.copy()
    hyp2[(hyp2[:, 1] == 1) & (hyp2[:, 0] > 5), 1] = 3  # person 1 changes id half way
    q2 = mot_quality(gt, hyp2)
    assert q2["num_switches"] == 1 and q2["idf1"] < 1.0
    both = combine([q, q2])
    assert both["num_objects"] == 40 and both["num_switches"] == 1


def test_encode_crop_height_and_aspect():
    import cv2
    img = np.random.default_rng(0).integers(0, 255, (240, 320, 3), np.uint8)
    jpg = encode_crop(img, (10.4, 20.2, 50.7, 120.9), height=128, quality=90)
    dec = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
    assert dec.shape[0] == 128 and abs(dec.shape[1] - 128 * 41 / 101) <= 2


def test_process_chunk_on_synthetic_video(tiny_world):
    vid = "v0001"
    e = probe_entry(str(tiny_world / "videos" / f"{vid}.mp4"))
    (chunk,) = plan_chunks(e, 0, 0, 1)
    det = MotDetections(str(tiny_world / "mot" / vid / "det.txt"))
    frames = chunk_frames(chunk, lambda: open(chunk.uri, "rb"), iter_frames)
    res = process_chunk(chunk, frames, det, TrackerConfig(), CropConfig(min_track_len=1))
    assert res.frames_decoded == e.frames and len(res) > 0
    gt, _ = read_gt(tiny_world / "mot" / vid / "gt.txt")
    assert len(res) <= len(gt) * 1.2
    boxes = np.array(res.boxes)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= e.width).all() and (boxes[:, 3] <= e.height).all()


def test_truncated_chunk_raises(tiny_world):
    e = probe_entry(str(tiny_world / "videos" / "v0000.mp4"))
    (chunk,) = plan_chunks(VideoEntry(**{**e.to_json(), "frames": e.frames + 10}), 0, 0, 1)
    det = MotDetections(str(tiny_world / "mot" / "v0000" / "det.txt"))
    frames = chunk_frames(chunk, lambda: open(chunk.uri, "rb"), iter_frames)
    with pytest.raises(CionError, match="truncated"):
        process_chunk(chunk, frames, det, TrackerConfig(), CropConfig())


def test_fingerprint_ignores_paths_and_pool():
    a = TrackConfig(videos="a", out="b")
    b = TrackConfig(videos="c", out="d")
    b.pool.actors = 4
    assert a.fingerprint() == b.fingerprint()
    c = TrackConfig()
    c.crops.min_track_len = 9
    assert c.fingerprint() != a.fingerprint()
