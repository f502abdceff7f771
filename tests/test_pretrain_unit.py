"""Pre-training without Ray: the loss against its formula, schedules against their closed forms,
the P x K sampler, the head, the ReIDZoo registry, exports, data sources, and the plain loop
(train, checkpoint, resume)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cion_ray.config import load_config
from cion_ray.errors import CionError, ConfigError
from cion_ray.pretrain.config import PretrainConfig
from cion_ray.pretrain.loss import IdentityDINOLoss, identity_dino_loss
from cion_ray.pretrain.sampler import IdentitySampler, shard_identities
from cion_ray.pretrain.schedules import cosine_schedule, k_at_epoch, k_start_epochs

# a small model and small views: the same code paths at a fraction of the cost
SMALL = ["model.arch=test_resnet_ibn", "model.out_dim=256", "model.hidden_dim=64", "model.bottleneck_dim=32",
         "views.local_crops=2", "views.global_size=64,32", "views.local_size=32,16", "scale.loader_workers=0"]


def small_cfg(*extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, None, SMALL + list(extra))


# ---------------------------------------------------------------- the loss


def loss_by_loops(student, teacher, center, k, n_views, st=0.1, tt=0.04, q=None):
    """The formula, term by term, with Python loops over rows and images. q: (2 B, D) teacher
    probabilities to use instead of softmax((teacher - center) / tt) (e.g. Sinkhorn targets)."""
    b = teacher.shape[0] // 2
    p = b // k
    s_views = [student[v * b:(v + 1) * b] for v in range(n_views)]
    t_views = [teacher[i * b:(i + 1) * b] for i in range(2)]
    terms = []
    for iq, t in enumerate(t_views):
        q_v = torch.softmax((t - center) / tt, dim=-1) if q is None else q[iq * b:(iq + 1) * b]
        for v, s in enumerate(s_views):
            if v == iq:
                continue
            logp = torch.log_softmax(s / st, dim=-1)
            same = sum(-(q_v[r] * logp[r]).sum() for r in range(b)) / b
            cross = 0.0
            for i in range(k):
                for j in range(k):
                    if i != j:  # image i's teacher output supervises image j of the same identity
                        cross = cross + sum(-(q_v[pp * k + i] * logp[pp * k + j]).sum() for pp in range(p)) / p
            terms.append((same + cross) / (k * (k - 1) + 1))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("k,n_views", [(1, 2), (1, 4), (2, 3), (3, 4), (4, 2)])
def test_loss_equals_the_formula(k, n_views):
    g = torch.Generator().manual_seed(k * 10 + n_views)
    p, d = 3, 17
    b = p * k
    student = torch.randn(n_views * b, d, generator=g)
    teacher = torch.randn(2 * b, d, generator=g)
    center = torch.randn(1, d, generator=g) * 0.1
    got = identity_dino_loss(student, teacher, center, k, n_views)
    want = loss_by_loops(student, teacher, center, k, n_views)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (got, want)


def test_k1_is_the_dino_loss():
    g = torch.Generator().manual_seed(0)
    n_views, b, d = 4, 6, 11
    student = torch.randn(n_views * b, d, generator=g)
    teacher = torch.randn(2 * b, d, generator=g)
    center = torch.randn(1, d, generator=g)
    # DINO: mean over (teacher view, other student view) of mean_rows CE
    q = F.softmax((teacher - center) / 0.04, dim=-1).chunk(2)
    s = (student / 0.1).chunk(n_views)
    dino, n = 0.0, 0
    for iq in range(2):
        for v in range(n_views):
            if v != iq:
                dino += torch.sum(-q[iq] * F.log_softmax(s[v], dim=-1), dim=-1).mean()
                n += 1
    assert torch.allclose(identity_dino_loss(student, teacher, center, 1, n_views), dino / n, atol=1e-6)


def test_loss_rejects_a_batch_that_is_not_p_by_k():
    with pytest.raises(ValueError, match="P x K"):
        identity_dino_loss(torch.randn(2 * 5, 4), torch.randn(2 * 5, 4), torch.zeros(1, 4), 2, 2)


def test_center_uses_the_injected_reduction():
    calls = []

    def all_reduce_sum(t):  # as if a second worker had produced the same batch
        calls.append(t.shape)
        return t * 2

    loss = IdentityDINOLoss(5, 2, all_reduce_sum=all_reduce_sum, world_size=2)
    teacher = torch.arange(20, dtype=torch.float32).view(4, 5)
    loss(torch.randn(4, 5), teacher, 1)
    assert calls == [torch.Size([1, 5])]
    # centre = 0.9 * 0 + 0.1 * (sum over both workers / (rows * workers)) = 0.1 * batch mean
    assert torch.allclose(loss.center, 0.1 * teacher.mean(0, keepdim=True))
    loss(torch.randn(4, 5), teacher, 1)
    assert torch.allclose(loss.center, (0.9 * 0.1 + 0.1) * teacher.mean(0, keepdim=True))


def kl_by_loops(student, teacher, center, k, n_views, st=0.1, tt=0.04):
    """The KL part of the loss written out: every CE term of the formula with CE -> KL."""
    b = teacher.shape[0] // 2
    p = b // k
    terms = []
    for iq in range(2):
        q = torch.softmax((teacher[iq * b:(iq + 1) * b] - center) / tt, dim=-1)
        for v in range(n_views):
            if v == iq:
                continue
            logp = torch.log_softmax(student[v * b:(v + 1) * b] / st, dim=-1)

            def kl(r, c):
                return (q[r] * (torch.log(q[r]) - logp[c])).sum()
            same = sum(kl(r, r) for r in range(b)) / b
            cross = sum(kl(pp * k + i, pp * k + j) for pp in range(p) for i in range(k) for j in range(k)
                        if i != j) / p
            terms.append((same + cross) / (k * (k - 1) + 1))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("k,n_views", [(1, 3), (2, 4), (3, 2)])
def test_loss_is_teacher_entropy_plus_kl(k, n_views):
    """Each teacher row weighs 1/B in total, so loss - mean teacher entropy is exactly the KL part;
    the loop reports both (metrics teacher_entropy, kl)."""
    from cion_ray.pretrain.loss import teacher_entropies

    g = torch.Generator().manual_seed(k + n_views)
    b, d = 2 * k, 13
    student = torch.randn(n_views * b, d, generator=g, dtype=torch.float64)
    teacher = torch.randn(2 * b, d, generator=g, dtype=torch.float64) * 0.05
    center = torch.randn(1, d, generator=g, dtype=torch.float64) * 0.01
    loss = identity_dino_loss(student.float(), teacher.float(), center.float(), k, n_views)
    row, _ = teacher_entropies(teacher, center)
    kl = kl_by_loops(student, teacher, center, k, n_views)
    assert torch.allclose(loss.double(), row + kl, atol=1e-4), (loss, row, kl)
    assert kl > 0


def test_teacher_entropies_tell_uniform_from_one_dimension():
    from cion_ray.pretrain.loss import teacher_entropies

    d = 64
    row, mean = teacher_entropies(torch.zeros(8, d), torch.zeros(1, d))  # uniform collapse
    assert torch.isclose(row, torch.tensor(math.log(d))) and torch.isclose(mean, torch.tensor(math.log(d)))
    one = torch.zeros(8, d)
    one[:, 3] = 1.0  # every image on one dimension
    row, mean = teacher_entropies(one, torch.zeros(1, d))
    assert row < 0.01 and mean < 0.01
    spread = torch.eye(d)[:8]  # each image on its own dimension: sharp rows, spread batch
    row, mean = teacher_entropies(spread, torch.zeros(1, d))
    assert row < 0.01 and torch.isclose(mean, torch.tensor(math.log(8)), atol=1e-3)


def test_training_lowers_the_loss_on_a_fixed_batch():
    """Gradients, optimizer and EMA teacher point the right way: with the centre settled, steps on
    one fixed batch reduce the loss."""
    from cion_ray.pretrain.task import CIONTask

    torch.manual_seed(0)
    task = CIONTask(small_cfg("model.out_dim=1024"))
    opt = torch.optim.AdamW(task.param_groups(), lr=1e-3, weight_decay=0.04)
    views = [torch.randn(16, 3, 64, 32) for _ in range(2)] + [torch.randn(16, 3, 32, 16) for _ in range(2)]
    with torch.no_grad():
        task.loss.center.copy_(task.teacher(views[:2]).mean(0, keepdim=True))
    losses = []
    for _ in range(25):
        loss = task(views, 4)
        opt.zero_grad()
        loss.backward()
        opt.step()
        task.update_teacher(0.996)
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < losses[0] - 0.3, losses


# ---------------------------------------------------------------- schedules


def test_cosine_schedule_closed_form():
    s = cosine_schedule(1.0, 0.1, epochs=5, iters_per_epoch=4, warmup_epochs=1, warmup_start=0.0)
    assert len(s) == 20
    assert np.allclose(s[:4], np.linspace(0, 1, 4))
    i = np.arange(16)
    assert np.allclose(s[4:], 0.1 + 0.45 * (1 + np.cos(np.pi * i / 16)))
    m = cosine_schedule(0.996, 1.0, 10, 3)
    assert m[0] == pytest.approx(0.996) and np.all(np.diff(m) >= 0) and m[-1] < 1.0


def test_gradual_k_released_and_scaled():
    steps = load_config(PretrainConfig, None, []).optim.k_steps
    assert k_start_epochs(steps, 100) == [(0, 2), (40, 4), (60, 6), (80, 8)]
    assert [k_at_epoch(steps, 100, e) for e in (0, 39, 40, 59, 60, 79, 80, 99)] == [2, 2, 4, 4, 6, 6, 8, 8]
    assert [k_at_epoch(steps, 10, e) for e in range(10)] == [2, 2, 2, 2, 4, 4, 6, 6, 8, 8]
    with pytest.raises(ConfigError):
        load_config(PretrainConfig, None, ["optim.k_schedule=0.5:2,0.2:4"])
    with pytest.raises(ConfigError):
        load_config(PretrainConfig, None, ["optim.k_schedule=two"])


# ---------------------------------------------------------------- sampler


def test_sampler_batches_are_contiguous_p_by_k_groups():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(30), rng.integers(1, 12, size=30))  # some identities have < K images
    s = IdentitySampler(labels, batch_size=24, seed=3)
    for k in (1, 2, 4, 6, 8):
        batches = s.batches(epoch=1, k=k, n=7)
        assert len(batches) == 7
        p = 24 // k
        for b in batches:
            assert len(b) == p * k
            ids = labels[np.asarray(b)].reshape(p, k)
            assert np.all(ids == ids[:, :1]), "each run of K rows is one identity"
            assert len(np.unique(ids[:, 0])) == p, "P distinct identities per batch"
    few = np.flatnonzero(np.bincount(labels) < 4)
    used = {labels[i] for b in s.batches(0, 4, 40) for i in b}
    assert set(few) & used, "identities with fewer than K images are still sampled (with replacement)"
    assert s.batches(2, 4, 5) == IdentitySampler(labels, 24, seed=3).batches(2, 4, 5)
    assert s.batches(2, 4, 5) != s.batches(3, 4, 5)


def test_sampler_needs_enough_identities():
    with pytest.raises(ValueError, match="distinct identities"):
        IdentitySampler(np.repeat(np.arange(3), 10), batch_size=16, seed=0).batches(0, 2, 1)


def test_identity_shards_are_disjoint_and_cover():
    labels = np.repeat(np.arange(50), 3)
    shards = [shard_identities(labels, 3, r, seed=1) for r in range(3)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(50))
    assert max(len(x) for x in shards) - min(len(x) for x in shards) <= 1


# ---------------------------------------------------------------- head and zoo


def test_head_shapes_and_frozen_norm():
    from cion_ray.pretrain.head import DINOHead, WeightNormLinear

    h = DINOHead(32, out_dim=100, hidden_dim=64, bottleneck_dim=16)
    assert h(torch.randn(5, 32)).shape == (5, 100)
    assert not h.last_layer.weight_g.requires_grad
    assert DINOHead(32, 100, 64, 16, norm_last_layer=False).last_layer.weight_g.requires_grad
    w = WeightNormLinear(6, 4)
    with torch.no_grad():
        w.weight_g.copy_(torch.rand(4, 1) + 0.5)
    x = torch.randn(3, 6)
    want = x @ (w.weight_g * w.weight_v / w.weight_v.norm(dim=1, keepdim=True)).T
    assert torch.allclose(w(x), want, atol=1e-6)


def test_registry_has_the_32_reidzoo_names():
    from cion_ray.zoo.registry import REIDZOO

    assert len(REIDZOO) == 32
    for family, n in (("vit_", 3), ("swin_", 3), ("convnext_", 3), ("edgenext_", 3), ("ghostnet_", 3),
                      ("repvit_", 3), ("fastvit_", 3), ("volo_", 3)):
        assert sum(x.startswith(family) for x in REIDZOO) == n, family
    assert {"resnet18", "resnet50", "resnet101", "resnet152", "resnet18_ibn", "resnet50_ibn",
            "resnet101_ibn", "resnet152_ibn"} <= set(REIDZOO)


def _zoo_params():
    from cion_ray.zoo.registry import REGISTRY

    return [pytest.param(n, marks=pytest.mark.slow) if e.large else n for n, e in REGISTRY.items()]


@pytest.mark.parametrize("name", _zoo_params())
def test_every_backbone_builds_and_runs_256x128(name):
    from cion_ray.zoo.factory import create_backbone, feature_dim
    from cion_ray.zoo.registry import REGISTRY

    m = create_backbone(name).eval()
    dim = feature_dim(m)
    with torch.no_grad():
        out = m(torch.randn(2, 3, 256, 128))
        assert out.shape == (2, dim) and torch.isfinite(out).all()
        if not REGISTRY[name].fixed_input:  # the local views of pre-training
            assert m(torch.randn(2, 3, 128, 64)).shape == (2, dim)


def test_resnet_ibn_a_structure():
    from torch import nn

    from cion_ray.zoo.factory import create_backbone
    from cion_ray.zoo.resnet import IBN

    m = create_backbone("resnet50_ibn").eval()
    for layer in ("layer1", "layer2", "layer3"):
        for block in getattr(m, layer):
            assert isinstance(block.bn1, IBN) and block.bn1.IN.affine
            assert block.bn1.IN.num_features == block.conv1.out_channels // 2
    assert all(isinstance(b.bn1, nn.BatchNorm2d) for b in m.layer4)
    keys = m.state_dict().keys()
    assert {"conv1.weight", "layer1.0.bn1.IN.weight", "layer1.0.bn1.BN.running_mean",
            "layer1.0.downsample.0.weight", "layer4.2.bn3.weight"} <= set(keys)
    # last stride 1: layer4 keeps layer3's 16 x 8 map at 256 x 128
    x = torch.randn(1, 3, 256, 128)
    with torch.no_grad():
        f3 = m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x)))))))
        assert f3.shape[-2:] == m.layer4(f3).shape[-2:] == (16, 8)


def test_unknown_backbone_is_a_clear_error():
    from cion_ray.zoo.factory import create_backbone

    with pytest.raises(CionError, match="unknown backbone 'resnet51'"):
        create_backbone("resnet51")


# ---------------------------------------------------------------- export


def test_export_round_trip_strict(tmp_path):
    from cion_ray.pretrain.export import strip_released_prefix, write_exports
    from cion_ray.pretrain.loop import checkpoint_state
    from cion_ray.pretrain.task import CIONTask
    from cion_ray.zoo.factory import create_backbone

    cfg = small_cfg()
    task = CIONTask(cfg)
    with torch.no_grad():
        for p in task.teacher.parameters():
            p.add_(torch.randn_like(p))
    opt = torch.optim.AdamW(task.param_groups())
    uris = write_exports(checkpoint_state(cfg, task, opt, None, 1, 1), str(tmp_path))
    released = torch.load(uris["teacher.pth"], map_location="cpu", weights_only=True)
    assert all(k.startswith("module.") for k in released["teacher"])
    fresh = create_backbone(cfg.model.arch)
    fresh.load_state_dict(strip_released_prefix(released["teacher"]), strict=True)
    for k, v in task.teacher.backbone.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    plain = create_backbone(cfg.model.arch)
    plain.load_state_dict(torch.load(uris["backbone.pth"], weights_only=True), strict=True)
    # and the curate stage's loader reads the released layout too
    from cion_ray.zoo.checkpoints import load_backbone_state

    assert set(load_backbone_state(uris["teacher.pth"])) == set(fresh.state_dict())


# ---------------------------------------------------------------- data sources


def _cion_al(tmp_path, n_ids=12, per_id=6):
    from PIL import Image

    rng = np.random.default_rng(0)
    entries = []
    (tmp_path / "img").mkdir()
    for pid in range(n_ids):
        for j in range(per_id):
            f = tmp_path / "img" / f"{pid:04d}_{j}.jpg"
            Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(f)
            entries.append({"file_path": f"img/{f.name}", "id": pid})
    (tmp_path / "cion_al.json").write_text(json.dumps(entries))
    return tmp_path / "cion_al.json"


def test_data_fraction_is_seeded_and_nested():
    from cion_ray.pretrain.data import select_identities

    ident = np.repeat(np.arange(200), 2)
    a = select_identities(ident, 0.25, seed=5)
    assert len(a) == 50 and np.array_equal(a, select_identities(ident, 0.25, seed=5))
    assert set(a) <= set(select_identities(ident, 0.5, seed=5))
    assert not np.array_equal(a, select_identities(ident, 0.25, seed=6))
    assert len(select_identities(ident, 1.0, 0)) == 200


def test_data_sources_and_their_errors(tmp_path):
    from cion_ray.pretrain.data import fetch_images, load_labels

    j = _cion_al(tmp_path)
    t = load_labels(str(j))
    assert t.kind == "files" and len(t.keys) == 72 and t.n_identities == 12
    imgs = fetch_images(t.subset(t.identity == 3))
    assert len(imgs) == 6 and all(b[:2] == b"\xff\xd8" for b in imgs)
    with pytest.raises(CionError, match="not found"):
        load_labels(str(tmp_path / "missing"))
    with pytest.raises(CionError, match="identities only"):
        load_labels(str(j), labels="tracklet")
    (tmp_path / "bad.json").write_text('[{"path": "x"}]')
    with pytest.raises(CionError, match="not a CION-AL JSON"):
        load_labels(str(tmp_path / "bad.json"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CionError, match="neither a curated output"):
        load_labels(str(tmp_path / "empty"))


# ---------------------------------------------------------------- the plain loop


def test_loop_trains_checkpoints_and_resumes_to_the_same_weights(tmp_path, tiny_world):
    """3 epochs straight == 2 epochs, stop, resume for the 3rd: same teacher, same centre. The
    straight run also evaluates the teacher on a Market-style split at every checkpoint, which
    must not change its training."""
    from cion_ray.pretrain.loop import LocalContext, train

    j = _cion_al(tmp_path)
    common = [f"data={j}", "optim.batch_per_worker=8", "optim.iters_per_epoch=2", "optim.warmup_epochs=1",
              "optim.k_schedule=0:2,0.5:4"]
    straight = LocalContext(tmp_path / "a")
    m = train(small_cfg(*common, "optim.epochs=3", f"eval_data={tiny_world / 'reid'}"), straight,
              log=lambda s: None)
    assert m["epoch"] == 3 and m["iteration"] == 6 and math.isfinite(m["loss"])
    assert [x["k"] for x in straight.metrics] == [2, 2, 4]  # K = 4 from round(0.5 * 3) = 2
    for x in straight.metrics:
        assert 0 < x["eval_mAP"] <= 1 and 0 <= x["eval_rank1"] <= 1 and 0 < x["eval_mINP"] <= 1
        assert x["eval_mAP_init"] == straight.metrics[0]["eval_mAP_init"]
        assert 0 < x["teacher_entropy"] <= math.log(256) and x["kl"] > 0 and x["teacher_mean_entropy"] > 0

    class StopAfter(LocalContext):
        def report(self, metrics, checkpoint):
            super().report(metrics, checkpoint)
            if metrics["epoch"] == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(small_cfg(*common, "optim.epochs=3"), StopAfter(tmp_path / "b"), log=lambda s: None)
    resumed = LocalContext(tmp_path / "b")
    train(small_cfg(*common, "optim.epochs=3"), resumed, log=lambda s: None)
    assert [x["epoch"] for x in resumed.metrics] == [3]
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert a["iteration"] == b["iteration"] == 6
    for k in a["teacher"]:
        assert torch.equal(a["teacher"][k], b["teacher"][k]), k
    assert torch.equal(a["loss"]["center"], b["loss"]["center"])
    init = small_cfg(*common)
    from cion_ray.pretrain.task import CIONTask

    torch.manual_seed(init.seed)
    fresh = CIONTask(init).teacher.state_dict()
    assert any(not torch.equal(fresh[k], a["teacher"][k]) for k in fresh if fresh[k].is_floating_point())


def test_multi_crop_views_shapes():
    from PIL import Image

    from cion_ray.pretrain.config import ViewsConfig
    from cion_ray.pretrain.views import MultiCropViews, decode_jpeg

    views = MultiCropViews(ViewsConfig(local_crops=3))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 90, 3), dtype=np.uint8))
    out = views(img)
    assert views.n_views == len(out) == 5
    assert [tuple(v.shape) for v in out] == [(3, 256, 128)] * 2 + [(3, 128, 64)] * 3
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in out)
    assert not torch.equal(out[2], out[3]), "local views are independent random crops"
    with pytest.raises(ValueError, match="crop-7: cannot decode"):
        decode_jpeg(b"not a jpeg", "crop-7")


def test_labels_are_canonical_whatever_order_and_numbers_the_data_was_written_in():
    """The same images and partition, written in another order under other identity numbers,
    give the same table: the same data and seed train the same run."""
    import numpy as np

    from cion_ray.pretrain.data import LabelTable, canonical

    keys = np.asarray(["v1/3/1", "v0/1/1", "v0/2/2", "v1/4/1", "v0/5/2"], dtype=object)
    ident = np.asarray([7, 3, 9, 7, 9])
    a = canonical(LabelTable("parquet", keys, ident, [], "a", ""))
    assert list(a.keys) == ["v0/1/1", "v0/2/2", "v0/5/2", "v1/3/1", "v1/4/1"]
    assert list(a.identity) == [0, 1, 1, 2, 2]
    perm = np.asarray([4, 2, 0, 3, 1])
    renumbered = np.asarray([{7: 40, 3: 2, 9: 12}[int(i)] for i in ident[perm]])
    b = canonical(LabelTable("parquet", keys[perm], renumbered, [], "b", ""))
    assert list(b.keys) == list(a.keys) and list(b.identity) == list(a.identity)


def test_epoch_log_puts_losses_and_retrieval_in_tensorboard_and_metrics_json(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cion_ray.pretrain.metrics import EpochLog

    log = EpochLog(str(tmp_path))
    log({"epoch": 1, "loss": 10.5, "k": 2, "val_mAP": 0.41, "val_rank1": 0.5})
    log({"epoch": 2, "loss": 10.1, "k": 4, "eval_mAP": 0.62, "eval_rank1": 0.7, "eval_mINP": 0.3,
         "val_mAP": 0.47, "val_rank1": 0.55})
    log.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"pretrain/loss", "pretrain/val_mAP", "pretrain/eval_mAP", "pretrain/eval_mINP"} <= tags
    assert [(e.step, round(e.value, 2)) for e in acc.Scalars("pretrain/val_mAP")] == [(1, 0.41), (2, 0.47)]
    assert [m["epoch"] for m in json.loads((tmp_path / "metrics.json").read_text())] == [1, 2]
