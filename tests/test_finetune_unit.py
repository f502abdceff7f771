"""Fine-tuning without Ray: the losses against hand-worked values and loop references, label
smoothing, the BNNeck, schedules, seeded augmentation, nested identity fractions, P x K batches
and their resumption, the config, exports and the protocol table and plot."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cion_ray.config import load_config
from cion_ray.errors import CionError, ConfigError
from cion_ray.finetune.config import FinetuneConfig
from cion_ray.finetune.losses import batch_hard_triplet, euclidean_distances, label_smoothing_cross_entropy, reid_loss

# ---------------------------------------------------------------- losses


def test_label_smoothing_by_hand():
    # C = 2, logits (ln 2, 0): p = (2/3, 1/3); target 0
    logits = torch.tensor([[math.log(2.0), 0.0]])
    y = torch.tensor([0])
    nll, uniform = math.log(1.5), (math.log(1.5) + math.log(3.0)) / 2
    assert label_smoothing_cross_entropy(logits, y, 0.0).item() == pytest.approx(nll, abs=1e-6)
    assert label_smoothing_cross_entropy(logits, y, 0.1).item() == pytest.approx(0.9 * nll + 0.1 * uniform, abs=1e-6)
    # uniform logits: every target distribution costs ln C
    assert label_smoothing_cross_entropy(torch.zeros(3, 5), torch.tensor([0, 2, 4]), 0.3).item() == \
        pytest.approx(math.log(5), abs=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_label_smoothing_equals_the_smoothed_target_cross_entropy(eps):
    g = torch.Generator().manual_seed(3)
    logits, y = torch.randn(7, 11, generator=g), torch.randint(0, 11, (7,), generator=g)
    q = torch.full((7, 11), eps / 11)
    q[torch.arange(7), y] += 1 - eps  # (1 - eps) one-hot + eps / C
    want = -(q * F.log_softmax(logits, 1)).sum(1).mean()
    got = label_smoothing_cross_entropy(logits, y, eps)
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(got, F.cross_entropy(logits, y, label_smoothing=eps), atol=1e-6)


def triplet_by_loops(feats, labels, margin, soft):
    terms, correct = [], 0
    n = len(labels)
    for a in range(n):
        pos = [torch.dist(feats[a], feats[j]) for j in range(n) if j != a and labels[j] == labels[a]]
        neg = [torch.dist(feats[a], feats[j]) for j in range(n) if labels[j] != labels[a]]
        if not pos or not neg:
            continue
        ap, an = max(pos), min(neg)
        terms.append(F.softplus(ap - an) if soft else torch.clamp(ap - an + margin, min=0))
        correct += int(an > ap)
    return sum(terms) / len(terms), correct / len(terms)


def test_triplet_by_hand():
    # 1-D: identity a at 0 and 2, identity b at 1 -> both a anchors: d_ap 2, d_an 1; b has no positive
    feats, labels = torch.tensor([[0.0], [2.0], [1.0]]), torch.tensor([0, 0, 1])
    loss, acc = batch_hard_triplet(feats, labels, margin=0.3)
    assert loss.item() == pytest.approx(1.3, abs=1e-5) and acc.item() == 0.0
    soft, _ = batch_hard_triplet(feats, labels, soft_margin=True)
    assert soft.item() == pytest.approx(math.log(1 + math.e), abs=1e-5)
    # well separated: no loss, every anchor right
    loss, acc = batch_hard_triplet(torch.tensor([[0.0], [0.1], [5.0], [5.2]]), torch.tensor([0, 0, 1, 1]))
    assert loss.item() == 0.0 and acc.item() == 1.0


@pytest.mark.parametrize("soft", [False, True])
def test_triplet_equals_the_loop_reference(soft):
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(12, 6, generator=g)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4])  # identity 4: no positive, left out
    loss, acc = batch_hard_triplet(feats, labels, 0.3, soft)
    want, want_acc = triplet_by_loops(feats, labels, 0.3, soft)
    assert torch.allclose(loss, want, atol=1e-5) and acc.item() == pytest.approx(want_acc)
    off = ~torch.eye(12, dtype=torch.bool)  # the diagonal is 0 up to float cancellation
    assert torch.allclose(euclidean_distances(feats)[off], torch.cdist(feats, feats)[off], atol=1e-4)


def test_triplet_gradient_is_finite_on_identical_features_and_empty_batches_give_zero():
    feats = torch.ones(4, 3, requires_grad=True)
    loss, _ = batch_hard_triplet(feats, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert torch.isfinite(feats.grad).all() and loss.item() == pytest.approx(0.3, abs=1e-5)
    alone = torch.randn(3, 2, requires_grad=True)
    loss, _ = batch_hard_triplet(alone, torch.tensor([0, 1, 2]))  # no positives at all
    assert loss.item() == 0.0 and loss.requires_grad


def test_reid_loss_sums_its_parts_and_id_only_drops_the_triplet():
    g = torch.Generator().manual_seed(1)
    feats, logits, y = torch.randn(8, 4, generator=g), torch.randn(8, 3, generator=g), torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    total, parts = reid_loss(feats, logits, y, 0.1, 0.3, False, 1.0, 2.0)
    assert torch.allclose(total, parts["id"] + 2.0 * parts["triplet"])
    total, parts = reid_loss(feats, logits, y, 0.1, 0.3, False, 1.0, 0.0)
    assert torch.allclose(total, label_smoothing_cross_entropy(logits, y, 0.1)) and parts["triplet"].item() == 0


# ---------------------------------------------------------------- the BNNeck model


def test_bnneck_shapes_frozen_bias_and_retrieval_feature():
    from cion_ray.finetune.model import build_reid_model
    from cion_ray.finetune.optim import build_optimizer

    cfg = load_config(FinetuneConfig, None, ["optim.lr=0.1"])
    model = build_reid_model("test_resnet", 5, (32, 16), log=lambda m: None)
    d = model.feat_dim
    x = torch.randn(6, 3, 32, 16)
    feat, logits = model.train()(x)
    assert feat.shape == (6, d) and logits.shape == (6, 5)
    assert model.classifier.bias is None and not model.neck.bias.requires_grad
    opt = build_optimizer(model, cfg.optim)
    assert all(p is not model.neck.bias for g in opt.param_groups for p in g["params"])
    logits.sum().backward()
    opt.step()
    assert torch.equal(model.neck.bias, torch.zeros(d))
    model.eval()
    with torch.no_grad():
        f = model.backbone(x)
        after = model(x)
        want = (f - model.neck.running_mean) / torch.sqrt(model.neck.running_var + model.neck.eps) * model.neck.weight
        assert after.shape == (6, d) and torch.allclose(after, want, atol=1e-4)
        model.neck_feat = "before"
        assert torch.allclose(model(x), f)


def test_plain_classifier_without_neck():
    from cion_ray.finetune.model import build_reid_model

    model = build_reid_model("test_resnet", 5, (32, 16), neck="none", log=lambda m: None)
    x = torch.randn(4, 3, 32, 16)
    feat, logits = model.train()(x)
    assert logits.shape == (4, 5) and model.classifier.bias is not None
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), model.backbone(x))
    with pytest.raises(ConfigError, match="model.neck"):
        load_config(FinetuneConfig, None, ["model.neck=mlp"])


def test_same_seed_same_model_and_weights_from_a_checkpoint(tmp_path):
    from cion_ray.finetune.model import build_reid_model
    from cion_ray.zoo.factory import create_backbone

    a = build_reid_model("test_resnet", 4, (32, 16), seed=3, log=lambda m: None)
    b = build_reid_model("test_resnet", 4, (32, 16), seed=3, log=lambda m: None)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    src = create_backbone("test_resnet")
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "w.pth")
    c = build_reid_model("test_resnet", 4, (32, 16), weights=str(tmp_path / "w.pth"), log=lambda m: None)
    assert all(torch.equal(v, c.backbone.state_dict()[k]) for k, v in src.state_dict().items())
    with pytest.raises(CionError, match="do not fit"):
        build_reid_model("test_resnet_ibn", 4, (32, 16), weights=str(tmp_path / "w.pth"), log=lambda m: None)


# ---------------------------------------------------------------- schedule and augmentation


def test_step_and_cosine_schedules():
    from cion_ray.finetune.optim import lr_schedule

    o = load_config(FinetuneConfig, None, ["optim.lr=1.0", "optim.warmup=0.1", "optim.warmup_start=0.1",
                                           "optim.milestones=0.5,0.75", "optim.gamma=0.1"]).optim
    s = lr_schedule(o, 20)
    assert len(s) == 20 and np.allclose(s[:2], [0.1, 1.0])
    assert np.allclose(s[2:10], 1.0) and np.allclose(s[10:15], 0.1) and np.allclose(s[15:], 0.01)
    o = load_config(FinetuneConfig, None, ["optim.lr=1.0", "optim.schedule=cosine", "optim.warmup=0",
                                           "optim.min_lr=0"]).optim
    c = lr_schedule(o, 10)
    assert c[0] == pytest.approx(1.0) and np.all(np.diff(c) < 0) and c[-1] == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 9 / 10)))
    assert len(lr_schedule(o, 1)) == 1


def test_augmentation_is_a_function_of_its_seed():
    from cion_ray.finetune.augment import TrainTransform, random_erasing
    from cion_ray.finetune.config import AugmentConfig

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 20, 3), dtype=np.uint8))
    t = TrainTransform(AugmentConfig(size=(32, 16)))
    a, b = t(img, np.random.default_rng([1, 2])), t(img, np.random.default_rng([1, 2]))
    assert a.shape == (3, 32, 16) and torch.equal(a, b)
    assert not torch.equal(a, t(img, np.random.default_rng([1, 3])))
    plain = TrainTransform(AugmentConfig(size=(32, 16), flip=0, pad=0, erasing=0))
    flipped = TrainTransform(AugmentConfig(size=(32, 16), flip=1, pad=0, erasing=0))
    rng = np.random.default_rng
    assert torch.allclose(flipped(img, rng(0)), plain(img, rng(0)).flip(-1))
    x = torch.ones(3, 32, 16)
    random_erasing(x, rng(4), (0.1, 0.2), 0.3)
    erased = (x == 0).all(0).sum().item()
    assert 0.05 * 512 <= erased <= 0.25 * 512


# ---------------------------------------------------------------- data: fractions, P x K batches


@pytest.fixture(scope="module")
def market_folder(tmp_path_factory):
    """20 identities x 3 images of plain colours, Market-style names, plus junk and a distractor."""
    root = tmp_path_factory.mktemp("market") / "bounding_box_train"
    root.mkdir()
    rng = np.random.default_rng(0)
    for pid in range(1, 21):
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (16, 8, 3), dtype=np.uint8)).save(
                root / f"{pid * 7:04d}_c{i + 1}s1_{i:06d}_01.jpg")
    for name in ("-1_c1s1_000001_01.jpg", "0000_c1s1_000002_01.jpg"):
        Image.new("RGB", (8, 16)).save(root / name)
    return root.parent


def test_nested_fractions_of_identities(market_folder):
    from cion_ray.finetune.data import load_train_set

    sets = {f: load_train_set(str(market_folder), f, seed=4) for f in (0.1, 0.25, 0.5, 1.0)}
    ids = {f: set(s.pids.tolist()) for f, s in sets.items()}
    assert [len(ids[f]) for f in (0.1, 0.25, 0.5, 1.0)] == [2, 5, 10, 20]
    assert ids[0.1] <= ids[0.25] <= ids[0.5] <= ids[1.0]
    assert 0 not in ids[1.0] and -1 not in ids[1.0]  # distractors and junk are never trained on
    for s in sets.values():
        assert sorted(set(s.labels.tolist())) == list(range(s.num_classes)) and len(s.files) == 3 * s.num_classes
    assert ids[0.25] == set(load_train_set(str(market_folder), 0.25, seed=4).pids.tolist())
    assert ids[0.25] != set(load_train_set(str(market_folder), 0.25, seed=5).pids.tolist())
    # the folder itself and its parent name the same images
    assert load_train_set(str(market_folder / "bounding_box_train")).files == sets[1.0].files


def test_a_curated_output_trains_on_its_market_export(market_folder, tmp_path):
    import shutil

    from cion_ray.finetune.data import load_train_set

    export = tmp_path / "curated" / "market" / "bounding_box_train"
    shutil.copytree(market_folder / "bounding_box_train", export)
    (tmp_path / "curated" / "cion_al.json").write_text("[]")  # other exports beside it are not read
    s = load_train_set(str(tmp_path / "curated"))
    assert s.source == str(export) and s.num_classes == 20 and len(s.files) == 60
    with pytest.raises(CionError, match="not found"):
        load_train_set(str(tmp_path / "nowhere"))


def test_step_batches_are_p_by_k_and_resume_where_they_stopped():
    from cion_ray.finetune.data import StepBatches
    from cion_ray.pretrain.sampler import IdentitySampler

    labels = np.repeat(np.arange(6), 5)
    sampler = IdentitySampler(labels, 3 * 2, seed=1)
    full = list(StepBatches(sampler, 2, ipe=4, start=0, total=10, seed=1, rank=0))
    assert len(full) == 10
    for b in full:
        idx = [i for i, _ in b]
        assert len(idx) == 6 and all(labels[idx[2 * p]] == labels[idx[2 * p + 1]] for p in range(3))
        assert len({labels[i] for i in idx}) == 3
    assert full[3][0][1] == (1, 0, 3, 0)  # (seed, rank, iteration, position): the augmentation seed
    assert list(StepBatches(sampler, 2, ipe=4, start=6, total=10, seed=1, rank=0)) == full[6:]


def test_p_is_lowered_to_what_every_worker_holds():
    from cion_ray.finetune.data import shared_identities_per_batch

    pids = np.repeat(np.arange(7), 2)
    assert shared_identities_per_batch(pids, 16, 1, 0) == 7
    assert shared_identities_per_batch(pids, 16, 2, 0) == 3
    assert shared_identities_per_batch(pids, 2, 2, 0) == 2
    with pytest.raises(CionError, match="at least 2"):
        shared_identities_per_batch(pids, 16, 4, 0)


# ---------------------------------------------------------------- config, exports, protocol


def test_config_overrides_and_checks():
    cfg = load_config(FinetuneConfig, None, ["optim.steps=200", "augment.size=64,32", "loss.triplet_weight=0"])
    assert cfg.optim.steps == 200 and cfg.augment.size == (64, 32) and cfg.augment.pad_pixels == 2
    assert load_config(FinetuneConfig).augment.pad_pixels == 10
    for bad, match in (("optim.nope=1", "unknown key"), ("optim.schedule=linear", "step or cosine"),
                       ("optim.identities_per_batch=1", "identities_per_batch >= 2"),
                       ("loss.label_smoothing=1", "label_smoothing"), ("fractions=0,0.5", "fractions"),
                       ("optim.milestones=0.7,0.3", "milestones")):
        with pytest.raises(ConfigError, match=match):
            load_config(FinetuneConfig, None, [bad])


def test_exports_load_back(tmp_path):
    from cion_ray.finetune.model import build_reid_model
    from cion_ray.finetune.optim import build_optimizer
    from cion_ray.finetune.outputs import checkpoint_state, load_finetuned, write_exports
    from cion_ray.zoo.checkpoints import load_backbone_state
    from cion_ray.zoo.factory import create_backbone

    cfg = load_config(FinetuneConfig, None, ["model.arch=test_resnet", "augment.size=32,16"])
    model = build_reid_model("test_resnet", 3, (32, 16), log=lambda m: None)
    model.train()(torch.randn(4, 3, 32, 16))  # move the BNNeck's running statistics
    state = checkpoint_state(cfg, model, build_optimizer(model, cfg.optim), 7, {"eval_mAP_init": 0.5})
    uris = write_exports(state, str(tmp_path / "export"))
    back = load_finetuned(uris["model.pth"])
    x = torch.randn(2, 3, 32, 16)
    with torch.no_grad():
        assert torch.allclose(back(x), model.eval()(x), atol=1e-5)
    plain = create_backbone("test_resnet")
    plain.load_state_dict(torch.load(uris["backbone.pth"], weights_only=True), strict=True)
    assert set(load_backbone_state(uris["model.pth"])) == set(plain.state_dict())
    with pytest.raises(CionError, match="not a cion-ray fine-tuned model"):
        load_finetuned(uris["backbone.pth"])


def test_protocol_table_and_plot(tmp_path):
    from cion_ray.finetune.protocol import parse_fractions, protocol_row, read_table, write_protocol

    assert parse_fractions("1,0.1, 0.25,0.5,0.25") == (0.1, 0.25, 0.5, 1.0)
    for bad in ("0,0.5", "1.5", "a,b", ""):
        with pytest.raises(CionError, match="--fractions"):
            parse_fractions(bad)
    rows = [protocol_row("r18 (random init)", f, {"identities": n, "eval_mAP": m, "eval_rank1": m + 0.1,
                                                  "eval_mAP_init": 0.3, "eval_rank1_init": 0.4, "step": 10})
            for f, n, m in ((0.25, 4, 0.4), (1.0, 16, 0.7))]
    other = [{**r, "label": "r18 (CION)", "mAP": r["mAP"] + 0.1} for r in rows]
    uris = write_protocol(rows, str(tmp_path), other)
    assert open(uris["protocol.png"], "rb").read()[:8] == b"\x89PNG\r\n\x1a\n"
    md = open(uris["protocol.md"]).read()
    assert "| r18 (random init) | 0.2500 | 25 | 4 |" in md and md.count("\n") == 4
    back = read_table(str(tmp_path))
    assert [(r["percent"], r["mAP"], r["identities"]) for r in back] == [(25.0, 0.4, 4.0), (100.0, 0.7, 16.0)]
    with pytest.raises(CionError, match="not found"):
        read_table(str(tmp_path / "nothing"))
