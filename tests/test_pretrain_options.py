"""The pre-training options that study the small-scale collapse, without Ray: Sinkhorn-Knopp
targets, KoLeo, the teacher-temperature warm-up, BN in the head, the backbone features the
wrapper returns, the photometric augmentation settings, their config checks, the shipped
small profile, and the backbone initialisation (--init).

Shared helpers (small_cfg, loss_by_loops, _cion_al) come from test_pretrain_unit.py."""
from __future__ import annotations

import math
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_pretrain_unit import _cion_al, loss_by_loops, small_cfg
from torch import nn

from cion_ray.config import load_config
from cion_ray.errors import ConfigError
from cion_ray.pretrain.config import PretrainConfig, ViewsConfig
from cion_ray.pretrain.loss import IdentityDINOLoss, koleo_loss, sinkhorn_log_probs
from cion_ray.pretrain.schedules import teacher_temp_schedule

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- Sinkhorn-Knopp targets


def sinkhorn_reference(logits, temp, n_iters):
    """SwAV's sinkhorn_knopp in float64: Q = exp(logits / temp).T is (D, N); normalise the total,
    then alternately give every dimension mass 1 / D and every sample 1 / N; times N, transposed."""
    q = torch.exp(logits.double() / temp).T
    d, n = q.shape
    q = q / q.sum()
    for _ in range(n_iters):
        q = q / q.sum(dim=1, keepdim=True) / d
        q = q / q.sum(dim=0, keepdim=True) / n
    return (q * n).T


def in_lock_step(jobs):
    """Run jobs[r](all_reduce_sum) for every rank r as simulated workers, one thread each; their
    all_reduce_sum adds every worker's tensor (in place, as torch.distributed does)."""
    barrier = threading.Barrier(len(jobs), timeout=30)
    slots = [None] * len(jobs)

    def reducer(rank):
        def all_reduce_sum(t):
            slots[rank] = t.clone()
            barrier.wait()
            total = sum(slots)
            barrier.wait()  # both have read the slots before either writes the next ones
            return t.copy_(total)
        return all_reduce_sum

    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(job, reducer(r)) for r, job in enumerate(jobs)]
        return [f.result() for f in futures]


def head_logits(n, d, seed):
    """(n, d) logits as the DINO head makes them: L2-normalised bottleneck rows against unit-norm
    weight rows (norm_last_layer), so in [-1, 1] and correlated across dimensions."""
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n, 16, generator=g), dim=1)
    return z @ F.normalize(torch.randn(d, 16, generator=g), dim=1).T


@pytest.mark.parametrize("n,d,temp", [(24, 6, 0.5), (8, 32, 0.5), (64, 1024, 0.02)])
def test_sinkhorn_rows_are_distributions_and_columns_equipartitioned(n, d, temp):
    logits = head_logits(n, d, seed=n + d)
    q = sinkhorn_log_probs(logits, teacher_temp=temp, n_iters=50).exp()
    assert torch.allclose(q.sum(1), torch.ones(n), atol=1e-5)
    assert torch.allclose(q.sum(0), torch.full((d,), n / d), atol=1e-3 * n / d), q.sum(0)
    # three iterations already: far closer to equal columns than the plain softmax
    off3 = (sinkhorn_log_probs(logits, temp, 3).exp().sum(0) - n / d).abs().max()
    off_softmax = (torch.softmax(logits / temp, dim=1).sum(0) - n / d).abs().max()
    assert off3 < 0.25 * off_softmax, (off3, off_softmax)


@pytest.mark.parametrize("temp,n_iters", [(0.5, 1), (0.1, 3), (0.04, 7), (0.02, 3)])
def test_sinkhorn_equals_the_swav_reference(temp, n_iters):
    g = torch.Generator().manual_seed(n_iters)
    for logits in (torch.rand(12, 20, generator=g) * 2 - 1, head_logits(32, 256, n_iters)):
        got = sinkhorn_log_probs(logits, temp, n_iters).exp().double()
        assert torch.allclose(got, sinkhorn_reference(logits, temp, n_iters), atol=1e-5)


def test_sinkhorn_shifts():
    """A per-dimension shift (a centre) is undone by the first dimension step, at any number of
    iterations; a per-row shift only by convergence (SwAV's finite iterations are not invariant
    to it: a rescaled row weighs differently in the first dimension sums)."""
    g = torch.Generator().manual_seed(1)
    logits = head_logits(10, 16, seed=1)
    col_shift = torch.randn(1, 16, generator=g)
    row_shift = torch.randn(10, 1, generator=g)
    assert torch.allclose(sinkhorn_log_probs(logits, 0.1, 3), sinkhorn_log_probs(logits + col_shift, 0.1, 3),
                          atol=1e-4)
    assert torch.allclose(sinkhorn_log_probs(logits, 0.1, 200), sinkhorn_log_probs(logits + row_shift, 0.1, 200),
                          atol=1e-3)


def test_sinkhorn_at_a_low_temperature_stays_finite():
    g = torch.Generator().manual_seed(2)
    logits = torch.rand(16, 64, generator=g) * 2 - 1  # exp(logits / 0.01) overflows float32
    log_q = sinkhorn_log_probs(logits, 0.01, 3)
    assert torch.isfinite(log_q).all()
    q = log_q.exp()
    assert torch.allclose(q.sum(1), torch.ones(16), atol=1e-5)
    assert torch.allclose(q.double(), sinkhorn_reference(logits, 0.01, 3), atol=1e-4)


def test_sinkhorn_over_two_workers_equals_one_worker_on_the_whole_batch():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(16, 10, generator=g)
    whole = sinkhorn_log_probs(logits, 0.1, 5)
    halves = logits.chunk(2)
    calls = [0, 0]

    def worker(rank):
        def job(all_reduce_sum):
            def counted(t):
                calls[rank] += 1
                return all_reduce_sum(t)
            return sinkhorn_log_probs(halves[rank], 0.1, 5, counted, world_size=2)
        return job

    parts = in_lock_step([worker(0), worker(1)])
    assert calls[0] == calls[1] >= 5  # the same reductions on both, at least one per iteration
    assert torch.allclose(torch.cat(parts), whole, atol=1e-5)
    # the reduction matters: each half alone is equipartitioned over itself, not over the batch
    assert not torch.allclose(torch.cat([sinkhorn_log_probs(h, 0.1, 5) for h in halves]), whole, atol=1e-3)


# ---------------------------------------------------------------- the loss with Sinkhorn targets


def entropies_by_hand(q):
    q = q.double()
    m = q.mean(0)
    return torch.stack([-(q * q.log()).sum(1).mean(), -(m * m.log()).sum()])


def test_sinkhorn_loss_equals_the_formula_with_sinkhorn_targets():
    g = torch.Generator().manual_seed(4)
    k, n_views, p, d = 2, 3, 3, 17
    b = p * k
    student = torch.randn(n_views * b, d, generator=g)
    teacher = torch.randn(2 * b, d, generator=g)
    loss = IdentityDINOLoss(d, n_views, teacher_temp=0.07, centering="sinkhorn", sinkhorn_iters=4)
    got = loss(student, teacher, k)
    q = sinkhorn_reference(teacher, 0.07, 4).float()
    assert torch.allclose(got, loss_by_loops(student, teacher, None, k, n_views, q=q), rtol=1e-5, atol=1e-5)
    assert torch.allclose(loss.last_entropy.double(), entropies_by_hand(q), atol=1e-4)
    # not the centred softmax
    assert not torch.allclose(got, loss_by_loops(student, teacher, torch.zeros(1, d), k, n_views, tt=0.07), atol=1e-3)
    # the centre is still tracked: 0.9 * 0 + 0.1 * batch mean
    assert torch.allclose(loss.center, 0.1 * teacher.mean(0, keepdim=True), atol=1e-6)

    # this step's temperature overrides the constructor's, for this call only
    hot = loss(student, teacher, k, teacher_temp=0.2)
    q_hot = sinkhorn_reference(teacher, 0.2, 4).float()
    assert torch.allclose(hot, loss_by_loops(student, teacher, None, k, n_views, q=q_hot), rtol=1e-5, atol=1e-5)
    assert torch.allclose(loss.last_entropy.double(), entropies_by_hand(q_hot), atol=1e-4)
    assert torch.allclose(loss(student, teacher, k), got, atol=1e-6)


def test_teacher_temp_argument_overrides_in_the_centre_mode_too():
    g = torch.Generator().manual_seed(5)
    student, teacher = torch.randn(3 * 4, 9, generator=g), torch.randn(2 * 4, 9, generator=g)
    loss = IdentityDINOLoss(9, 3, teacher_temp=0.04)
    got = loss(student, teacher, 2, teacher_temp=0.1)  # centre 0 on the first call
    assert torch.allclose(got, loss_by_loops(student, teacher, torch.zeros(1, 9), 2, 3, tt=0.1), atol=1e-5)


def test_sinkhorn_loss_sums_over_the_workers():
    """Two workers, each with its own P x K batch: the targets are the Sinkhorn targets of both
    batches together, and the centre is the mean over both."""
    g = torch.Generator().manual_seed(6)
    k, n_views, b, d = 2, 2, 4, 12
    students = [torch.randn(n_views * b, d, generator=g) for _ in range(2)]
    teachers = [torch.randn(2 * b, d, generator=g) for _ in range(2)]

    def worker(rank):
        def job(all_reduce_sum):
            loss = IdentityDINOLoss(d, n_views, teacher_temp=0.1, centering="sinkhorn", sinkhorn_iters=3,
                                    all_reduce_sum=all_reduce_sum, world_size=2)
            return loss(students[rank], teachers[rank], k), loss.center.clone()
        return job

    results = in_lock_step([worker(0), worker(1)])
    q = sinkhorn_reference(torch.cat(teachers), 0.1, 3).float().chunk(2)
    for r, (got, center) in enumerate(results):
        want = loss_by_loops(students[r], teachers[r], None, k, n_views, q=q[r])
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), r
        assert torch.allclose(center, 0.1 * torch.cat(teachers).mean(0, keepdim=True), atol=1e-6)


def test_unknown_centering_is_a_value_error():
    with pytest.raises(ValueError, match="centering"):
        IdentityDINOLoss(8, 2, centering="ema")


# ---------------------------------------------------------------- KoLeo


def unit_rows(*degrees):
    a = torch.tensor(degrees, dtype=torch.float32) * math.pi / 180
    return torch.stack([a.cos(), a.sin()], 1)


def test_koleo_by_hand():
    # rows at 0, 30, 90 and 180 degrees (not unit length: the loss normalises them)
    x = unit_rows(0, 30, 90, 180) * torch.tensor([[1.0], [3.0], [0.5], [2.0]])
    chord = lambda deg: 2 * math.sin(math.radians(deg) / 2)  # noqa: E731 (distance of unit vectors)
    # K = 1: nearest neighbours 30, 0, 30, 90 degrees away
    want1 = -(2 * math.log(chord(30)) + math.log(chord(60)) + math.log(chord(90))) / 4
    assert koleo_loss(x, 1).item() == pytest.approx(want1, abs=1e-5)
    # K = 2: identities {0, 30} and {90, 180}; the nearest row of another identity is 90, 60, 60
    # and 150 degrees away
    want2 = -(math.log(chord(90)) + 2 * math.log(chord(60)) + math.log(chord(150))) / 4
    assert koleo_loss(x, 2).item() == pytest.approx(want2, abs=1e-5)


@pytest.mark.parametrize("b,k", [(5, 2), (2, 2), (1, 1), (3, 3)])
def test_koleo_needs_a_p_by_k_batch_with_two_identities(b, k):
    with pytest.raises(ValueError, match="P x K"):
        koleo_loss(torch.randn(b, 4), k)


def nearest_other_identity(x, k):
    x = F.normalize(x, dim=-1)
    dist = torch.cdist(x, x)
    same = torch.arange(len(x)) // k
    return dist.masked_fill(same[:, None] == same[None, :], float("inf")).min()


@pytest.mark.parametrize("k", [1, 2])
def test_koleo_gradient_pushes_the_nearest_rows_apart(k):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(8, 5, generator=g)
    x[4] = x[0] + 0.05 * torch.randn(5, generator=g)  # a near pair, of different identities at K = 1 and 2
    before = nearest_other_identity(x, k)
    x.requires_grad_(True)
    koleo_loss(x, k).backward()
    with torch.no_grad():
        stepped = x - 0.05 * x.grad
    assert nearest_other_identity(stepped, k) > before * 1.2


# ---------------------------------------------------------------- the task: KoLeo term, similarity


def test_mean_pairwise_cosine_against_a_loop():
    from cion_ray.pretrain.task import mean_pairwise_cosine

    g = torch.Generator().manual_seed(8)
    f = torch.randn(5, 7, generator=g)
    want = np.mean([F.cosine_similarity(f[i], f[j], dim=0).item() for i in range(5) for j in range(5) if i != j])
    assert mean_pairwise_cosine(f).item() == pytest.approx(want, abs=1e-6)
    same = torch.randn(1, 7, generator=g) * torch.tensor([[1.0], [2.0], [0.3], [5.0]])  # one direction
    assert mean_pairwise_cosine(same).item() == pytest.approx(1.0, abs=1e-6)
    assert mean_pairwise_cosine(f[:1]).item() == 1.0


def small_views(b, g):
    return ([torch.randn(b, 3, 64, 32, generator=g) for _ in range(2)]
            + [torch.randn(b, 3, 32, 16, generator=g) for _ in range(2)])


def test_task_adds_the_weighted_koleo_term_and_reports_both():
    from cion_ray.pretrain.task import CIONTask, mean_pairwise_cosine

    k, b, w = 2, 8, 0.5
    views = small_views(b, torch.Generator().manual_seed(9))
    torch.manual_seed(0)
    plain = CIONTask(small_cfg("model.arch=test_resnet"))
    torch.manual_seed(0)
    task = CIONTask(small_cfg("model.arch=test_resnet", f"optim.koleo={w}"))
    dino = plain(views, k)
    assert plain.last_terms[1] == 0 and torch.allclose(plain.last_terms[0], dino.detach())
    loss = task(views, k)
    assert torch.allclose(task.last_terms[0], dino.detach(), atol=1e-6)
    feats = task.student.backbone(torch.cat(views[:2]))  # as the wrapper runs it: both global views at once
    koleo = (koleo_loss(feats[:b], k) + koleo_loss(feats[b:], k)) / 2
    assert torch.allclose(task.last_terms[1], koleo.detach(), atol=1e-5)
    assert torch.allclose(loss, dino + w * koleo, atol=1e-5)
    # the KoLeo term reaches the student's gradients
    loss.backward()
    dino.backward()
    grads = [(a.grad, c.grad) for a, c in zip(task.student.backbone.parameters(), plain.student.backbone.parameters())]
    assert any(not torch.allclose(a, c) for a, c in grads)
    # feature similarity: the teacher's backbone features of the first global view
    with torch.no_grad():
        t_feats = task.teacher.backbone(torch.cat(views[:2]))[:b]
    want = np.mean([F.cosine_similarity(t_feats[i], t_feats[j], dim=0).item()
                    for i in range(b) for j in range(b) if i != j])
    assert task.last_similarity.item() == pytest.approx(want, abs=1e-5)
    assert task.last_similarity.item() != pytest.approx(mean_pairwise_cosine(t_feats[:b // 2]).item(), abs=1e-4)


# ---------------------------------------------------------------- teacher temperature warm-up


def test_teacher_temp_schedule_closed_form():
    s = teacher_temp_schedule(0.01, 0.04, warmup_epochs=2, epochs=5, iters_per_epoch=3)
    assert len(s) == 15
    assert np.allclose(s[:6], 0.01 + 0.03 * np.arange(6) / 5) and np.all(s[6:] == 0.04)
    assert np.all(teacher_temp_schedule(0.01, 0.04, 0, 4, 3) == 0.04)
    clipped = teacher_temp_schedule(0.01, 0.04, warmup_epochs=10, epochs=3, iters_per_epoch=2)
    assert len(clipped) == 6 and np.allclose(clipped, np.linspace(0.01, 0.04, 6))


def test_loop_passes_the_teacher_temperature_of_each_iteration(tmp_path, monkeypatch):
    from cion_ray.pretrain.loop import LocalContext, train

    seen = []
    forward = IdentityDINOLoss.forward

    def recording(self, student_out, teacher_out, k, teacher_temp=None):
        seen.append(teacher_temp)
        return forward(self, student_out, teacher_out, k, teacher_temp)

    monkeypatch.setattr(IdentityDINOLoss, "forward", recording)
    ctx = LocalContext()
    cfg = small_cfg(f"data={_cion_al(tmp_path)}", "model.arch=test_resnet", "optim.batch_per_worker=8",
                    "optim.k_schedule=0:2", "optim.epochs=2", "optim.iters_per_epoch=2",
                    "optim.warmup_teacher_temp=0.01", "optim.teacher_temp=0.04",
                    "optim.warmup_teacher_temp_epochs=5",  # longer than the run: clipped to its 4 iterations
                    "optim.centering=sinkhorn", "optim.koleo=0.1", "model.head_bn=true")  # the other options too
    train(cfg, ctx, log=lambda s: None)
    want = [0.01, 0.02, 0.03, 0.04]
    assert seen == pytest.approx(want)
    assert [m["teacher_temp"] for m in ctx.metrics] == pytest.approx([0.02, 0.04])
    for m in ctx.metrics:
        assert math.isfinite(m["loss"]) and m["koleo"] != 0 and math.isfinite(m["koleo"])
        assert -1 <= m["feature_similarity"] <= 1
        # Sinkhorn targets spread the batch over the dimensions: the batch-mean target is near uniform
        assert m["teacher_mean_entropy"] > 0.9 * math.log(256), m


# ---------------------------------------------------------------- the head and the wrapper


def test_head_bn_after_both_hidden_layers_only():
    from cion_ray.pretrain.head import DINOHead

    h = DINOHead(32, out_dim=100, hidden_dim=64, bottleneck_dim=16, use_bn=True)
    kinds = [type(m) for m in h.mlp]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.GELU, nn.Linear, nn.BatchNorm1d, nn.GELU, nn.Linear]
    assert h.mlp[1].num_features == h.mlp[4].num_features == 64 and h.mlp[6].out_features == 16
    assert h(torch.randn(4, 32)).shape == (4, 100)


def test_head_without_bn_keeps_the_released_names():
    from cion_ray.pretrain.head import DINOHead

    h = DINOHead(32, out_dim=100, hidden_dim=64, bottleneck_dim=16, norm_last_layer=False)
    g = torch.Generator().manual_seed(10)
    shapes = {"mlp.0.weight": (64, 32), "mlp.0.bias": (64,), "mlp.2.weight": (64, 64), "mlp.2.bias": (64,),
              "mlp.4.weight": (16, 64), "mlp.4.bias": (16,), "last_layer.weight_g": (100, 1),
              "last_layer.weight_v": (100, 16)}
    released = {name: torch.randn(*shape, generator=g) for name, shape in shapes.items()}
    h.load_state_dict(released, strict=True)  # the layout of a released CION checkpoint's head
    x = torch.randn(3, 32, generator=g)
    r = released
    z = F.linear(F.gelu(F.linear(F.gelu(F.linear(x, r["mlp.0.weight"], r["mlp.0.bias"])),
                                 r["mlp.2.weight"], r["mlp.2.bias"])), r["mlp.4.weight"], r["mlp.4.bias"])
    w = r["last_layer.weight_g"] * r["last_layer.weight_v"] / r["last_layer.weight_v"].norm(dim=1, keepdim=True)
    assert torch.allclose(h(x), F.normalize(z, dim=-1) @ w.T, atol=1e-5)


def test_model_head_bn_reaches_student_and_teacher():
    from cion_ray.pretrain.task import CIONTask

    def bns(m):
        return sum(isinstance(x, nn.BatchNorm1d) for x in m.modules())

    task = CIONTask(small_cfg("model.arch=test_resnet", "model.head_bn=true"))
    assert bns(task.student.head) == bns(task.teacher.head) == 2
    plain = CIONTask(small_cfg("model.arch=test_resnet"))
    assert bns(plain.student.head) == bns(plain.teacher.head) == 0


def test_wrapper_returns_the_backbone_features_view_major():
    from cion_ray.pretrain.head import DINOHead, MultiCropWrapper
    from cion_ray.zoo.factory import create_backbone, feature_dim

    torch.manual_seed(0)
    backbone = create_backbone("test_resnet")
    head = DINOHead(feature_dim(backbone, (64, 32)), out_dim=50, hidden_dim=32, bottleneck_dim=8)
    wrapper = MultiCropWrapper(backbone, head).eval()  # eval: BN a per-row map, batching cannot matter
    views = small_views(3, torch.Generator().manual_seed(11))
    for order in (views, [views[2], views[0], views[3], views[1]]):  # runs of one size, and interleaved
        with torch.no_grad():
            out, feats = wrapper(order, return_features=True)
            want = torch.cat([backbone(v) for v in order])
            assert torch.allclose(feats, want, atol=1e-5)
            assert torch.allclose(out, head(want), atol=1e-5)
            assert torch.equal(wrapper(order), out)


# ---------------------------------------------------------------- views


def test_blur_radius_scales_with_the_view_height():
    from cion_ray.pretrain.views import blur_radius

    released = ViewsConfig()
    assert blur_radius(released, "global") == pytest.approx((0.1, 2.0))
    assert blur_radius(released, "local") == pytest.approx((0.1, 2.0))
    small = ViewsConfig(global_size=(64, 32), local_size=(32, 16))
    assert blur_radius(small, "global") == pytest.approx((0.025, 0.5))
    assert blur_radius(small, "local") == pytest.approx((0.025, 0.5))
    mixed = ViewsConfig(global_size=(128, 64), local_size=(128, 64), blur_radius=(0.2, 4.0))
    assert blur_radius(mixed, "global") == pytest.approx((0.1, 2.0))
    assert blur_radius(mixed, "local") == pytest.approx((0.2, 4.0))


def blurs(pipeline):
    from cion_ray.pretrain.views import RandomBlur

    return [(t.p, t.radius) for t in pipeline.transforms if isinstance(t, RandomBlur)]


def test_views_config_reaches_the_blur_transforms():
    from cion_ray.pretrain.views import MultiCropViews

    v = MultiCropViews(ViewsConfig(global_size=(64, 32), local_size=(32, 16), blur_p=(0.3, 0.2, 0.1)))
    assert blurs(v.global1) == [(0.3, pytest.approx((0.025, 0.5)))]
    assert blurs(v.global2) == [(0.2, pytest.approx((0.025, 0.5)))]
    assert blurs(v.local) == [(0.1, pytest.approx((0.025, 0.5)))]


def person_image(seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (128, 64, 3), dtype=np.uint8))  # width / height 0.5


@pytest.mark.parametrize("colour", [["views.colour_p=0"], ["views.colour_p=1", "views.colour_jitter=0,0,0,0"]])
def test_views_without_photometric_augmentation_are_the_resized_image(colour):
    """Every probability 0 (or no jitter strength) and crops of the whole image (scale 1 at the
    image's own aspect ratio): each view is the image resized to the view size, or its mirror."""
    from torchvision.transforms import functional as TF

    from cion_ray.io.images import MEAN, STD
    from cion_ray.pretrain.views import MultiCropViews

    cfg = load_config(PretrainConfig, None, SMALL_VIEWS + colour + [
        "views.grayscale_p=0", "views.blur_p=0,0,0", "views.solarize_p=0",
        "views.global_scale=1,1", "views.local_scale=1,1", "views.ratio=0.5,0.5"]).views
    views = MultiCropViews(cfg)

    def resized(img, size):
        t = TF.to_tensor(TF.resize(img, list(size), interpolation=TF.InterpolationMode.BICUBIC))
        return TF.normalize(t, MEAN, STD)

    random.seed(0)
    torch.manual_seed(0)
    for seed in range(16):  # solarize (0.2 by default) would touch some of them
        img = person_image(seed)
        out = views(img)
        want = [resized(img, cfg.global_size)] * 2 + [resized(img, cfg.local_size)] * cfg.local_crops
        for v, w in zip(out, want):
            assert torch.allclose(v, w, atol=1e-6) or torch.allclose(v, w.flip(-1), atol=1e-6)


SMALL_VIEWS = ["views.global_size=64,32", "views.local_size=32,16", "views.local_crops=2"]


def test_grayscale_p_1_makes_every_view_gray():
    from cion_ray.io.images import MEAN, STD
    from cion_ray.pretrain.views import MultiCropViews

    views = MultiCropViews(load_config(PretrainConfig, None, SMALL_VIEWS + ["views.grayscale_p=1"]).views)
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    random.seed(0)
    torch.manual_seed(0)
    for seed in range(3):
        for v in views(person_image(seed)):
            rgb = v * std + mean
            assert torch.allclose(rgb[0], rgb[1], atol=1e-5) and torch.allclose(rgb[1], rgb[2], atol=1e-5)


@pytest.mark.parametrize("bad", ["views.colour_p=1.5", "views.grayscale_p=-0.1", "views.solarize_p=2",
                                 "views.blur_p=0,0,1.1", "views.colour_jitter=0.4,0.4,0.2",
                                 "views.blur_p=1,0.1", "views.blur_radius=0.1,2,3"])
def test_bad_views_settings_are_config_errors(bad):
    with pytest.raises(ConfigError, match="views"):
        load_config(PretrainConfig, None, [bad])


# ---------------------------------------------------------------- config checks and the small profile


def test_a_run_shorter_than_its_warm_up_warms_up_over_what_it_has():
    assert small_cfg("optim.epochs=1").optim.warmup_epochs == 0
    assert small_cfg("optim.epochs=3", "optim.warmup_epochs=10").optim.warmup_epochs == 2


@pytest.mark.parametrize("bad", ["optim.centering=ema", "optim.teacher_temp=0", "optim.student_temp=-0.1",
                                 "optim.warmup_teacher_temp=0", "optim.sinkhorn_iters=0", "optim.koleo=-0.1",
                                 "optim.warmup_teacher_temp_epochs=-1"])
def test_bad_optim_settings_are_config_errors(bad):
    with pytest.raises(ConfigError, match="optim"):
        load_config(PretrainConfig, None, [bad])


def test_good_optim_settings_load():
    o = load_config(PretrainConfig, None, ["optim.centering=sinkhorn", "optim.sinkhorn_iters=1", "optim.koleo=0",
                                           "optim.warmup_teacher_temp_epochs=0"]).optim
    assert (o.centering, o.sinkhorn_iters, o.koleo) == ("sinkhorn", 1, 0)


def test_gt_labels_and_gt_go_together():
    with pytest.raises(ConfigError, match="labels=gt"):
        load_config(PretrainConfig, None, ["labels=gt"])
    with pytest.raises(ConfigError, match="labels=gt"):
        load_config(PretrainConfig, None, ["gt=runs/world"])
    cfg = load_config(PretrainConfig, None, ["labels=gt", "gt=runs/world"])
    assert (cfg.labels, cfg.gt) == ("gt", "runs/world")


def test_small_profile_is_what_its_notes_say():
    """configs/small.yaml explains each way it departs from the released recipe; check them."""
    from cion_ray.pretrain.task import CIONTask

    cfg = load_config(PretrainConfig, ROOT / "configs" / "small.yaml")
    assert cfg.model.head_bn is True and cfg.optim.centering == "sinkhorn"
    assert cfg.optim.teacher_temp == 0.02 and cfg.optim.momentum_teacher == 0.95
    assert cfg.model.arch == "resnet18" and cfg.optim.k_schedule == "0:4"
    assert (cfg.scale.workers, cfg.optim.batch_per_worker) == (1, 64)  # BatchNorm over the whole batch
    released = PretrainConfig()
    assert not released.model.head_bn and released.optim.centering == "center"  # the defaults stay released
    task = CIONTask(cfg)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in task.student.head.modules()) == 2
    assert task.loss.centering == "sinkhorn"
