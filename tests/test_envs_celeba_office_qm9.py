"""CelebA, Office-31/Office-Home and QM9 on tiny fixtures in their real on-disk layouts:
parsing and validation, seeded/sharded batching, models through the gradient engine,
metrics on hand cases, and no network access."""

from __future__ import annotations

import math
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

import envs
import methods
from envs import _sampling
from envs.base import Forward
from envs.fixtures import files as fx
from methods.engine import jacobian

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),  # torch.jit.script in PyG
              # many small backward passes: 2 threads under load made them ~20x slower
              pytest.mark.usefixtures("one_thread")]


# ---------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------

CELEBA_PARTITION = (0,) * 12 + (1,) * 5 + (2,) * 7
OFFICE31_PER_CLASS = (6, 5, 7)  # → per class train/val/test 3/1/2, 3/1/1, 4/1/2




@pytest.fixture(scope="module")
def celeba_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("celeba")
    info = fx.write_celeba(root, CELEBA_PARTITION, seed=1)
    return root, info


@pytest.fixture(scope="module")
def office31_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("office31")
    fx.write_office(root, "office31", OFFICE31_PER_CLASS, seed=2)
    return root


@pytest.fixture(scope="module")
def qm9_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("qm9")
    mols = fx.write_qm9(root, 30, seed=3)
    return root, mols


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _grads(params):
    return torch.cat([p.grad.reshape(-1) for p in params])


def _assert_near(a, b, rel=1e-4):
    """Equal up to float32 round-off relative to the vector's norm (rep-level reassociates)."""
    assert float((a - b).norm()) <= rel * float(b.norm()), float((a - b).norm() / b.norm())


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# ---------------------------------------------------------------------------------------
# registration and batching (_sampling)
# ---------------------------------------------------------------------------------------


def test_registered():
    assert {"celeba", "office31", "office_home", "qm9"} <= set(envs.available())
    assert envs.get_class("office31").multi_input and envs.get_class("office_home").multi_input
    assert not envs.get_class("celeba").multi_input and not envs.get_class("qm9").multi_input


@pytest.mark.parametrize("n,B,W", [(23, 3, 2), (24, 4, 3), (7, 2, 4), (10, 5, 1)])
def test_sharding_equals_single_process_batches(n, B, W):
    single = list(_sampling.ShardedBatchSampler(n, B * W, shuffle=True, seed=5, drop_last=True))
    ranks = [list(_sampling.ShardedBatchSampler(n, B, shuffle=True, seed=5, rank=r, world_size=W,
                                                drop_last=True)) for r in range(W)]
    assert all(len(r) == len(single) == n // (B * W) for r in ranks)
    for k, batch in enumerate(single):
        assert all(len(r[k]) == B for r in ranks)  # equal per-rank batch sizes
        assert sum((r[k] for r in ranks), []) == batch
    # without drop_last every example appears exactly once over all ranks (evaluation)
    seen = sorted(i for r in range(W) for b in _sampling.ShardedBatchSampler(
        n, B, shuffle=True, seed=5, rank=r, world_size=W) for i in b)
    assert seen == list(range(n))
    for r in range(W):
        s = _sampling.ShardedBatchSampler(n, B, rank=r, world_size=W)
        assert len(s) == len(list(s))


def test_sampler_passes_are_seeded_and_resumable():
    s = _sampling.ShardedBatchSampler(50, 50, shuffle=True, seed=0)
    p0, p1 = list(s)[0], list(s)[0]
    assert p0 != p1 and sorted(p0) == sorted(p1) == list(range(50))  # next pass reshuffles
    s.set_epoch(1)
    assert list(s)[0] == p1
    assert list(_sampling.ShardedBatchSampler(50, 50, shuffle=True, seed=1))[0] != p0
    assert list(_sampling.ShardedBatchSampler(50, 50))[0] == list(range(50))
    with pytest.raises(ValueError, match="rank"):
        _sampling.ShardedBatchSampler(10, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        _sampling.ShardedBatchSampler(10, 0)


def test_cycling_sampler_continues_across_epochs():
    n, B = 10, 3  # 3 complete batches per pass, 1 example dropped per pass
    stream = list(_sampling.CyclingBatchSampler(n, B, start=0, count=12, seed=4, stream=1))
    assert all(len(b) == B for b in stream)
    for p in range(4):
        one_pass = sum(stream[3 * p:3 * p + 3], [])
        assert len(set(one_pass)) == 9  # no repeats within a pass
        order = _sampling.pass_order(n, True, 4, 1, p).tolist()
        assert one_pass == order[:9]
    # epoch e of a 5-step epoch is the e-th window of the same endless stream
    epoch1 = list(_sampling.CyclingBatchSampler(n, B, start=5, count=5, seed=4, stream=1))
    assert epoch1 == stream[5:10]


# ---------------------------------------------------------------------------------------
# CelebA
# ---------------------------------------------------------------------------------------


def test_celeba_parses_real_format(celeba_root):
    root, info = celeba_root
    bench = envs.create("celeba", root=str(root))
    assert bench.tasks == tuple(fx.CELEBA_ATTRIBUTES) and len(bench.tasks) == 40
    assert bench.describe()["split_sizes"] == {"train": 12, "val": 5, "test": 7}
    assert bench.describe()["layout"] == "official"
    assert [m.name for m in bench.metrics["Smiling"]] == ["f1"]
    ds = bench.dataset("val")
    x, y = ds[0]
    assert x.shape == (3, 64, 64) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # the first val image is image 13 in file order; labels map −1/1 → 0/1
    assert ds.names[0] == "000013.jpg"
    torch.testing.assert_close(y, torch.tensor(info["labels"][12], dtype=torch.float32))
    assert bench.protocol.lr == 3e-4 and bench.protocol.batch_size == 256
    assert bench.protocol.epochs == 15 and bench.stl_reference is None


def test_celeba_flat_layout_and_image_size(tmp_path):
    fx.write_celeba(tmp_path, (0, 0, 1, 2), layout="flat")
    bench = envs.create("celeba", root=tmp_path, image_size=32)
    assert bench.describe()["layout"] == "flat"
    assert bench.dataset("train")[0][0].shape == (3, 32, 32)


def test_celeba_loader_batches_and_shards(celeba_root):
    bench = envs.create("celeba", root=celeba_root[0])
    loader = bench.make_loader("train", 5, shuffle=True, seed=3)
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [5, 5, 2] and batches[0][1].shape == (5, 40)
    again = bench.make_loader("train", 5, shuffle=True, seed=3)
    torch.testing.assert_close(next(iter(again))[0], batches[0][0])
    loader.set_epoch(0)
    torch.testing.assert_close(next(iter(loader))[0], batches[0][0])
    # two ranks with batch 3 and drop_last: each step's concatenation is the single-process batch
    single = list(bench.make_loader("train", 6, shuffle=True, seed=7, drop_last=True))
    ranks = [list(bench.make_loader("train", 3, shuffle=True, seed=7, rank=r, world_size=2,
                                    drop_last=True)) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 2
    for k in range(2):
        assert ranks[0][k][0].shape[0] == ranks[1][k][0].shape[0] == 3
        torch.testing.assert_close(torch.cat([ranks[0][k][0], ranks[1][k][0]]), single[k][0])


def test_celeba_model_through_engine(celeba_root):
    bench = envs.create("celeba", root=celeba_root[0], image_size=16)  # small: 40 tasks
    model = bench.build_model(width=4)
    shared, heads = model.shared_parameters(), model.all_task_parameters()
    assert {id(p) for p in shared}.isdisjoint({id(p) for p in heads})
    assert len(shared) + len(heads) == len(list(model.parameters()))
    x, y = next(iter(bench.make_loader("train", 4, shuffle=True)))
    # EW: one backward of the sum
    f = bench.forward_losses(model, (x, y))
    assert f.losses.shape == (40,) and f.rep.shape == (4, 32)
    ref = torch.autograd.grad(f.losses.sum(), shared, retain_graph=True)
    methods.backward(methods.create("ew", 40), f.losses, shared, heads)
    torch.testing.assert_close(_grads(shared), torch.cat([g.reshape(-1) for g in ref]))
    # heads are task-specific: task s's loss gives no gradient to task t's head
    f = bench.forward_losses(model, (x, y))
    H = jacobian(f.losses, list(model.heads["Smiling"].parameters()), retain_graph=True)
    k = bench.tasks.index("Smiling")
    assert H[k].abs().sum() > 0 and H[torch.arange(40) != k].abs().max() == 0
    # IMTL-G at param level and at rep level (the 512-d rep is the encoder's only output)
    G = jacobian(f.losses, shared, retain_graph=True)
    res = methods.backward(methods.create("imtl_g", 40), f.losses, shared, heads)
    torch.testing.assert_close(_grads(shared), res.weights @ G)
    f = bench.forward_losses(model, (x, y))
    G = jacobian(f.losses, shared, retain_graph=True)
    res = methods.backward(methods.create("imtl_g", 40), f.losses, shared, heads, rep=f.rep,
                           level="rep")
    assert res.path == "rep" and math.isclose(float(res.weights.sum()), 1.0, rel_tol=1e-5)
    _assert_near(_grads(shared), res.weights @ G)


def test_celeba_evaluator_hand_case(celeba_root):
    bench = envs.create("celeba", root=celeba_root[0])
    ev = bench.new_evaluator()
    y = torch.zeros(4, 40)
    y[:, 0] = torch.tensor([1.0, 1.0, 0.0, 0.0])
    y[:, 1] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    logits = torch.full((4, 40), -1.0)
    logits[:, 0] = torch.tensor([2.0, -2.0, 3.0, -1.0])  # TP, FN, FP, TN
    logits[:, 1] = torch.tensor([0.5, 0.5, 0.5, 0.5])  # TP, FP, FP, FP
    ev.update(Forward(losses=torch.zeros(40), rep=None, outputs={"logits": logits}), (None, y))
    out = ev.compute()
    t0, t1, t2 = bench.tasks[:3]
    assert out[t0] == {"f1": pytest.approx(0.5), "acc": pytest.approx(0.5)}
    assert out[t1] == {"f1": pytest.approx(2 / 5), "acc": pytest.approx(0.25)}
    assert out[t2] == {"f1": 0.0, "acc": 1.0}  # no positives, none predicted


def _write_attr(root: Path, text: str) -> None:
    (root / "Anno/list_attr_celeba.txt").write_text(text)


def test_celeba_bad_inputs(tmp_path, celeba_root):
    src = celeba_root[0]
    with pytest.raises(ValueError, match="root"):
        envs.create("celeba")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        envs.create("celeba", root=tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="list_attr_celeba.txt.*Anno"):
        envs.create("celeba", root=tmp_path)
    with pytest.raises(ValueError, match="unknown option"):
        envs.create("celeba", root=src, width=3)

    root = _copy(src, tmp_path / "a")
    (root / "Eval/list_eval_partition.txt").unlink()
    with pytest.raises(FileNotFoundError, match="partition file .*list_eval_partition.txt"):
        envs.create("celeba", root=root)

    root = _copy(src, tmp_path / "b")
    lines = (root / "Anno/list_attr_celeba.txt").read_text().splitlines()
    _write_attr(root, "\n".join(["25"] + lines[1:]) + "\n")
    with pytest.raises(ValueError, match="line 1 says 25 images but 24 rows"):
        envs.create("celeba", root=root)
    _write_attr(root, "\n".join(["many"] + lines[1:]))
    with pytest.raises(ValueError, match="line 1 must be the number of images"):
        envs.create("celeba", root=root)
    _write_attr(root, "\n".join([lines[0], " ".join(lines[1].split()[:39])] + lines[2:]))
    with pytest.raises(ValueError, match="40 distinct attribute names"):
        envs.create("celeba", root=root)
    _write_attr(root, "\n".join(lines[:5] + [lines[5].rsplit(" ", 1)[0]] + lines[6:]))
    with pytest.raises(ValueError, match="row 4 \\(000004.jpg\\) has value nan .* -1 or 1"):
        envs.create("celeba", root=root)
    _write_attr(root, "\n".join(lines[:3] + [lines[3].replace("-1", " 0", 1)] + lines[4:]))
    with pytest.raises(ValueError, match="row 2 \\(000002.jpg\\) has value 0 .* -1 or 1"):
        envs.create("celeba", root=root)
    _write_attr(root, "\n".join(lines[:7] + [lines[7] + " 1"] + lines[8:]))
    with pytest.raises(ValueError, match="Expected 41 fields in line 8, saw 42"):
        envs.create("celeba", root=root)

    root = _copy(src, tmp_path / "c")
    part = root / "Eval/list_eval_partition.txt"
    good = part.read_text()
    part.write_text(good.replace("000003.jpg 0", "000003.jpg 3"))
    with pytest.raises(ValueError, match="line 3 must be"):
        envs.create("celeba", root=root)
    part.write_text("".join(good.splitlines(keepends=True)[:-1]))
    with pytest.raises(ValueError, match="list different images: 1 only in the attribute file"):
        envs.create("celeba", root=root)

    root = _copy(src, tmp_path / "d")
    (root / "Img/img_align_celeba/000007.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="1 images .* missing .*000007.jpg"):
        envs.create("celeba", root=root)


# ---------------------------------------------------------------------------------------
# Office-31 / Office-Home
# ---------------------------------------------------------------------------------------


def test_office31_generated_splits(office31_root):
    bench = envs.create("office31", root=office31_root, image_size=16)
    info = bench.describe()
    assert bench.tasks == ("amazon", "dslr", "webcam") and bench.multi_input
    assert info["split_source"].startswith("generated")
    # per class ⌊0.6n⌋ / ⌊0.2n⌋ / rest, 31 classes
    assert info["split_sizes"] == {
        "amazon": {"train": 93, "val": 31, "test": 62},
        "dslr": {"train": 93, "val": 31, "test": 31},
        "webcam": {"train": 124, "val": 31, "test": 62},
    }
    for d in bench.domains:
        items = [i for s in ("train", "val", "test") for i in bench.items[d][s]]
        paths = [p for p, _ in items]
        assert len(set(paths)) == len(paths)  # disjoint splits
        assert all(p.startswith(f"{d}/images/") for p in paths)
        classes = sorted(fx.OFFICE31_CLASSES)
        assert all(classes[y] == p.split("/")[2] for p, y in items)  # label = sorted class index
    again = envs.create("office31", root=office31_root, image_size=16)
    assert again.describe()["split_fingerprint"] == info["split_fingerprint"]
    other = envs.create("office31", root=office31_root, image_size=16, split_seed=1)
    assert other.describe()["split_fingerprint"] != info["split_fingerprint"]
    x, y = bench.dataset("train", "dslr")[0]
    assert x.shape == (3, 16, 16) and isinstance(y, int)
    assert bench.protocol.lr == 1e-4 and bench.protocol.weight_decay == 1e-5
    assert bench.protocol.batch_size == 64 and bench.protocol.epochs == 100
    assert bench.stl_reference["dslr"]["acc"] == pytest.approx(0.9563)


def test_office_home_split_files_are_used(tmp_path):
    lists = fx.write_office(tmp_path, "office_home", (5, 5, 6, 5), split_files=True, seed=4)
    (tmp_path / "Real_World").rename(tmp_path / "Real World")  # the original release's name
    for s in ("train", "val", "test"):  # LibMTL's files say Real_World/...; keep them valid
        p = tmp_path / f"Real_World_{s}.txt"
        p.write_text(p.read_text().replace("Real_World/", "Real World/"))
    bench = envs.create("office_home", root=tmp_path, image_size=16)
    assert bench.describe()["split_source"].startswith("files")
    assert bench.tasks == ("Art", "Clipart", "Product", "Real_World")
    assert bench.items["Art"]["val"] == lists["Art"]["val"]  # file order and file labels
    assert bench.items["Real_World"]["test"][0][0].startswith("Real World/")
    # the same folders without split files: generated, found under "Real World" too
    for p in tmp_path.glob("*_*.txt"):
        p.unlink()
    gen = envs.create("office_home", root=tmp_path, image_size=16)
    assert gen.describe()["split_source"].startswith("generated")
    assert gen.describe()["split_sizes"]["Product"] == {"train": 195, "val": 65, "test": 130}
    out = gen.export_splits(tmp_path / "pinned")
    assert len(out) == 12
    pinned = envs.create("office_home", root=tmp_path, image_size=16, split_dir=tmp_path / "pinned")
    assert pinned.describe()["split_source"].startswith("files")
    assert pinned.describe()["split_fingerprint"] == gen.describe()["split_fingerprint"]


def test_office_training_loader_is_libmtl_joint_iteration(office31_root):
    bench = envs.create("office31", root=office31_root, image_size=16)
    B = 8
    loader = bench.make_loader("train", B, shuffle=True, seed=1)
    # one epoch = max_t ⌊n_t/B⌋ steps (webcam: 124 // 8 = 15); every step holds every domain
    assert len(loader) == 15
    epoch0 = list(loader)
    assert len(epoch0) == 15
    for batch in epoch0:
        assert set(batch) == set(bench.domains)
        assert all(x.shape == (B, 3, 16, 16) and y.shape == (B,) for x, y in batch.values())
    # the largest domain sees each training image exactly once per epoch
    webcam = torch.cat([b["webcam"][0] for b in epoch0]).flatten(1)
    assert torch.unique(webcam, dim=0).shape[0] == 15 * B
    loader.set_epoch(0)
    torch.testing.assert_close(next(iter(loader))["dslr"][0], epoch0[0]["dslr"][0])
    # sharded: the two ranks' per-domain batches concatenate to the single-process batch
    single = next(iter(bench.make_loader("train", 2 * 4, shuffle=True, seed=9)))
    ranks = [next(iter(bench.make_loader("train", 4, shuffle=True, seed=9, rank=r, world_size=2)))
             for r in range(2)]
    for d in bench.domains:
        torch.testing.assert_close(torch.cat([ranks[0][d][0], ranks[1][d][0]]), single[d][0])
    with pytest.raises(ValueError, match="fewer than one global batch"):
        bench.make_loader("train", 200, shuffle=True)


def test_office_eval_loader_visits_every_image_once(office31_root):
    bench = envs.create("office31", root=office31_root, image_size=16)
    loader = bench.make_loader("test", 20)
    counts = dict.fromkeys(bench.domains, 0)
    batches = list(loader)
    assert len(batches) == len(loader) == 4  # amazon/webcam 62 images: ⌈62/20⌉
    for b in batches:
        for d, (x, _) in b.items():
            counts[d] += x.shape[0]
    assert counts == {"amazon": 62, "dslr": 31, "webcam": 62}
    assert set(batches[-1]) == {"amazon", "webcam"}  # dslr ran out after 2 batches
    model = bench.build_model(width=8).eval()
    f = bench.forward_losses(model, batches[-1])
    k = bench.tasks.index("dslr")
    assert math.isnan(float(f.losses[k].detach())) and torch.isfinite(f.losses[[0, 2]]).all()
    assert f.rep is None and set(f.outputs["logits"]) == {"amazon", "webcam"}


def test_office_model_through_engine(office31_root):
    bench = envs.create("office31", root=office31_root, image_size=16)
    model = bench.build_model(width=8)
    assert "representation" not in model.features
    shared, heads = model.shared_parameters(), model.all_task_parameters()
    assert len(shared) + len(heads) == len(list(model.parameters()))
    batch = next(iter(bench.make_loader("train", 2, shuffle=True)))
    torch.manual_seed(0)  # dropout
    f = bench.forward_losses(model, batch)
    assert f.losses.shape == (3,) and torch.isfinite(f.losses).all()
    ref = torch.autograd.grad(f.losses.sum(), shared, retain_graph=True)
    methods.backward(methods.create("ew", 3), f.losses, shared, heads)
    torch.testing.assert_close(_grads(shared), torch.cat([g.reshape(-1) for g in ref]))
    f = bench.forward_losses(model, batch)
    H = jacobian(f.losses, list(model.heads["webcam"].parameters()), retain_graph=True)
    assert H[2].abs().sum() > 0 and H[:2].abs().max() == 0
    G = jacobian(f.losses, shared, retain_graph=True)
    res = methods.backward(methods.create("imtl_g", 3), f.losses, shared, heads)
    assert res.path == "param"
    torch.testing.assert_close(_grads(shared), res.weights @ G)
    proj = (G / G.norm(dim=1, keepdim=True)) @ _grads(shared)  # IMTL-G: equal projections
    torch.testing.assert_close(proj, proj[0].expand(3), rtol=1e-3, atol=1e-7)
    f = bench.forward_losses(model, batch)
    with pytest.raises(ValueError, match="representation"):  # multi-input: no rep level
        methods.backward(methods.create("imtl_g", 3), f.losses, shared, heads, rep=f.rep,
                         level="rep")


def test_office_evaluator_hand_case(office31_root):
    bench = envs.create("office31", root=office31_root, image_size=16)
    ev = bench.new_evaluator()
    eye = torch.eye(31)
    # amazon: 2 of 3 right; dslr: 1 of 1 right; webcam only in the second batch
    logits = {"amazon": eye[[0, 1, 2]], "dslr": eye[[5]]}
    ev.update(Forward(torch.zeros(3), None, {"logits": logits}),
              {"amazon": (None, torch.tensor([0, 1, 3])), "dslr": (None, torch.tensor([5]))})
    ev.update(Forward(torch.zeros(3), None, {"logits": {"webcam": eye[[4, 4]]}}),
              {"webcam": (None, torch.tensor([4, 0]))})
    assert ev.compute() == {"amazon": {"acc": pytest.approx(2 / 3)}, "dslr": {"acc": 1.0},
                            "webcam": {"acc": 0.5}}


def test_office_bad_inputs(tmp_path, office31_root):
    with pytest.raises(ValueError, match="root"):
        envs.create("office31")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        envs.create("office31", root=tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="'amazon' not found.*images/<class>"):
        envs.create("office31", root=tmp_path)

    root = _copy(office31_root, tmp_path / "a")
    shutil.rmtree(root / "dslr/images/mug")
    with pytest.raises(ValueError, match="30 class folders, expected 31"):
        envs.create("office31", root=root)

    root = _copy(office31_root, tmp_path / "b")
    (root / "webcam/images").rename(root / "webcam/pictures")
    with pytest.raises(FileNotFoundError, match="webcam/images.*missing"):
        envs.create("office31", root=root)

    root = _copy(office31_root, tmp_path / "c")
    bench = envs.create("office31", root=root, image_size=16)
    bench.export_splits(root)
    (root / "dslr_val.txt").unlink()
    with pytest.raises(FileNotFoundError, match="1 are missing .*dslr_val.txt"):
        envs.create("office31", root=root)
    bench.export_splits(root)
    val = root / "amazon_val.txt"
    good = val.read_text()
    val.write_text(good.replace(".jpg ", ".png ", 1))
    with pytest.raises(FileNotFoundError, match="amazon_val.txt: line 1: image .* does not exist"):
        envs.create("office31", root=root)
    first = good.splitlines()[0].rsplit(" ", 1)[0]
    val.write_text(good.replace(good.splitlines()[0], f"{first} 31"))
    with pytest.raises(ValueError, match=r"line 1: label 31 outside \[0, 30\]"):
        envs.create("office31", root=root)
    val.write_text(good.replace(good.splitlines()[0], first))
    with pytest.raises(ValueError, match="line 1 must be '<path relative to root> <label>'"):
        envs.create("office31", root=root)
    train = (root / "amazon_train.txt").read_text()
    val.write_text(good + train.splitlines()[0] + "\n")
    with pytest.raises(ValueError, match="both the train and val split"):
        envs.create("office31", root=root)
    val.write_text(good)
    with pytest.raises(FileNotFoundError, match="pretrained_path"):
        bench.build_model(pretrained_path=tmp_path / "missing.pth")


def test_office_pretrained_weights_load_from_local_file(tmp_path, office31_root):
    from torchvision.models import resnet18

    ref = resnet18(weights=None)  # constructing it downloads nothing
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}},
               tmp_path / "r18.pth")
    bench = envs.create("office31", root=office31_root, image_size=16)
    model = bench.build_model(pretrained_path=tmp_path / "r18.pth")
    trunk = model.encoder.resnet.state_dict()
    want = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    assert list(trunk) == list(want)  # torchvision's names, order and shapes at width 64
    for k, v in want.items():
        torch.testing.assert_close(trunk[k], v)
    x = torch.randn(2, 3, 32, 32)
    ref.fc = torch.nn.Identity()
    torch.testing.assert_close(model.encoder.resnet.eval()(x), ref.eval()(x))
    with pytest.raises(ValueError, match="width=64"):
        bench.build_model(width=8, pretrained_path=tmp_path / "r18.pth")
    torch.save({"conv1.weight": ref.conv1.weight}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a torchvision ResNet-18 state dict"):
        bench.build_model(pretrained_path=tmp_path / "bad.pth")


# ---------------------------------------------------------------------------------------
# QM9
# ---------------------------------------------------------------------------------------


def test_qm9_reads_processed_file_and_normalises(qm9_root):
    from envs.qm9 import TARGETS

    root, mols = qm9_root
    bench = envs.create("qm9", root=root, test_size=6, val_size=5)
    info = bench.describe()
    assert info["split_sizes"] == {"test": 6, "val": 5, "train": 19}
    assert bench.tasks == ("mu", "alpha", "homo", "lumo", "r2", "zpve", "U0", "U", "H", "G", "cv")
    raw = torch.cat([m.y for m in mols])[:, list(TARGETS)].double()
    train = bench.indices["train"]
    torch.testing.assert_close(bench.mean, raw[train].mean(0))
    torch.testing.assert_close(bench.std, raw[train].std(0))
    ds = bench.dataset("test")
    g = ds[0]
    i = int(bench.indices["test"][0])
    assert int(g.idx) == i
    torch.testing.assert_close(g.y.double() * bench.std + bench.mean, raw[i:i + 1],
                               rtol=1e-5, atol=1e-5)
    # Complete + Distance: all ordered pairs, 4-d bond one-hot kept for bonds, then |pos_i − pos_j|
    n = mols[i].num_nodes
    assert g.edge_index.shape == (2, n * (n - 1)) and g.edge_attr.shape == (n * (n - 1), 5)
    src, dst = g.edge_index
    torch.testing.assert_close(g.edge_attr[:, 4], (g.pos[src] - g.pos[dst]).norm(dim=1))
    bonds = {(int(a), int(b)): mols[i].edge_attr[k]
             for k, (a, b) in enumerate(mols[i].edge_index.t())}
    for k, (a, b) in enumerate(g.edge_index.t().tolist()):
        expect = bonds.get((a, b), torch.zeros(4))
        torch.testing.assert_close(g.edge_attr[k, :4], expect)
    # target_stats="all" uses every molecule (what nash-mtl effectively does)
    allstats = envs.create("qm9", root=root, test_size=6, val_size=5, target_stats="all")
    torch.testing.assert_close(allstats.std, raw.std(0))
    # the split is a seeded permutation: test/val/train disjoint, covering everything
    idx = torch.cat(list(bench.indices.values()))
    assert sorted(idx.tolist()) == list(range(30))
    other = envs.create("qm9", root=root, test_size=6, val_size=5, split_seed=0)
    assert not torch.equal(other.indices["test"], bench.indices["test"])
    assert bench.protocol.lr_schedule == "plateau" and bench.protocol.gamma == 0.7
    assert bench.protocol.batch_size == 120 and bench.protocol.epochs == 300
    assert bench.stl_reference["homo"]["mae"] == pytest.approx(60.576)


def test_qm9_fixture_is_what_pygs_own_qm9_class_reads(qm9_root, tmp_path, monkeypatch):
    """The fixture is PyG's processed format: torch_geometric.datasets.QM9 loads it as is
    (given placeholder raw files, so that it does not try to download them)."""
    import warnings

    from torch_geometric.datasets import QM9 as PygQM9

    root = _copy(qm9_root[0], tmp_path / "qm9")
    (root / "raw").mkdir()
    for name in PygQM9.raw_file_names.fget(PygQM9.__new__(PygQM9)):
        (root / "raw" / name).write_bytes(b"")
    _no_network(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a pre_transform.pt mismatch would warn
        pyg = PygQM9(str(root))
    ours = envs.create("qm9", root=root, test_size=6, val_size=5)
    assert len(pyg) == len(ours.data) == 30
    for i in (0, 17, 29):
        a, b = pyg[i], qm9_root[1][i]
        for key in ("x", "z", "pos", "edge_index", "edge_attr", "y"):
            assert torch.equal(getattr(a, key), getattr(b, key)), key
        assert int(a.idx) == b.idx == i and a.name == b.name


def test_qm9_split_file(qm9_root, tmp_path):
    root, _ = qm9_root
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(11))
    torch.save(perm, tmp_path / "random_split.t")
    bench = envs.create("qm9", root=root, test_size=6, val_size=5,
                        split_file=tmp_path / "random_split.t")
    assert torch.equal(bench.indices["test"], perm[:6])
    assert torch.equal(bench.indices["train"], perm[11:])
    torch.save(perm[:29], tmp_path / "short.t")
    with pytest.raises(ValueError, match="permutation of range\\(30\\)"):
        envs.create("qm9", root=root, test_size=6, val_size=5, split_file=tmp_path / "short.t")


def test_qm9_loader_batches_and_shards(qm9_root):
    bench = envs.create("qm9", root=qm9_root[0], test_size=6, val_size=5)
    batches = list(bench.make_loader("train", 4, shuffle=True, seed=2))
    assert [b.num_graphs for b in batches] == [4, 4, 4, 4, 3]
    assert batches[0].y.shape == (4, 11) and batches[0].edge_attr.shape[1] == 5
    again = next(iter(bench.make_loader("train", 4, shuffle=True, seed=2)))
    assert torch.equal(again.idx, batches[0].idx)
    single = list(bench.make_loader("train", 6, shuffle=True, seed=8, drop_last=True))
    ranks = [list(bench.make_loader("train", 3, shuffle=True, seed=8, rank=r, world_size=2,
                                    drop_last=True)) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 3
    for k in range(3):
        assert ranks[0][k].num_graphs == ranks[1][k].num_graphs == 3
        assert torch.equal(torch.cat([ranks[0][k].idx, ranks[1][k].idx]), single[k].idx)
    seen = sorted(int(i) for r in range(2)
                  for b in bench.make_loader("test", 4, rank=r, world_size=2) for i in b.idx)
    assert seen == sorted(bench.indices["test"].tolist())


def test_qm9_model_through_engine(qm9_root):
    bench = envs.create("qm9", root=qm9_root[0], test_size=6, val_size=5)
    model = bench.build_model(dim=8)
    shared, heads = model.shared_parameters(), model.all_task_parameters()
    names = {n.split(".")[1] for n, _ in model.named_parameters() if n.startswith("encoder.")}
    assert names == {"lin0", "conv", "gru", "set2set", "lin1"}  # nash-mtl's shared set
    batch = next(iter(bench.make_loader("train", 5, shuffle=True)))
    f = bench.forward_losses(model, batch)
    assert f.losses.shape == (11,) and f.rep.shape == (5, 8)
    ref = torch.autograd.grad(f.losses.sum(), shared, retain_graph=True)
    methods.backward(methods.create("ew", 11), f.losses, shared, heads)
    torch.testing.assert_close(_grads(shared), torch.cat([g.reshape(-1) for g in ref]))
    for level in ("param", "rep"):
        f = bench.forward_losses(model, batch)
        G = jacobian(f.losses, shared, retain_graph=True)
        res = methods.backward(methods.create("imtl_g", 11), f.losses, shared, heads,
                               rep=f.rep, level=level)
        assert res.path == level
        _assert_near(_grads(shared), res.weights @ G)


def test_qm9_evaluator_units(qm9_root):
    from envs.qm9 import MEV_TASKS

    bench = envs.create("qm9", root=qm9_root[0], test_size=6, val_size=5)
    ev = bench.new_evaluator()
    y = torch.randn(4, 11)
    delta = torch.tensor([0.5, -0.5, 1.0, -1.0])  # normalised errors, mean |·| = 0.75
    pred = y + delta[:, None]
    batch = type("B", (), {"y": y})()
    ev.update(Forward(torch.zeros(11), None, {"pred": pred}), batch)
    out = ev.compute()
    for k, t in enumerate(bench.tasks):
        unit = 1000.0 if t in MEV_TASKS else 1.0
        assert out[t]["mae"] == pytest.approx(0.75 * float(bench.std[k]) * unit, rel=1e-6)
    assert MEV_TASKS == {"homo", "lumo", "zpve", "U0", "U", "H", "G"}


def test_qm9_bad_inputs(tmp_path, qm9_root):
    from torch_geometric.data import Data, InMemoryDataset

    with pytest.raises(ValueError, match="root"):
        envs.create("qm9")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        envs.create("qm9", root=tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="processed/data_v3.pt.*never downloads"):
        envs.create("qm9", root=tmp_path)
    assert not (tmp_path / "raw").exists()  # nothing was fetched or created
    with pytest.raises(ValueError, match="test_size \\(20\\) \\+ val_size \\(10\\)"):
        envs.create("qm9", root=qm9_root[0], test_size=20, val_size=10)
    with pytest.raises(ValueError, match="target_stats"):
        envs.create("qm9", root=qm9_root[0], target_stats="test")
    mols = [fx.qm9_molecule(np.random.default_rng(i), i) for i in range(3)]
    bad = tmp_path / "bad"
    (bad / "processed").mkdir(parents=True)
    InMemoryDataset.save([Data(**{**m.to_dict(), "x": m.x[:, :10]}) for m in mols],
                         str(bad / "processed/data_v3.pt"))
    with pytest.raises(ValueError, match="field 'x' has shape .*expected \\[\\*, 11\\]"):
        envs.create("qm9", root=bad, test_size=1, val_size=1)
    (bad / "processed/data_v3.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="could not load"):
        envs.create("qm9", root=bad, test_size=1, val_size=1)


# ---------------------------------------------------------------------------------------
# no network anywhere
# ---------------------------------------------------------------------------------------


def test_no_network_access(monkeypatch, celeba_root, office31_root, qm9_root):
    _no_network(monkeypatch)
    cases = [("celeba", celeba_root[0], {}, {"width": 4}),
             ("office31", office31_root, {"image_size": 16}, {"width": 8}),
             ("qm9", qm9_root[0], {"test_size": 6, "val_size": 5}, {"dim": 8})]
    for name, root, opts, model_opts in cases:
        bench = envs.create(name, root=root, **opts)
        model = bench.build_model(**model_opts)
        batch = next(iter(bench.make_loader("train", 2, shuffle=True)))
        f = bench.forward_losses(model, batch)
        assert torch.isfinite(f.losses).all()
