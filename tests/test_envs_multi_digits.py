"""envs/multi_digits.py and envs/toy.py: data determinism, loaders and sharding, the model
through methods.backward, loss scaling, option validation; the toy's Pareto set and
trajectories."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

import envs
import methods
from envs import multi_digits as md
from envs import toy

# ---------------------------------------------------------------------------------------
# multi_digits: data
# ---------------------------------------------------------------------------------------


def test_registered():
    assert {"multi_digits", "toy"} <= set(envs.available())


def test_digits_file_is_what_sklearn_loads():
    from sklearn.datasets import load_digits

    images, labels = md.load_sklearn_digits()
    d = load_digits()
    assert np.array_equal(images, d.images) and np.array_equal(labels, d.target)


def test_base_pools_are_disjoint_and_cover_the_digits():
    images, labels = md.load_sklearn_digits()
    idx = md.base_indices(0, len(labels))
    assert {s: len(i) for s, i in idx.items()} == {"train": 1078, "val": 359, "test": 360}
    assert sorted(np.concatenate(list(idx.values())).tolist()) == list(range(len(labels)))
    pools = md.base_pools(0)
    for s, (ims, labs) in pools.items():
        assert np.allclose(ims, images[idx[s]] / 16.0) and np.array_equal(labs, labels[idx[s]])
    assert not np.array_equal(md.base_indices(1, len(labels))["test"], idx["test"])


def test_dataset_build_is_deterministic_and_prefix_stable():
    a = md.build_split("train", 300, 0)
    md._build_split_cached.cache_clear()
    b = md.build_split("train", 300, 0)
    assert a["image"] is not b["image"]
    for k in ("image", "left", "right"):
        assert torch.equal(a[k], b[k])
    c = md.build_split("train", 100, 0)
    assert torch.equal(c["image"], a["image"][:100]) and torch.equal(c["left"], a["left"][:100])
    d = md.build_split("train", 300, 1)
    assert not torch.equal(d["image"], a["image"])
    # splits use their own RNG and pool
    assert not torch.equal(md.build_split("val", 100, 0)["image"], c["image"])


def test_samples_are_two_overlaid_digits():
    s = md.build_split("test", 50, 0)
    x = s["image"] * md.PIXEL_STD + md.PIXEL_MEAN  # back to [0, 1]
    assert x.shape == (50, 1, md.CANVAS, md.CANVAS) and x.dtype == torch.float32
    assert x.min() >= -1e-6 and x.max() <= 1 + 1e-6
    # the left digit sits within rows/cols 0..9, the right one within 4..13
    assert x[:, :, 10:, :4].abs().max() < 1e-6 and x[:, :, :4, 10:].abs().max() < 1e-6
    assert set(s["left"].tolist()) <= set(range(10)) and s["left"].dtype == torch.int64


def test_split_sizes_and_options():
    b = envs.create("multi_digits")
    assert [len(b.data(s)["left"]) for s in ("train", "val", "test")] == [6000, 1000, 2000]
    small = envs.create("multi_digits", n_train=64, n_val=10, n_test=20, data_seed=3)
    assert [len(small.data(s)["left"]) for s in ("train", "val", "test")] == [64, 10, 20]
    assert small.stl_reference is None  # the reference applies to the default data only
    assert b.tasks == ("left", "right")
    assert all(m[0].higher_is_better for m in b.metrics.values())


@pytest.mark.parametrize(
    "options, match",
    [
        ({"loss_scale": (1.0,)}, "loss_scale must be 2"),
        ({"loss_scale": "1,10"}, "loss_scale must be 2"),
        ({"loss_scale": (1.0, -1.0)}, r"loss_scale\[right\]"),
        ({"loss_scale": (0.0, 0.0)}, "positive entry"),
        ({"n_train": 0}, "n_train"),
        ({"data_seed": -1}, "data_seed"),
        ({"batchsize": 3}, "valid: loss_scale, n_train, n_val, n_test, data_seed"),
    ],
)
def test_bad_options_raise(options, match):
    with pytest.raises(ValueError, match=match):
        envs.create("multi_digits", **options)


def test_bad_model_options_and_split():
    b = envs.create("multi_digits", n_train=8, n_val=8, n_test=8)
    with pytest.raises(ValueError, match=r"valid: \['channels', 'hidden'\]"):
        b.build_model(width=3)
    with pytest.raises(ValueError, match="hidden"):
        b.build_model(hidden=0)
    with pytest.raises(ValueError, match="split must be one of"):
        b.make_loader("dev", 4)


# ---------------------------------------------------------------------------------------
# multi_digits: loaders
# ---------------------------------------------------------------------------------------


def _ids(n):
    return {"i": torch.arange(n)}


def test_loader_batching_and_seeded_shuffle():
    L = md.TensorBatchLoader(_ids(10), 4)
    batches = [b["i"].tolist() for b in L]
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and len(L) == 3
    assert len(md.TensorBatchLoader(_ids(10), 4, drop_last=True)) == 2
    S = md.TensorBatchLoader(_ids(50), 8, shuffle=True, seed=5)
    e0 = torch.cat([b["i"] for b in S])
    e1 = torch.cat([b["i"] for b in S])  # iterating advances the epoch: a new order
    assert sorted(e0.tolist()) == list(range(50)) and not torch.equal(e0, e1)
    S.set_epoch(0)
    assert torch.equal(torch.cat([b["i"] for b in S]), e0)
    other = md.TensorBatchLoader(_ids(50), 8, shuffle=True, seed=6)
    assert not torch.equal(torch.cat([b["i"] for b in other]), e0)


@pytest.mark.parametrize(
    "n, world, bs, drop_last",
    [(10, 3, 2, False), (10, 3, 2, True), (64, 4, 5, False), (7, 2, 3, True), (13, 4, 3, False)],
)
def test_rank_shards_have_equal_batches(n, world, bs, drop_last):
    loaders = [
        md.TensorBatchLoader(
            _ids(n), bs, shuffle=True, seed=1, rank=r, world_size=world, drop_last=drop_last
        )
        for r in range(world)
    ]
    shards = [[b["i"] for b in L] for L in loaders]
    assert len({len(s) for s in shards}) == 1  # the same number of steps on every rank
    if drop_last:
        assert all(len(b) == bs for s in shards for b in s)
    # real examples per step as shard_sizes says (a pad batch counts 0): each sample once
    real = [b[:loaders[0].shard_sizes(k)[r]] for r, s in enumerate(shards) for k, b in enumerate(s)]
    seen = torch.cat(real).tolist()
    assert len(seen) == len(set(seen))  # no sample twice
    if not drop_last:
        assert set(seen) == set(range(n))  # every sample
    # torch's DistributedSampler order (seed + epoch), without its wrap-around padding
    for r, L in enumerate(loaders):
        for epoch in (0, 3):
            ds = DistributedSampler(range(n), world, r, shuffle=True, seed=1, drop_last=drop_last)
            ds.set_epoch(epoch)
            got = L.indices(epoch).tolist()
            assert got == list(ds)[:len(got)] and len(got) >= len(ds) - 1


def test_loader_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        md.TensorBatchLoader(_ids(10), 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        md.TensorBatchLoader(_ids(10), 0)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        md.TensorBatchLoader(_ids(10), 8, world_size=2, drop_last=True)


# ---------------------------------------------------------------------------------------
# multi_digits: model through methods.backward
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    return envs.create("multi_digits", n_train=256, n_val=64, n_test=64)


def _batch(bench, n=32):
    return next(iter(bench.make_loader("train", n)))


def _grads(params):
    return torch.cat([p.grad.reshape(-1) for p in params])


@pytest.mark.parametrize("name, level", [("ew", "auto"), ("imtl_g", "param"), ("imtl_g", "rep")])
def test_model_backward_through_engine(small, name, level):
    torch.manual_seed(0)
    model = small.build_model()
    batch = _batch(small)
    fwd = small.forward_losses(model, batch)
    assert fwd.losses.shape == (2,) and fwd.rep.shape == (32, 64)
    assert set(fwd.outputs) == {"left", "right"}
    shared, heads = model.shared_parameters(), model.all_task_parameters()
    assert {id(p) for p in shared}.isdisjoint(id(p) for p in heads)
    assert len(shared) + len(heads) == len(list(model.parameters()))
    method = methods.create(name, 2)
    res = methods.backward(method, fwd.losses, shared, heads, rep=fwd.rep, level=level)
    assert res.path == ("loss" if name == "ew" else level)
    # the shared update is ∇ Σ_t w_t L_t (param and rep level alike)
    w = res.weights.detach()
    fwd2 = small.forward_losses(model, batch)
    ref = torch.autograd.grad((w * fwd2.losses).sum(), shared)
    assert torch.allclose(_grads(shared), torch.cat([g.reshape(-1) for g in ref]), atol=1e-5)
    assert all(p.grad is not None for p in heads)
    if name == "ew":
        assert torch.equal(w, torch.ones(2))


def test_loss_scale_multiplies_losses_and_ew_feels_it_but_imtl_g_does_not(small):
    scaled = envs.create("multi_digits", n_train=256, n_val=64, n_test=64, loss_scale=(1.0, 10.0))
    torch.manual_seed(0)
    model = small.build_model()
    batch = _batch(small)
    base = small.forward_losses(model, batch).losses
    assert torch.allclose(
        scaled.forward_losses(model, batch).losses, base * torch.tensor([1.0, 10.0])
    )

    def direction(bench, name):
        model.zero_grad(set_to_none=True)
        fwd = bench.forward_losses(model, batch)
        methods.backward(methods.create(name, 2), fwd.losses, model.shared_parameters(),
                         model.all_task_parameters(), level="param")  # fmt: skip
        return _grads(model.shared_parameters())

    cos = torch.nn.functional.cosine_similarity
    ew = cos(direction(small, "ew"), direction(scaled, "ew"), dim=0)
    imtl = cos(direction(small, "imtl_g"), direction(scaled, "imtl_g"), dim=0)
    assert imtl > 1 - 1e-4  # IMTL-G is invariant to loss scales (the IMTL experiment)
    assert ew < 0.99  # equal weighting follows the ×10 task


def test_evaluator_accuracy_pooled(small):
    torch.manual_seed(0)
    model = small.build_model()
    ev = small.new_evaluator()
    correct = {"left": 0, "right": 0}
    n = 0
    with torch.no_grad():
        for batch in small.make_loader("test", 24):
            fwd = small.forward_losses(model, batch)
            ev.update(fwd, batch)
            for t in correct:
                correct[t] += int((fwd.outputs[t].argmax(1) == batch[t]).sum())
            n += len(batch["left"])
    assert ev.compute() == {t: {"accuracy": c / n} for t, c in correct.items()}


def test_ew_learns_quickly():
    """The embedded default must learn well above chance (10 %) within seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a shared 2-core machine can be 10× slower
    try:
        bench = envs.create("multi_digits", n_train=3000, n_test=1000)
        model = md.fit(bench, methods.create("ew", 2), epochs=3, seed=0)  # 141 steps
        acc = md.evaluate(bench, model)
    finally:
        torch.set_num_threads(threads)
    assert acc["left"]["accuracy"] > 0.5 and acc["right"]["accuracy"] > 0.5


def test_stl_reference_for_default_data_only():
    b = envs.create("multi_digits")
    assert b.stl_reference == {t: {"accuracy": md.STL_ACCURACY[t]} for t in md.TASKS}
    assert all(0.9 < v <= 1 for v in md.STL_ACCURACY.values())  # fractions, like the evaluator
    assert envs.create("multi_digits", loss_scale=(1.0, 10.0)).stl_reference == b.stl_reference
    assert envs.create("multi_digits", data_seed=1).stl_reference is None


# ---------------------------------------------------------------------------------------
# toy
# ---------------------------------------------------------------------------------------


def _toy_by_hand(x1, x2, scale):
    """The CAGrad toy objectives written out with ``math`` (independent of envs.toy)."""
    c1, c2 = max(math.tanh(x2 / 2), 0.0), max(math.tanh(-x2 / 2), 0.0)
    g1 = math.log(max(abs(0.5 * (-x1 - 7) - math.tanh(-x2)), 5e-6)) + 6
    g2 = math.log(max(abs(0.5 * (-x1 + 3) + math.tanh(-x2) + 2), 5e-6)) + 6
    h1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    h2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    return scale * (c1 * g1 + c2 * h1), c1 * g2 + c2 * h2


@pytest.mark.parametrize("point", [(0.0, 0.0), (1.0, 2.0), (-8.5, 7.5), (9.0, -1.0), (3.0, -8.0)])
@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_toy_loss_matches_formula(point, scale):
    got = toy.loss(torch.tensor(point, dtype=torch.float64), scale)
    assert got.tolist() == pytest.approx(_toy_by_hand(*point, scale), rel=1e-12, abs=1e-12)
    batch = toy.loss(torch.tensor([point, point], dtype=torch.float64), scale)
    assert batch.shape == (2, 2)


def _jacobian(x, scale):
    x = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    f = toy.loss(x, scale)
    return torch.stack([torch.autograd.grad(f[i], x, retain_graph=True)[0] for i in range(2)])


def _min_norm(J):
    """min over λ ∈ simplex of ‖λ g₁ + (1 − λ) g₂‖ (closed form for two tasks)."""
    g1, g2 = J
    d = g1 - g2
    lam = float(((g2 - g1) @ g2) / (d @ d).clamp_min(1e-300)) if float(d @ d) > 0 else 0.5
    lam = min(max(lam, 0.0), 1.0)
    return float((lam * g1 + (1 - lam) * g2).norm())


@pytest.mark.parametrize("w", [0.0, 0.1, 0.3, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_pareto_points_are_stationary(w, scale):
    x = toy.pareto_point(w)
    J = _jacobian(x, scale)
    # stationary for the convex combination (w/scale, 1 − w), normalised
    lam = torch.tensor([w / scale, 1 - w], dtype=torch.float64)
    assert (lam / lam.sum() @ J).norm() < 1e-9
    assert _min_norm(J) < 1e-9
    assert x[0] == pytest.approx(7 * (2 * w - 1))


def test_pareto_front_shape_and_reference_line():
    pts, vals = toy.pareto_front(11, scale=1.0)
    assert pts.shape == vals.shape == (11, 2)
    # the reference plots' constant x₂ = −8.3552 is the w = ½ point
    assert toy.pareto_point(0.5)[1] == pytest.approx(toy.REFERENCE_FRONT_X2, abs=1e-3)
    # moving along the front trades f₁ against f₂ (f₁ falls, f₂ rises as w grows)
    assert np.all(np.diff(vals[:, 0]) < 0) and np.all(np.diff(vals[:, 1]) > 0)
    # the starting points are not Pareto-stationary, (0, 0) included (where both c₁ and
    # c₂ sit on their clamp: the reference's torch 1.x subgradient 1 applies)
    for s in toy.STARTS + toy.CAGRAD_STARTS:
        assert _min_norm(_jacobian(s, 0.1)) > 1e-3
    J0 = _jacobian((0.0, 0.0), 1.0)
    by_hand = 0.5 * (math.log(3.5) + 6) + 0.5 * 14.46  # c₁′g₁ − c₂′h₁ at the origin
    assert J0.reshape(-1).tolist() == pytest.approx([0.0, by_hand, 0.0, by_hand], rel=1e-9)


def test_run_trajectory_with_methods():
    tr = toy.run_trajectory("ew", 0, steps=200)
    assert tr.x.shape == (201, 2) and tr.losses.shape == (201, 2) and tr.weights.shape == (200, 2)
    assert np.isfinite(tr.x).all() and tuple(tr.x[0]) == toy.STARTS[0]
    assert tr.losses[-1].sum() < tr.losses[0].sum()  # EW descends f₁ + f₂
    m = methods.create("imtl_g", 2)
    tr2 = toy.run_trajectory(m, (1.0, -3.0), steps=100, scale=1.0)
    assert np.allclose(tr2.weights.sum(1), 1.0) and tr2.method == "imtl_g"
    with pytest.raises(ValueError, match="start"):
        toy.run_trajectory("ew", 9, steps=10)
    with pytest.raises(ValueError, match="2 tasks"):
        toy.run_trajectory(methods.create("ew", 3), 0, steps=10)


def test_log_methods_need_shifted_losses():
    """FAMO takes log(L): the toy's negative losses need FAMO's L* = (−21·scale, −21)."""
    tr = toy.run_trajectory("famo", 1, steps=50, shift_losses=True)
    assert np.isfinite(tr.losses).all()
    with pytest.raises(ValueError):
        toy.run_trajectory("famo", 1, steps=5, shift_losses=False)


def test_toy_benchmark_plugs_into_the_engine():
    bench = envs.create("toy", start=(-8.5, -5.0), steps_per_epoch=7)
    model = bench.build_model()
    assert model.shared_parameters() == [model.x] and model.all_task_parameters() == []
    loader = bench.make_loader("train", 1, rank=1, world_size=2)
    batches = list(loader)
    assert len(batches) == len(loader) == 7
    assert len(list(bench.make_loader("test", 1))) == 1
    fwd = bench.forward_losses(model, batches[0])
    assert fwd.rep is None
    methods.backward(methods.create("imtl_g", 2), fwd.losses, model.shared_parameters(),
                     model.all_task_parameters())  # fmt: skip
    assert model.x.grad is not None and torch.isfinite(model.x.grad).all()
    ev = bench.new_evaluator()
    ev.update(fwd, batches[0])
    expected = _toy_by_hand(-8.5, -5.0, 0.1)
    out = ev.compute()
    assert [out["f1"]["loss"], out["f2"]["loss"]] == pytest.approx(expected, rel=1e-5)
    shifted = envs.create("toy", shift_losses=True)
    f = shifted.forward_losses(shifted.build_model(), {}).losses
    assert (f > 0).all()


@pytest.mark.parametrize(
    "options, match",
    [({"start": 5}, "start"), ({"start": (1.0,)}, "start"), ({"scale": 0.0}, "scale"),
     ({"steps_per_epoch": 0}, "steps_per_epoch"), ({"lr": 1.0}, "valid: scale, start")],
)  # fmt: skip
def test_toy_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        envs.create("toy", **options)


def test_plot_trajectories_draws(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    tr = toy.run_trajectory("ew", 2, steps=20)
    for space in ("loss", "param"):
        ax = toy.plot_trajectories([tr], space=space)
        assert len(ax.lines) == 2
        ax.figure.savefig(tmp_path / f"{space}.png")
    with pytest.raises(ValueError, match="space"):
        toy.plot_trajectories([tr], space="x")
