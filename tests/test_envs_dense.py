"""NYUv2 / Cityscapes benchmarks (MTAN .npy layout), their models, losses and metrics."""

from __future__ import annotations

import logging
import math
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import envs
import methods
from envs._dense import (
    DenseEvaluator,
    depth_loss,
    normal_loss,
    random_scale_crop_flip,
    segmentation_loss,
)
from envs.base import Forward
from envs.fixtures.dense import write_cityscapes, write_nyuv2
from envs.metrics import DepthErrors, NormalErrors, delta_m
from envs.models import DilatedResNet, ResNetASPP, SegNetMTAN
from envs.models.resnet_aspp import load_resnet50_weights

TINY = 1 / 16


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def nyu_root(tmp_path_factory) -> Path:
    return write_nyuv2(tmp_path_factory.mktemp("nyu"), n_train=7, n_test=5)


@pytest.fixture(scope="module")
def city_root(tmp_path_factory) -> Path:
    return write_cityscapes(tmp_path_factory.mktemp("city"), n_train=5, n_test=4,
                            label_dtype=np.int64)


def _copy(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    return dst


# ---------------------------------------------------------------------------------------
# registry, options, references
# ---------------------------------------------------------------------------------------


def test_registered():
    assert {"nyuv2", "cityscapes"} <= set(envs.available())


def test_protocol_defaults_follow_the_references():
    nyu = envs.create("nyuv2")
    p = nyu.protocol
    assert (p.optimizer, p.lr, p.weight_decay, p.lr_schedule, p.step_size, p.gamma) == (
        "adam", 1e-4, 0.0, "step", 100, 0.5)
    assert (p.batch_size, p.epochs, p.average_last, p.selection) == (2, 200, 10, "last")
    assert nyu.augment and nyu.metrics_mode == "per_batch" and not nyu.attention_shared
    assert envs.create("cityscapes").protocol.batch_size == 8
    r = envs.create("nyuv2", model="resnet50_aspp").protocol
    assert (r.batch_size, r.weight_decay, r.selection, r.average_last) == (8, 1e-5, "last", 10)
    rc = envs.create("cityscapes", model="resnet50_aspp")
    assert rc.protocol.batch_size == 64 and not rc.augment and rc.metrics_mode == "pooled"


@pytest.mark.parametrize("name", ["nyuv2", "cityscapes"])
@pytest.mark.parametrize("model", ["segnet_mtan", "resnet50_aspp"])
def test_stl_reference_matches_metric_names(name, model, tmp_path):
    cls = envs.get_class(name)
    ref = cls.protocols[model].stl_reference
    assert {t: [m.name for m in ms] for t, ms in cls.metrics.items()} == {
        t: list(v) for t, v in ref.items()}
    assert delta_m(ref, ref, cls.metrics) == 0.0
    # pinned values from the papers' tables (fractions / metres / degrees)
    if (name, model) == ("nyuv2", "segnet_mtan"):
        assert ref["segmentation"]["miou"] == 0.3830 and ref["normal"]["within_30"] == 0.6915
    if (name, model) == ("cityscapes", "segnet_mtan"):
        assert ref["depth"] == {"abs_err": 0.0125, "rel_err": 27.77}


def test_stl_reference_only_for_the_published_setting(tmp_path):
    full = write_nyuv2(tmp_path / "full", n_train=1, n_test=1, size=(288, 384))
    b = envs.create("nyuv2", root=full)
    assert b.stl_reference is not None and "CAGrad" in b.stl_reference_source
    # another metric mode, width or resolution: the published numbers do not apply
    assert envs.create("nyuv2", root=full, metrics_mode="pooled").stl_reference is None
    assert envs.create("nyuv2", root=full, width=0.5).stl_reference is None
    small = write_nyuv2(tmp_path / "small", n_train=1, n_test=1)
    assert envs.create("nyuv2", root=small).stl_reference is None
    # the DeepLab reference assumes an ImageNet-pretrained encoder
    assert envs.create("nyuv2", root=full, model="resnet50_aspp").stl_reference is None
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    assert envs.create("nyuv2", root=full, model="resnet50_aspp",
                       pretrained_path=weights).stl_reference is not None
    city = write_cityscapes(tmp_path / "c", n_train=1, n_test=1, size=(128, 256))
    assert envs.create("cityscapes", root=city).stl_reference is not None
    assert envs.create("cityscapes", root=city, num_classes=19).stl_reference is None


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("nyuv2", {"model": "unet"}, "model must be one of"),
        ("nyuv2", {"metrics_mode": "mean"}, "metrics_mode must be one of"),
        ("nyuv2", {"attention_shared": 1}, "attention_shared must be True or False"),
        ("nyuv2", {"model": "resnet50_aspp", "attention_shared": True}, "model='segnet_mtan' only"),
        ("nyuv2", {"pretrained_path": "/x.pth"}, "model='resnet50_aspp' only"),
        ("nyuv2", {"model": "resnet50_aspp", "pretrained_path": "/nonexistent.pth"}, "not a file"),
        ("nyuv2", {"width": 0}, "width must be"),
        ("nyuv2", {"val_size": -1}, "val_size must be"),
        ("nyuv2", {"num_classes": 7}, "unknown option"),
        ("cityscapes", {"num_classes": 13}, "num_classes must be one of"),
        ("cityscapes", {"augment": "yes"}, "augment must be True or False"),
    ],
)
def test_bad_options(name, options, match):
    with pytest.raises(ValueError, match=match):
        envs.create(name, **options)


# ---------------------------------------------------------------------------------------
# layout errors
# ---------------------------------------------------------------------------------------


def test_missing_root_and_no_root(tmp_path):
    with pytest.raises(ValueError, match=r"not a directory; expected layout:\n.*image,label,depth,normal"):
        envs.create("nyuv2", root=tmp_path / "nope")
    b = envs.create("nyuv2")
    with pytest.raises(ValueError, match="needs root=<directory>"):
        b.make_loader("train", 2)


def test_missing_split_and_folder(nyu_root, tmp_path):
    r = _copy(nyu_root, tmp_path)
    shutil.rmtree(r / "train" / "normal")
    with pytest.raises(ValueError, match=r"folder .*train/normal not found"):
        envs.create("nyuv2", root=r)
    shutil.rmtree(r / "val")
    shutil.copytree(nyu_root / "train" / "normal", r / "train" / "normal")
    with pytest.raises(ValueError, match=r"split folder .*/val not found; expected layout"):
        envs.create("nyuv2", root=r)


def test_mismatched_counts_and_gaps(nyu_root, tmp_path):
    r = _copy(nyu_root, tmp_path)
    (r / "train" / "depth" / "2.npy").unlink()
    with pytest.raises(ValueError, match=r"depth/2\.npy is missing: image/ has 7 files, depth/ has 6"):
        envs.create("nyuv2", root=r)
    r2 = _copy(nyu_root, tmp_path / "b")
    for folder in ("image", "label", "depth", "normal"):
        (r2 / "val" / folder / "1.npy").unlink()
    with pytest.raises(ValueError, match=r"1\.npy is missing: indices must be 0…3 without gaps"):
        envs.create("nyuv2", root=r2)


@pytest.mark.parametrize(
    "folder, array, match",
    [
        ("image", np.zeros((32, 32), np.float32), r"image/3\.npy: array of shape \(32, 32\)"),
        ("image", np.zeros((32, 32, 3), np.uint8), r"dtype uint8; expected \(H, W, 3\) float"),
        ("depth", np.zeros((32, 32), np.float32), r"depth/3\.npy.*expected \(H, W, 1\) float"),
        ("normal", np.zeros((32, 32, 3), np.float32)[:16], r"spatial size \(16, 32\) differs"),
        ("label", np.zeros((32, 32, 1), np.int64), r"label/3\.npy.*expected \(H, W\) integer"),
    ],
)
def test_wrong_array_shape_or_dtype(nyu_root, tmp_path, folder, array, match):
    r = _copy(nyu_root, tmp_path)
    np.save(r / "train" / folder / "3.npy", array)
    with pytest.raises(ValueError, match=match):
        envs.create("nyuv2", root=r)


def test_unreadable_file(nyu_root, tmp_path):
    r = _copy(nyu_root, tmp_path)
    (r / "train" / "image" / "0.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match=r"image/0\.npy: not a readable \.npy array"):
        envs.create("nyuv2", root=r)


def test_bad_label_values_raise_when_loaded(nyu_root, tmp_path):
    r = _copy(nyu_root, tmp_path)
    lab = np.zeros((32, 32), np.float32)
    lab[0, 0] = 13
    np.save(r / "val" / "label" / "0.npy", lab)
    lab2 = np.zeros((32, 32), np.float32)
    lab2[1, 1] = 0.5
    np.save(r / "val" / "label" / "1.npy", lab2)
    ds = envs.create("nyuv2", root=r, width=TINY).dataset("test")
    with pytest.raises(ValueError, match=r"label/0\.npy: label value 13 outside"):
        ds[0]
    with pytest.raises(ValueError, match=r"label/1\.npy: label values must be integers"):
        ds[1]


def test_segnet_needs_size_divisible_by_32(tmp_path):
    r = write_nyuv2(tmp_path / "odd", n_train=1, n_test=1, size=(40, 32))
    with pytest.raises(ValueError, match="divisible by 32"):
        envs.create("nyuv2", root=r)
    envs.create("nyuv2", root=r, model="resnet50_aspp")  # the ResNet takes any size


def test_cityscapes_label_folder_follows_num_classes(city_root, tmp_path):
    b19 = envs.create("cityscapes", root=city_root, num_classes=19, width=TINY)
    batch = next(iter(b19.make_loader("test", 4)))
    assert int(batch["segmentation"].max()) > 6  # read from label_19
    assert b19.build_model().heads["segmentation"][-1].out_channels == 19
    r = _copy(city_root, tmp_path)
    shutil.rmtree(r / "train" / "label_19")
    envs.create("cityscapes", root=r)  # 7 classes do not need label_19
    with pytest.raises(ValueError, match=r"label_19 not found; expected layout"):
        envs.create("cityscapes", root=r, num_classes=19)


def test_val_split(nyu_root):
    b = envs.create("nyuv2", root=nyu_root)
    with pytest.raises(ValueError, match="no validation split.*val_size"):
        b.make_loader("val", 2)
    bv = envs.create("nyuv2", root=nyu_root, val_size=2)
    assert bv.splits == ("train", "val", "test")
    tr, va = bv.split_indices("train"), bv.split_indices("val")
    assert len(va) == 2 and sorted(tr + va) == list(range(7))
    assert va == envs.create("nyuv2", root=nyu_root, val_size=2).split_indices("val")
    got = [int(i) for b_ in bv.make_loader("val", 1) for i in b_["index"]]
    assert got == va
    with pytest.raises(ValueError, match="leaves no training images"):
        envs.create("nyuv2", root=nyu_root, val_size=7)


# ---------------------------------------------------------------------------------------
# loaders
# ---------------------------------------------------------------------------------------


def test_nyuv2_batches_match_files(nyu_root):
    b = envs.create("nyuv2", root=nyu_root, augment=False)
    batch = next(iter(b.make_loader("test", 3)))
    assert set(batch) == {"image", "segmentation", "depth", "normal", "index"}
    assert batch["image"].shape == (3, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["segmentation"].shape == (3, 32, 32) and batch["segmentation"].dtype == torch.int64
    assert batch["depth"].shape == (3, 1, 32, 32) and batch["normal"].shape == (3, 3, 32, 32)
    assert batch["index"].tolist() == [0, 1, 2]
    for k, folder in (("image", "image"), ("depth", "depth"), ("normal", "normal")):
        disk = np.load(nyu_root / "val" / folder / "1.npy")
        assert torch.equal(batch[k][1], torch.from_numpy(disk).permute(2, 0, 1))
    lab = np.load(nyu_root / "val" / "label" / "1.npy")
    assert torch.equal(batch["segmentation"][1], torch.from_numpy(lab).long())
    assert int(batch["segmentation"].min()) == -1


def test_cityscapes_batches(city_root):
    b = envs.create("cityscapes", root=city_root)
    batch = next(iter(b.make_loader("test", 2)))
    assert set(batch) == {"image", "segmentation", "depth", "index"}
    assert int(batch["segmentation"].max()) <= 6 and batch["depth"].shape == (2, 1, 32, 32)
    disk = np.load(city_root / "val" / "depth" / "0.npy")
    assert torch.equal(batch["depth"][0], torch.from_numpy(disk).permute(2, 0, 1))


def _order(loader):
    return [int(i) for batch in loader for i in batch["index"]]


def test_seeded_shuffling(nyu_root):
    b = envs.create("nyuv2", root=nyu_root)
    ld = b.make_loader("train", 2, shuffle=True, seed=3)
    p0, p1 = _order(ld), _order(ld)
    assert sorted(p0) == sorted(p1) == list(range(7)) and p0 != p1
    again = b.make_loader("train", 2, shuffle=True, seed=3)
    assert _order(again) == p0
    again.set_epoch(1)
    assert _order(again) == p1
    assert _order(b.make_loader("train", 2, shuffle=True, seed=4)) != p0
    assert _order(b.make_loader("test", 2)) == list(range(5))


def test_sharding_equal_batches_and_global_equivalence(nyu_root):
    b = envs.create("nyuv2", root=nyu_root)
    single = [batch["index"].tolist() for batch in
              b.make_loader("train", 4, shuffle=True, seed=1, drop_last=True)]
    ranks = [[batch["index"].tolist() for batch in
              b.make_loader("train", 2, shuffle=True, seed=1, rank=r, world_size=2, drop_last=True)]
             for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 1
    for k, glob in enumerate(single):
        assert ranks[0][k] + ranks[1][k] == glob
        assert len(ranks[0][k]) == len(ranks[1][k]) == 2
    # every test sample exactly once over the ranks, counting each rank's real examples
    # (shard_sizes: rank 1's pad batch at the last step counts 0)
    seen = []
    for r in range(2):
        ld = b.make_loader("test", 2, rank=r, world_size=2)
        for k, batch in enumerate(ld):
            seen += batch["index"].tolist()[:ld.shard_sizes(k)[r]]
    assert sorted(seen) == list(range(5))
    with pytest.raises(ValueError, match="rank must be in"):
        b.make_loader("train", 2, rank=2, world_size=2)


def test_augmentation_is_seeded_per_sample(nyu_root):
    b = envs.create("nyuv2", root=nyu_root)  # segnet_mtan protocol: augmentation on
    assert b.augment
    ld = b.make_loader("train", 7, shuffle=False, seed=5)
    a0, a1 = next(iter(ld)), next(iter(ld))
    assert not torch.equal(a0["image"], a1["image"])  # new draws each pass
    ld.set_epoch(0)
    assert torch.equal(next(iter(ld))["image"], a0["image"])
    workers = b.make_loader("train", 3, shuffle=False, seed=5, num_workers=2)
    got = torch.cat([batch["image"] for batch in workers])
    assert torch.equal(got, a0["image"])  # independent of num_workers and batch size
    plain = next(iter(envs.create("nyuv2", root=nyu_root, augment=False).make_loader("train", 7)))
    test = next(iter(b.make_loader("test", 5)))
    assert not torch.equal(plain["image"], a0["image"])
    disk = torch.from_numpy(np.load(nyu_root / "val" / "image" / "0.npy")).permute(2, 0, 1)
    assert torch.equal(test["image"][0], disk)  # test split never augmented


def test_random_scale_crop_flip_geometry():
    H, W = 24, 40
    ramp = torch.arange(W, dtype=torch.float32).expand(H, W)
    n = torch.tensor([0.48, 0.6, 0.64])
    sample = {
        "image": torch.stack([ramp, ramp, ramp]),
        "segmentation": (ramp.long() % 5) - 1,
        "depth": torch.full((1, H, W), 3.0),
        "normal": n[:, None, None].expand(3, H, W).clone(),
        "index": torch.tensor(0),
    }
    seen = set()
    for k in range(40):
        out = random_scale_crop_flip(sample, torch.Generator().manual_seed(k))
        row = out["image"][0, 0]
        flipped = bool(row[0] > row[-1])
        w = int(abs(row[-1] - row[0]).round()) + 1  # align_corners=True keeps the crop ends
        s = {int(W / s_): s_ for s_ in (1.0, 1.2, 1.5)}[w]
        seen.add((s, flipped))
        assert torch.allclose(out["depth"], torch.full((1, H, W), 3.0 / s))
        sign = -1.0 if flipped else 1.0
        assert torch.allclose(out["normal"][0], torch.full((H, W), sign * 0.48))
        assert torch.allclose(out["normal"][1:], sample["normal"][1:])
        assert out["segmentation"].dtype == torch.int64
        assert set(out["segmentation"].unique().tolist()) <= set(range(-1, 4))
    assert len(seen) == 6  # every scale, with and without the flip


# ---------------------------------------------------------------------------------------
# losses and metrics
# ---------------------------------------------------------------------------------------


def test_losses_by_hand():
    g = torch.tensor([[[[2.0, 0.0], [1.0, 4.0]]]])
    p = torch.tensor([[[[1.0, 9.0], [1.5, 2.0]]]])
    assert torch.isclose(depth_loss(p, g), torch.tensor((1.0 + 0.5 + 2.0) / 3))
    assert depth_loss(p, torch.zeros_like(g)) == 0  # no valid pixel: 0, not NaN
    gn = torch.zeros(1, 3, 1, 2)
    gn[0, :, 0, 0] = torch.tensor([0.0, 0.0, 1.0])
    pn = F.normalize(torch.tensor([[[[1.0, 5.0]], [[0.0, 1.0]], [[1.0, 2.0]]]]), dim=1)
    assert torch.isclose(normal_loss(pn, gn), 1 - pn[0, 2, 0, 0])
    logits = torch.randn(1, 4, 2, 2)
    lab = torch.tensor([[[0, -1], [3, 2]]])
    lp = logits.log_softmax(1)
    want = -(lp[0, 0, 0, 0] + lp[0, 3, 1, 0] + lp[0, 2, 1, 1]) / 3
    assert torch.isclose(segmentation_loss(logits, lab), want)


def _predictions(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    seg = torch.randn(n, 13, 4, 4, generator=g)
    lab = torch.randint(-1, 13, (n, 4, 4), generator=g)
    dp = torch.rand(n, 1, 4, 4, generator=g) + 0.5
    dg = torch.rand(n, 1, 4, 4, generator=g) * (torch.rand(n, 1, 4, 4, generator=g) > 0.2)
    npred = F.normalize(torch.randn(n, 3, 4, 4, generator=g), dim=1)
    ngt = F.normalize(torch.randn(n, 3, 4, 4, generator=g), dim=1)
    return seg, lab, dp, dg, npred, ngt


def _feed(ev, data, bs):
    seg, lab, dp, dg, npred, ngt = data
    for s in range(0, seg.shape[0], bs):
        sl = slice(s, s + bs)
        fwd = Forward(torch.zeros(3), None, {"segmentation": seg[sl], "depth": dp[sl], "normal": npred[sl]})
        batch = {"segmentation": lab[sl], "depth": dg[sl], "normal": ngt[sl],
                 "index": torch.arange(seg.shape[0])[sl]}
        ev.update(fwd, batch)
    return ev.compute()


def test_per_batch_metrics_group_like_the_reference_regardless_of_loader_batch():
    data = _predictions(7)
    tasks = ("segmentation", "depth", "normal")
    res = {bs: _feed(DenseEvaluator(tasks, 13, "per_batch", 2), data, bs) for bs in (1, 2, 3, 7)}
    for bs in (1, 3, 7):
        for t in tasks:
            for k, v in res[2][t].items():
                assert math.isclose(res[bs][t][k], v, rel_tol=1e-12), (bs, t, k)
    # the reference: metrics per test batch of 2 (last batch 1), averaged over the 4 batches
    _, _, dp, dg, npred, ngt = data
    de, ne = DepthErrors("batch_mean"), NormalErrors("batch_mean")
    for s in range(0, 7, 2):
        de.update(dp[s:s + 2], dg[s:s + 2])
        ne.update(npred[s:s + 2], ngt[s:s + 2])
    assert res[2]["depth"] == pytest.approx(de.compute(), rel=1e-12)
    assert res[2]["normal"] == pytest.approx(ne.compute(), rel=1e-12)
    pooled = _feed(DenseEvaluator(tasks, 13, "pooled", 2), data, 3)
    dpool = DepthErrors("pooled")
    dpool.update(dp, dg)
    assert pooled["depth"] == pytest.approx(dpool.compute(), rel=1e-12)
    assert pooled["segmentation"] == res[2]["segmentation"]  # always one confusion matrix
    assert pooled["depth"]["abs_err"] != pytest.approx(res[2]["depth"]["abs_err"], rel=1e-9)


def test_per_batch_metrics_refuse_shuffled_order():
    seg, lab, dp, dg, npred, ngt = _predictions(4)
    ev = DenseEvaluator(("depth",), 13, "per_batch", 2)
    fwd = Forward(torch.zeros(1), None, {"depth": dp[:2]})
    ev.update(fwd, {"depth": dg[:2], "index": torch.tensor([2, 3])})
    with pytest.raises(ValueError, match="dataset order"):
        ev.update(fwd, {"depth": dg[:2], "index": torch.tensor([0, 1])})


def test_compute_is_repeatable():
    data = _predictions(5)
    ev = DenseEvaluator(("segmentation", "depth", "normal"), 13, "per_batch", 2)
    first = _feed(ev, data, 5)
    assert ev.compute() == first


# ---------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------


def test_segnet_mtan_size_matches_the_paper():
    with torch.device("meta"):
        m = SegNetMTAN({"segmentation": 13, "depth": 1, "normal": 3})
    n = sum(p.numel() for p in m.parameters())
    # mtan prints count / 24981069 (one-task SegNet); MTAN paper Tab. (NYUv2) lists #P 1.77
    assert round(n / 24981069, 2) == 1.77
    assert n == 44229073  # the reference's count without its 3 logsigma parameters


@pytest.mark.parametrize("attention_shared", [False, True])
def test_segnet_parameter_split(attention_shared):
    m = SegNetMTAN({"a": 2, "b": 1}, attention_shared=attention_shared, width=TINY)
    shared = {id(p) for p in m.shared_parameters()}
    task = {id(p) for p in m.all_task_parameters()}
    att = {id(p) for p in m.attention.parameters()}
    heads = {id(p) for p in m.heads.parameters()}
    assert not shared & task and shared | task == {id(p) for p in m.parameters()}
    assert (att <= shared) == attention_shared and (att <= task) == (not attention_shared)
    assert heads <= task
    own_b = {id(p) for p in m.task_parameters("b")}
    assert own_b.isdisjoint({id(p) for p in m.task_parameters("a")})
    assert ({id(p) for p in m.attention["b"].parameters()} <= own_b) == (not attention_shared)
    assert m.features == frozenset()


def test_dilated_resnet_is_torchvision_resnet50():
    from torchvision.models import resnet50
    from torchvision.models.resnet import Bottleneck, ResNet

    with torch.device("meta"):
        ours = DilatedResNet().state_dict()
        tv = resnet50(weights=None, replace_stride_with_dilation=[False, True, True]).state_dict()
    tv = {k: v for k, v in tv.items() if not k.startswith("fc.")}
    assert list(ours) == list(tv)
    assert all(ours[k].shape == tv[k].shape for k in tv)
    # same function (strides, dilations, paddings) on a shallower instance
    layers = [1, 1, 2, 2]
    ref = ResNet(Bottleneck, layers, replace_stride_with_dilation=[False, True, True]).eval()
    enc = DilatedResNet(layers).eval()
    enc.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")})
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        want = ref.layer4(ref.layer3(ref.layer2(ref.layer1(
            ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))))))
        got = enc(x)
    assert got.shape == (1, 2048, 5, 6)  # output stride 8
    assert torch.allclose(got, want, atol=1e-5)


def test_pretrained_weights_only_from_a_local_file(tmp_path, caplog):
    src = DilatedResNet(width=TINY, layers=(1, 1, 1, 1))
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}
    sd["module.fc.weight"] = torch.zeros(3, 3)
    path = tmp_path / "r50.pth"
    torch.save({"state_dict": sd}, path)
    dst = DilatedResNet(width=TINY, layers=(1, 1, 1, 1))
    load_resnet50_weights(dst, path)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    with pytest.raises(ValueError, match="wrong shape"):
        load_resnet50_weights(DilatedResNet(width=2 * TINY, layers=(1, 1, 1, 1)), path)
    with pytest.raises(ValueError, match="is not a file"):
        load_resnet50_weights(dst, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="needs the full ResNet-50"):
        ResNetASPP({"a": 2}, width=TINY, pretrained_path=path)
    with caplog.at_level(logging.WARNING, logger="envs.models.resnet_aspp"):
        ResNetASPP({"a": 2}, width=TINY, layers=(1, 1, 1, 1))
    assert "randomly initialised" in caplog.text


def test_models_reject_bad_inputs():
    m = SegNetMTAN({"a": 2}, width=TINY)
    with pytest.raises(ValueError, match="divisible by 32"):
        m(torch.zeros(1, 3, 48, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        m(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="width"):
        SegNetMTAN({"a": 2}, width=0)


def _step(bench, model, method_name, batch, level="auto"):
    T = len(bench.tasks)
    model.train()
    model.zero_grad(set_to_none=True)
    fwd = bench.forward_losses(model, batch)
    assert fwd.losses.shape == (T,) and torch.isfinite(fwd.losses).all()
    method = methods.create(method_name, T)
    res = methods.backward(method, fwd.losses, model.shared_parameters(),
                           model.all_task_parameters(), rep=fwd.rep, level=level)
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    return fwd, res


@pytest.mark.parametrize("name", ["nyuv2", "cityscapes"])
def test_segnet_mtan_step_through_the_engine(name, nyu_root, city_root):
    root = nyu_root if name == "nyuv2" else city_root
    bench = envs.create(name, root=root, width=TINY)
    model = bench.build_model()
    batch = next(iter(bench.make_loader("train", 2, shuffle=True)))
    fwd, res = _step(bench, model, "ew", batch)
    assert fwd.rep is None and res.path == "loss"
    assert set(fwd.outputs) == set(bench.tasks)
    if name == "nyuv2":
        assert torch.allclose(fwd.outputs["normal"].norm(dim=1), torch.ones(1), atol=1e-5)
    _, res = _step(bench, model, "imtl_g", batch)
    assert res.path == "param" and torch.isclose(res.weights.sum(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="needs the shared representation"):
        _step(bench, model, "imtl_g", batch, level="rep")


def test_resnet_aspp_step_param_and_rep_level(nyu_root):
    bench = envs.create("nyuv2", root=nyu_root, model="resnet50_aspp", width=TINY)
    model = bench.build_model()
    assert model.features == frozenset({"representation"})
    batch = next(iter(bench.make_loader("train", 2, shuffle=True)))
    fwd, res = _step(bench, model, "ew", batch)
    assert fwd.rep.shape == (2, model.encoder.out_channels, 4, 4)  # stride 8 of 32 × 32
    assert fwd.outputs["segmentation"].shape == (2, 13, 32, 32)
    _, res_p = _step(bench, model, "imtl_g", batch, level="param")
    _, res_r = _step(bench, model, "imtl_g", batch, level="rep")
    assert res_p.path == "param" and res_r.path == "rep"
    # the encoder is all that is shared: shared / task split covers the model exactly
    assert {id(p) for p in model.shared_parameters()} == {id(p) for p in model.encoder.parameters()}


def test_resnet_rep_carries_every_shared_gradient(nyu_root):
    """∇_θ L_t = (∂z/∂θ)ᵀ ∇_z L_t for every shared θ: rep-level methods are exact here."""
    bench = envs.create("nyuv2", root=nyu_root, model="resnet50_aspp", width=TINY)
    model = bench.build_model().train()
    batch = next(iter(bench.make_loader("train", 2)))
    fwd = bench.forward_losses(model, batch)
    shared = model.shared_parameters()
    for t in range(len(bench.tasks)):
        direct = torch.autograd.grad(fwd.losses[t], shared, retain_graph=True)
        g_z = torch.autograd.grad(fwd.losses[t], fwd.rep, retain_graph=True)[0]
        chain = torch.autograd.grad(fwd.rep, shared, grad_outputs=g_z, retain_graph=True)
        for a, b in zip(direct, chain):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_build_model_options(nyu_root):
    bench = envs.create("nyuv2", root=nyu_root, width=TINY, attention_shared=True)
    assert bench.build_model().attention_shared
    assert not bench.build_model(attention_shared=False).attention_shared
    assert bench.build_model(width=2 * TINY).filters[0] == 8
    with pytest.raises(ValueError, match="unknown model option"):
        bench.build_model(depth=3)
    with pytest.raises(ValueError, match="model='resnet50_aspp' only"):
        bench.build_model(pretrained_path="/x.pth")


def test_evaluation_loop(city_root):
    bench = envs.create("cityscapes", root=city_root, width=TINY)
    model = bench.build_model().eval()
    ev = bench.new_evaluator()
    with torch.no_grad():
        for batch in bench.make_loader("test", 3):
            ev.update(bench.forward_losses(model, batch), batch)
    out = ev.compute()
    assert set(out) == {"segmentation", "depth"}
    assert set(out["segmentation"]) == {"miou", "pixel_acc"} and 0 <= out["segmentation"]["pixel_acc"] <= 1
    assert set(out["depth"]) == {"abs_err", "rel_err"} and out["depth"]["abs_err"] > 0


def test_no_network_access(monkeypatch, nyu_root, city_root):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for name, root in (("nyuv2", nyu_root), ("cityscapes", city_root)):
        for model in ("segnet_mtan", "resnet50_aspp"):
            bench = envs.create(name, root=root, model=model, width=TINY)
            net = bench.build_model()
            batch = next(iter(bench.make_loader("train", 2, shuffle=True)))
            bench.forward_losses(net, batch)
