"""The shared feature extractor (cion_ray.zoo.features) and image preprocessing (cion_ray.io.images)
that evaluation, pre-training's in-loop evaluation and the timm embedder all use."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cion_ray.errors import CionError
from cion_ray.io.images import MEAN, STD, decode_jpeg, eval_array
from cion_ray.zoo.factory import create_backbone
from cion_ray.zoo.features import ProgressLine, extract_features

SIZE = (64, 32)


def jpeg(seed: int, shape=(90, 40)) -> bytes:
    a = np.random.default_rng(seed).integers(0, 255, (*shape, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_backbone("test_resnet_ibn", SIZE).eval()


def test_eval_array_is_torchvisions_bicubic_resize_and_normalisation():
    from torchvision import transforms as T

    img = decode_jpeg(jpeg(0), "x")
    tv = T.Compose([T.Resize(SIZE, interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(), T.Normalize(MEAN, STD)])
    np.testing.assert_allclose(eval_array(img, SIZE), tv(img).numpy(), atol=1e-5)
    assert eval_array(img, SIZE).shape == (3, *SIZE) and eval_array(img, SIZE).dtype == np.float32


def test_decode_error_names_the_image_and_is_both_error_kinds():
    for data in (b"not a jpeg", b"", jpeg(0)[:40]):
        with pytest.raises(CionError, match="crop-7: cannot decode"):
            decode_jpeg(data, "crop-7")
        with pytest.raises(ValueError, match="crop-7"):
            decode_jpeg(data, "crop-7")


def test_bytes_and_files_give_the_same_features_in_any_batching(model, tmp_path):
    data = [jpeg(i, (90 + i, 40)) for i in range(7)]
    files = []
    for i, b in enumerate(data):
        (tmp_path / f"{i}.jpg").write_bytes(b)
        files.append(str(tmp_path / f"{i}.jpg"))
    calls = []
    a = extract_features(model, data, SIZE, batch=3, progress=lambda d, n: calls.append((d, n)))
    b = extract_features(model, files, SIZE, batch=7)
    c = extract_features(model, files[4:5], SIZE, batch=1)
    assert a.shape == (7, model(torch.zeros(1, 3, *SIZE)).shape[1]) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a[4:5], c, atol=1e-5)
    assert calls == [(3, 7), (6, 7), (7, 7)]
    assert not model.training, "the model's mode is restored (it was in eval mode)"


def test_flip_averages_with_the_mirrored_image(model):
    data = [jpeg(1), jpeg(2)]
    x = torch.from_numpy(np.stack([eval_array(decode_jpeg(b), SIZE) for b in data]))
    with torch.no_grad():
        want = ((model(x) + model(torch.flip(x, dims=[3]))) / 2).numpy()
    np.testing.assert_allclose(extract_features(model, data, SIZE, flip=True), want, atol=1e-5)
    assert not np.allclose(extract_features(model, data, SIZE, flip=False), want, atol=1e-5)


def test_bad_images_raise_with_their_name_or_become_nan_rows(model, tmp_path):
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    good.write_bytes(jpeg(3))
    bad.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(CionError, match="bad.jpg: cannot decode"):
        extract_features(model, [str(good), str(bad)], SIZE)
    with pytest.raises(CionError, match="missing.jpg: not found"):
        extract_features(model, [str(tmp_path / "missing.jpg")], SIZE)
    f = extract_features(model, [str(good), str(bad), b""], SIZE, on_error="nan", normalize=True)
    assert np.isnan(f[1:]).all() and np.isfinite(f[0]).all()
    assert np.linalg.norm(f[0]) == pytest.approx(1.0, abs=1e-5)
    assert extract_features(model, [b"", b"x"], SIZE, on_error="nan").shape[0] == 2


def test_timm_embedder_is_the_shared_extractor(model, tmp_path):
    from cion_ray.embed.timm_embedder import TimmEmbedder

    torch.save(model.state_dict(), tmp_path / "backbone.pth")
    emb = TimmEmbedder("test_resnet_ibn", str(tmp_path / "backbone.pth"), height=SIZE[0], width=SIZE[1])
    crops = [jpeg(4), b"broken", jpeg(5)]
    f = emb(crops)
    assert f.shape == (3, emb.dim) and np.isnan(f[1]).all()
    np.testing.assert_allclose(np.linalg.norm(f[[0, 2]], axis=1), 1.0, atol=1e-5)
    want = extract_features(model, [crops[0], crops[2]], SIZE, flip=False, normalize=True)
    np.testing.assert_allclose(f[[0, 2]], want, atol=1e-5)


def test_progress_line_reports_rate_and_time_left():
    lines = []
    p = ProgressLine(lines.append, "gallery", every_s=0.0)
    p(10, 40)
    p(40, 40)
    assert len(lines) == 2 and lines[0].startswith("gallery: 10/40 images,") and "img/s" in lines[0]
    assert lines[-1].endswith("0s left")
    quiet = ProgressLine(lines.append, "q", every_s=3600)
    quiet(1, 40)
    quiet(40, 40)  # only the last line, not the first within the hour
    assert lines[-1].startswith("q: 40/40") and not any(x.startswith("q: 1/") for x in lines)


def test_evaluate_and_embed_do_not_import_pretrain():
    code = ("import sys, importlib, pkgutil, cion_ray.evaluate, cion_ray.embed\n"
            "for pkg in (cion_ray.evaluate, cion_ray.embed):\n"
            "    for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + '.'):\n"
            "        importlib.import_module(m.name)\n"
            "import cion_ray.embed.timm_embedder as t\n"
            "bad = sorted(k for k in sys.modules if k.startswith('cion_ray.pretrain'))\n"
            "print(bad)\nsys.exit(1 if bad else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stdout + r.stderr
    root = Path(__file__).resolve().parents[1] / "cion_ray"
    lazy = [str(p) for d in ("evaluate", "embed") for p in (root / d).glob("*.py") if "cion_ray.pretrain" in p.read_text()]
    assert not lazy, lazy
