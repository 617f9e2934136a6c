"""UPGrad, DualProj, FairGrad, SDMGrad, MoDo, ExcessMTL, STCH and SI-LS: each paper's
properties checked with references written here (numpy/scipy solves, simplex grids, autograd
of the published loss), and numbers pinned from running the reference implementations:

* TorchJD 0.8.1 (pip; same algorithm as github.com/TorchJD/torchjd at 46962c2),
  ``UPGradWeighting`` / ``DualProjWeighting`` on K = G Gᵀ, with quadprog 0.1.14;
* LibMTL at github.com/median-research-group/LibMTL 4336804 (``LibMTL/weighting/*.py``),
  each weighting driven on losses L_t = c_t + g_tᵀθ at θ = 0 (so ∇L_t = g_t) with float64
  tensors; SDMGrad and MoDo given three identical batches (their single-batch variant). The
  pinned d is the shared gradient LibMTL wrote into θ.grad.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import lsq_linear

import methods
from methods.stch import smooth_max, stch_loss
from tests.engine_cases import TinyMTL, make_data
from tests.method_cases import ill_scaled_battery, roundtrip

DT = torch.float64
NEW = ["upgrad", "dualproj", "fairgrad", "sdmgrad", "modo", "excess_mtl", "stch", "si_ls"]

G1 = np.array([[4.0, 0.0, 1.0, 0.0], [-0.5, 1.0, 0.0, 0.5], [0.2, 0.1, -0.3, 1.0]])
G2 = np.array([[1.0, 2.0, 0.0], [0.5, -1.0, 1.5]])
G3 = np.array([[1.0, 0.0, 0.0], [-0.9, 0.1, 0.2], [0.3, -1.0, 0.5]])
G4 = np.array([[1.0, 0.0], [-0.9, 0.1], [0.3, -1.0]])  # rank 2: K is singular
C1, C2 = np.array([0.7, 1.3, 2.1]), np.array([0.4, 2.5])


def agg(name, G, losses=None, method=None, **hp):
    G = np.asarray(G, dtype=np.float64)
    m = method if method is not None else methods.create(name, G.shape[0], **hp)
    L = torch.ones(G.shape[0], dtype=DT) if losses is None else torch.as_tensor(losses, dtype=DT)
    return m.aggregate(torch.from_numpy(G), L)


def random_cases(n=40, seed=0, max_tasks=6):
    """Random full-rank gradients with row norms spread over 10⁻²…10², T = 2..max_tasks."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        T = int(rng.integers(2, max_tasks + 1))
        yield rng.standard_normal((T, T + int(rng.integers(0, 4)))) * 10.0 ** rng.uniform(
            -2, 2, size=(T, 1))


def conflict(G, d):
    """min_t g_tᵀd / (‖g_t‖‖d‖): ≥ 0 means no task is hurt by the update."""
    return float(np.min(G @ d / (np.linalg.norm(G, axis=1) * np.linalg.norm(d) + 1e-300)))


def test_new_methods_are_registered_with_their_capabilities():
    assert set(NEW) <= set(methods.available())
    cls = methods.get_class
    for name in ("upgrad", "dualproj", "fairgrad", "sdmgrad", "modo"):
        assert cls(name).gramian_only and cls(name).supports_rep_grads, name
    assert cls("excess_mtl").requires_grads and not cls("excess_mtl").supports_rep_grads
    for name in ("stch", "si_ls"):
        assert not cls(name).requires_grads and cls(name).positive_losses, name
    assert cls("fairgrad").default_head_update == "weighted"
    assert {cls(n).stateful for n in ("sdmgrad", "modo", "excess_mtl", "stch")} == {True}


@pytest.mark.parametrize("name,bad", [
    ("upgrad", {"reg_eps": -1.0}), ("dualproj", {"norm_eps": float("nan")}),
    ("fairgrad", {"alpha": 0.0}), ("fairgrad", {"max_iter": 0}), ("sdmgrad", {"lamda": -0.1}),
    ("sdmgrad", {"niter": 1.5}), ("sdmgrad", {"inner_lr": 0.0}), ("modo", {"gamma": 0.0}),
    ("modo", {"rho": -1.0}), ("excess_mtl", {"robust_step_size": -1.0}), ("stch", {"mu": 0.0}),
    ("stch", {"warmup_epochs": -1}),
])
def test_invalid_hyperparameters_are_refused_at_construction(name, bad):
    key = next(iter(bad))
    with pytest.raises(ValueError, match=key):
        methods.create(name, 3, **bad)


@pytest.mark.parametrize("name", NEW)
def test_each_new_method_trains_through_the_engine(name):
    levels = ["param"] + (["rep"] if methods.get_class(name).supports_rep_grads else [])
    for level in levels:
        model = TinyMTL(3)
        x, y = make_data()
        m = methods.create(name, 3)
        m.start_epoch(0, 2)
        losses, rep = model.losses(x, y)
        res = methods.backward(m, losses, model.shared_parameters(), model.task_parameters(),
                               rep=rep, level=level)
        assert all(torch.isfinite(p.grad).all() for p in model.shared_parameters()), level
        assert res.info.get("solver_failed", 0.0) == 0.0


@pytest.mark.parametrize("name", ["upgrad", "dualproj", "fairgrad", "sdmgrad", "modo"])
def test_gramian_entry_point_gives_the_same_weights(name):
    """What rep-level and distributed training rely on: the weights from K alone (the engine's
    all-reduced Gramian) equal those from G, step after step for the stateful ones."""
    a, b = methods.create(name, 3), methods.create(name, 3)
    for k in range(3):
        G = G3 * (1 + 0.3 * k)
        w, _ = b.weights_from_gramian(torch.from_numpy(G @ G.T), torch.ones(3, dtype=DT))
        torch.testing.assert_close(agg(name, G, method=a).weights, w, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------
# UPGrad and DualProj: projections onto the dual cone {x : Gx ≥ 0}
# ---------------------------------------------------------------------------------------

# TorchJD 0.8.1: UPGradWeighting()(K) / DualProjWeighting()(K) (norm_eps = reg_eps = 1e-4),
# and with norm_eps = reg_eps = 0 (quadprog refuses the singular K of G4 then)
TORCHJD = {
    ("upgrad", "G1"): ([0.3725444895660289, 0.777196612790542, 0.3333333333333333],
                       [0.37254901960784315, 0.7777777777777777, 0.33333333333333326]),
    ("dualproj", "G1"): ([1 / 3, 1 / 3, 1 / 3], [1 / 3, 1 / 3, 1 / 3]),
    ("upgrad", "G2"): ([0.6499745043342632, 0.7142336861048031], [0.65, 0.7142857142857143]),
    ("dualproj", "G2"): ([0.5, 0.5], [0.5, 0.5]),
    ("upgrad", "G3"): ([0.6332304583919657, 0.7866530283305437, 0.3333563595378295],
                       [0.6333333333333333, 0.7868217054263565, 0.33333333333333326]),
    ("dualproj", "G3"): ([0.3333333333333333, 0.45331969499721037, 0.33333333333333337],
                         [0.3333333333333333, 0.4534883720930233, 0.3333333333333333]),
    ("upgrad", "G4"): ([3.3745940053943446, 3.8853651193078074, 0.4049299108561126], None),
    ("dualproj", "G4"): ([2.7513497175543824, 3.1690559559135445, 0.3333333333333333], None),
}
INPUTS = {"G1": G1, "G2": G2, "G3": G3, "G4": G4}


@pytest.mark.parametrize("key", sorted(TORCHJD))
def test_dual_cone_methods_match_torchjd(key):
    name, g = key
    regularised, exact = TORCHJD[key]
    w = agg(name, INPUTS[g], norm_eps=1e-4, reg_eps=1e-4).weights.numpy()
    np.testing.assert_allclose(w, regularised, rtol=1e-9, atol=1e-12)
    if exact is not None:
        np.testing.assert_allclose(agg(name, INPUTS[g]).weights.numpy(), exact, rtol=1e-9)


def projection_weights(G, u):
    """Independent reference: argmin_{v ≥ u} ‖Gᵀv‖² as bounded least squares (scipy BVLS)."""
    res = lsq_linear(G.T, np.zeros(G.shape[1]), bounds=(u, np.inf), method="bvls", tol=1e-14)
    return res.x


@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
def test_dual_cone_methods_never_conflict_and_satisfy_the_kkt_conditions(name):
    for G in random_cases():
        T = G.shape[0]
        a = agg(name, G)
        w, d = a.weights.numpy(), a.direction.numpy()
        assert a.info["solver_failed"] == 0
        assert conflict(G, d) >= -1e-9, (name, G)
        U = np.eye(T) / T if name == "upgrad" else np.full((1, T), 1.0 / T)
        d_ref = sum(G.T @ projection_weights(G, u) for u in U)
        np.testing.assert_allclose(d, d_ref, rtol=1e-7, atol=1e-9 * np.abs(d_ref).max())
        if name == "dualproj":  # KKT of min vᵀKv s.t. v ≥ u, in units of ‖g_t‖‖d‖
            slack, grad = w - 1.0 / T, G @ d
            scale = np.linalg.norm(G, axis=1) * np.linalg.norm(d)
            assert slack.min() >= -1e-12 and (grad / scale).min() >= -1e-9
            assert np.abs(slack * grad / scale).max() <= 1e-9 * max(1.0, np.abs(w).max())


def test_upgrad_weights_equal_an_independent_qp_solve():
    for G in random_cases(seed=1):
        T = G.shape[0]
        ref = sum(projection_weights(G, u) for u in np.eye(T) / T)
        np.testing.assert_allclose(agg("upgrad", G).weights.numpy(), ref, rtol=1e-6, atol=1e-9)


def test_without_conflict_both_give_the_mean_gradient():
    G = np.abs(np.random.default_rng(2).standard_normal((4, 6))) + 0.1  # all gᵢᵀgⱼ > 0
    for name in ("upgrad", "dualproj"):
        np.testing.assert_allclose(agg(name, G).weights.numpy(), np.full(4, 0.25), rtol=1e-12)


def test_dual_cone_weights_are_scale_invariant_and_exact_on_the_battery():
    for label, G in ill_scaled_battery():
        for name in ("upgrad", "dualproj"):
            a, b = agg(name, G), agg(name, 1e3 * G)
            np.testing.assert_allclose(a.weights.numpy(), b.weights.numpy(), rtol=1e-6,
                                       atol=1e-9 * np.abs(a.weights.numpy()).max())
            # non-conflicting up to what the Gramian can resolve (rows 1e-7 from parallel)
            tol = 1e-9 + 10 * a.info["unresolved"]
            assert conflict(G, a.direction.numpy()) >= -tol, (name, label, a.info)


def test_regularisation_loosens_non_conflict_as_documented():
    """TorchJD's reg_eps: (Kw)_t ≥ −reg_eps·tr(K)·v_t only, which the exact default avoids."""
    G = np.array([[1.0, 0.0], [-1.5, 0.1]])  # the mean gradient conflicts with task 0
    K = G @ G.T
    w = agg("dualproj", G, norm_eps=1e-4, reg_eps=1e-2).weights.numpy()
    assert (K @ w).min() < -1e-3  # the regularised projection conflicts
    assert (K @ w).min() >= -1e-2 * np.trace(K) * w.max()
    exact = agg("dualproj", G).weights.numpy()
    assert (K @ exact).min() >= -1e-12
    np.testing.assert_allclose(exact, [0.75, 0.5], rtol=1e-12)  # (Kw)_0 = 0 on the boundary


def test_an_uncertified_projection_is_counted_and_warned_once(monkeypatch):
    import methods.upgrad as up

    class Wrong:
        def __init__(self, x):
            self.x = np.zeros_like(x)

    monkeypatch.setattr(up, "_lawson_hanson", lambda A, b: np.zeros_like(b))
    monkeypatch.setattr(up, "minimize", lambda f, x, **kw: Wrong(x))
    m = methods.create("upgrad", 3)
    with pytest.warns(RuntimeWarning, match="upgrad: .* dual-cone QP"):
        assert agg("upgrad", G3, method=m).info["solver_failed"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert agg("upgrad", G3, method=m).info["solver_failed"] == 1


# ---------------------------------------------------------------------------------------
# FairGrad: (Kw)_t = w_t^{−1/α}
# ---------------------------------------------------------------------------------------

# LibMTL FairGrad.backward (scipy least_squares from 1/T), returned weights
LIBMTL_FAIRGRAD = {
    ("G1", 1.0): [0.28821245994315364, 0.893146187190252, 0.7126863584416899],
    ("G1", 2.0): [0.2051613240546853, 0.8019862306087064, 0.6479838984270988],
    ("G1", 0.5): [0.4224219420714683, 0.9859106389069536, 0.7895271323930435],
    ("G2", 1.0): [0.5583928953351104, 0.6674071637535867],
    ("G2", 2.0): [0.4658514560010074, 0.5760846051671353],
    ("G2", 0.5): [0.6728284943817006, 0.7701101288479729],
}


@pytest.mark.parametrize("key", sorted(LIBMTL_FAIRGRAD))
def test_fairgrad_matches_libmtl(key):
    g, alpha = key
    a = agg("fairgrad", INPUTS[g], alpha=alpha)
    # least_squares stops at its default ftol (1e-8): agreement to ~1e-7
    np.testing.assert_allclose(a.weights.numpy(), LIBMTL_FAIRGRAD[key], rtol=1e-6)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 3.0])
def test_fairgrad_solves_its_optimality_condition(alpha):
    for G in random_cases(seed=3):
        K = G @ G.T
        a = agg("fairgrad", G, alpha=alpha)
        w = a.weights.numpy()
        assert a.info["solver_failed"] == 0 and (w > 0).all()
        assert np.abs(w ** (1 / alpha) * (K @ w) - 1).max() < 1e-6


def test_fairgrad_alpha_1_is_nash_mtl_proportional_fairness():
    for G in random_cases(seed=4):
        f = agg("fairgrad", G, alpha=1.0)
        n = agg("nash_mtl", G)  # aggregate() is unclipped; its clipping is in the engine
        np.testing.assert_allclose(f.weights.numpy(), n.weights.numpy(), rtol=1e-5)
        np.testing.assert_allclose(f.direction.numpy(), n.direction.numpy(), rtol=1e-5,
                                   atol=1e-9 * np.abs(n.direction.numpy()).max())


def alpha_utility(G, d, alpha):
    u = G @ d
    if (u <= 0).any():
        return -np.inf
    return float(np.log(u).sum()) if alpha == 1 else float((u ** (1 - alpha)).sum() / (1 - alpha))


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_fairgrad_direction_maximises_the_alpha_fair_utility_on_its_sphere(alpha):
    rng = np.random.default_rng(5)
    for G in random_cases(n=10, seed=6, max_tasks=4):
        d = agg("fairgrad", G, alpha=alpha).direction.numpy()
        best = alpha_utility(G, d, alpha)
        for _ in range(200):
            e = d + 0.05 * np.linalg.norm(d) * rng.standard_normal(d.shape)
            e *= np.linalg.norm(d) / np.linalg.norm(e)
            assert alpha_utility(G, e, alpha) <= best + 1e-9 * abs(best)


def test_fairgrad_scaling_and_failure():
    G = G3
    a, b = agg("fairgrad", G, alpha=2.0), agg("fairgrad", 10 * G, alpha=2.0)
    # K → 100 K scales the solution by 100^(−α/(1+α))
    np.testing.assert_allclose(b.weights.numpy(), a.weights.numpy() * 100 ** (-2 / 3), rtol=1e-7)
    m = methods.create("fairgrad", 2)
    with pytest.warns(RuntimeWarning, match="fairgrad: no solution"):
        bad = agg("fairgrad", [[1.0, 2.0], [-1.0, -2.0]], method=m)  # g₂ = −g₁: no solution
    assert bad.info["solver_failed"] == 1
    np.testing.assert_allclose(bad.weights.numpy(), [0.5, 0.5])


def test_fairgrad_extreme_alpha_is_exact_to_rounding_and_never_accepts_a_divergence():
    """α = 0.2 on norms 10⁷ apart: w_t^5 (Kw)_t − 1 is beyond float64 for the small task, so
    the condition is checked to the rounding error of (Kw)_t; improvements stay ≥ 0."""
    G = np.array([[1e-4, 0.0, 0.0], [-900.0, 400.0, 100.0], [10.0, 30.0, -50.0]])
    a = agg("fairgrad", G, alpha=0.2)
    w, K = a.weights.numpy(), G @ G.T
    assert a.info["solver_failed"] == 0 and (w > 0).all()
    assert np.all(np.abs(K @ w - w**-5.0) <= 1e-9 * (np.abs(K) @ w) + 1e-6 * w**-5.0)
    assert (G @ a.direction.numpy()).min() >= -1e-9 * np.abs(K).max() * w.max()
    # g₀ = −g₁ beside a third task: 0 is in the convex hull, no solution, counted
    with pytest.warns(RuntimeWarning, match="no solution"):
        bad = agg("fairgrad", [[1.0, 2.0, 0.0], [-1.0, -2.0, 0.0], [0.0, 0.0, 1.0]], alpha=0.2)
    assert bad.info["solver_failed"] == 1


# ---------------------------------------------------------------------------------------
# SDMGrad and MoDo (single-batch variants: LibMTL with three identical batches)
# ---------------------------------------------------------------------------------------

# (weights state after each of two steps, the direction LibMTL wrote into θ.grad)
LIBMTL_SDMGRAD = {  # lamda 0.3, niter 20
    "G1": [([0.0, 0.8905287756302969, 0.10947122436970336],
            [-0.04105395610862137, 0.7780583831286672, 0.02858356360699153, 0.5421043170652706]),
           ([0.0, 0.829969424227148, 0.17003057577285197],
            [-0.00844507458384893, 0.7361326783111024, 0.01460832866780339, 0.5653963752972507])],
    "G2": [([1.0, 0.0], [0.9423076923076923, 1.6538461538461537, 0.17307692307692304]),
           ([1.0, 0.0], [0.9423076923076923, 1.6538461538461537, 0.17307692307692304])],
}
LIBMTL_MODO = {  # gamma 0.1, rho 0.1
    "G1": [([0.01266666666666674, 0.5293333333333333, 0.45799999999999996],
            [-0.12239999999999969, 0.5751333333333333, -0.12473333333333325, 0.7226666666666666]),
           ([0.11652177777777775, 0.4668217777777778, 0.41665644444444444],
            [0.31600751111111103, 0.5084874222222222, -0.00847515555555557, 0.6500673333333333])],
    "G2": [([0.46249999999999997, 0.5375000000000001], [0.73125, 0.38749999999999984,
                                                        0.8062500000000001]),
           ([0.4469375, 0.5530625], [0.72346875, 0.34081249999999996, 0.82959375])],
}


@pytest.mark.parametrize("g", ["G1", "G2"])
def test_sdmgrad_and_modo_match_libmtl_with_identical_batches(g):
    sdm = methods.create("sdmgrad", INPUTS[g].shape[0], lamda=0.3, niter=20)
    modo = methods.create("modo", INPUTS[g].shape[0], gamma=0.1, rho=0.1)
    for k in range(2):
        a = agg("sdmgrad", INPUTS[g], method=sdm)
        state, d = LIBMTL_SDMGRAD[g][k]
        np.testing.assert_allclose(sdm.w.numpy(), state, atol=1e-12)
        np.testing.assert_allclose(a.direction.numpy(), d, rtol=1e-10, atol=1e-12)
        a = agg("modo", INPUTS[g], method=modo)
        state, d = LIBMTL_MODO[g][k]
        np.testing.assert_allclose(modo.lambd.numpy(), state, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(a.direction.numpy(), d, rtol=1e-12, atol=1e-14)


def simplex_grid(T, n):
    if T == 2:
        x = np.linspace(0, 1, n + 1)
        return np.stack([x, 1 - x], 1)
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = i + j <= n
    return np.stack([i[keep], j[keep], n - i[keep] - j[keep]], 1) / n


def test_sdmgrad_inner_iterations_reach_the_regularised_min_norm_point_with_a_small_step():
    """With step 0.05 the iterations converge to argmin_Δ ½wᵀK̂w + λ wᵀK̂1/T (checked on a
    simplex grid); with the reference's step 5 they settle well above that minimum."""
    rng = np.random.default_rng(7)
    W = simplex_grid(3, 300)
    for _ in range(3):
        G = rng.standard_normal((3, 5))
        K = G @ G.T
        Kh = K / (np.mean(np.sqrt(np.diag(K))) ** 2 + 1e-8)

        def f(w, Kh=Kh):
            return 0.5 * w @ Kh @ w + 0.3 * w @ Kh.mean(1)

        grid_min = (0.5 * np.einsum("ni,ij,nj->n", W, Kh, W) + 0.3 * W @ Kh.mean(1)).min()
        slow = methods.create("sdmgrad", 3, inner_lr=0.05, niter=1000)
        fast = methods.create("sdmgrad", 3)
        for _ in range(4):
            agg("sdmgrad", G, method=slow)
            agg("sdmgrad", G, method=fast)
        assert f(slow.w.numpy()) <= grid_min + 1e-9
        assert f(fast.w.numpy()) > grid_min + 1e-2


def test_sdmgrad_direction_interpolates_mgda_and_the_mean():
    G = G3
    w = agg("sdmgrad", G, lamda=1e6).weights.numpy()
    np.testing.assert_allclose(w, np.full(3, 1 / 3), rtol=1e-5)
    m = methods.create("sdmgrad", 3, lamda=0.5)
    a = agg("sdmgrad", G, method=m)
    np.testing.assert_allclose(a.weights.numpy(), (m.w.numpy() + 0.5 / 3) / 1.5, rtol=1e-12)


def test_modo_converges_to_the_regularised_min_norm_point():
    """The recursion λ ← Π_Δ(λ − γ(K + ρI)λ) on a fixed K ends at argmin_Δ ½λᵀ(K + ρI)λ."""
    G = G2
    K = G @ G.T + 0.1 * np.eye(2)
    W = simplex_grid(2, 100000)
    ref = W[np.argmin(np.einsum("ni,ij,nj->n", W, K, W))]
    m = methods.create("modo", 2, gamma=0.05, rho=0.1)
    for _ in range(2000):
        a = agg("modo", G, method=m)
    np.testing.assert_allclose(a.weights.numpy(), ref, atol=2e-5)
    np.testing.assert_allclose(a.direction.numpy(), a.weights.numpy() @ G, rtol=1e-12)


@pytest.mark.parametrize("name", ["sdmgrad", "modo", "excess_mtl"])
def test_stateful_weights_resume_exactly(name):
    m = methods.create(name, 3)
    for k in range(3):
        agg(name, G3 * (1 + 0.1 * k), method=m)
    r = roundtrip(m, methods.create(name, 3))
    x, y = agg(name, G3 * 0.7, method=m), agg(name, G3 * 0.7, method=r)
    assert torch.equal(x.weights, y.weights) and torch.equal(x.direction, y.direction)


# ---------------------------------------------------------------------------------------
# ExcessMTL
# ---------------------------------------------------------------------------------------

LIBMTL_EXCESS = {  # robust_step_size 0.5; step k uses G_t · (1 + 0.5 k t/T), t = 1..T
    "G1": [([1.0, 1.0, 1.0], [3.7, 1.1, 0.7, 1.5]),
           ([0.91095980076139, 0.9971811593160702, 1.0918590399225394],
            [3.9139160093192022, 1.4933537350764745, 0.5714498662564791, 2.302575999427856]),
           ([0.7687989473868964, 0.9800417696898442, 1.251159282923259],
            [3.78402329115788, 1.8836348060677253, 0.274369693428573, 3.3190200405880548])],
    "G2": [([1.0, 1.0], [1.5, 1.0, 1.5]),
           ([0.9321072381267868, 1.0678927618732132],
            [1.9660536190633935, 0.7284289525071471, 2.40275871421473]),
           ([0.8190383082183854, 1.1809616917816146],
            [2.4095191541091925, 0.09519154109192707, 3.5428850753448438])],
}


@pytest.mark.parametrize("g", ["G1", "G2"])
def test_excess_mtl_matches_libmtl(g):
    G = INPUTS[g]
    T = G.shape[0]
    m = methods.create("excess_mtl", T, robust_step_size=0.5)
    for k, (w_ref, d_ref) in enumerate(LIBMTL_EXCESS[g]):
        a = agg("excess_mtl", G * (1 + 0.5 * k * np.arange(1, T + 1) / T)[:, None], method=m)
        np.testing.assert_allclose(a.weights.numpy(), w_ref, rtol=1e-12)
        np.testing.assert_allclose(a.direction.numpy(), d_ref, rtol=1e-12, atol=1e-14)


def test_excess_mtl_raises_the_weight_of_the_task_with_larger_excess_risk():
    """Independent recomputation of the estimates and the exponentiated-gradient step."""
    m = methods.create("excess_mtl", 2, robust_step_size=0.1)
    G0, G1_ = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 0.0], [0.0, 3.0]])
    agg("excess_mtl", G0, method=m)
    a = agg("excess_mtl", G1_, method=m)
    H = G0**2 + G1_**2
    e = (G1_**2 / np.sqrt(H + 1e-7)).sum(1)
    e0 = (G0**2 / np.sqrt(G0**2 + 1e-7)).sum(1)
    w = np.exp(0.1 * e / e0)
    np.testing.assert_allclose(a.weights.numpy(), 2 * w / w.sum(), rtol=1e-12)
    assert a.weights[1] > a.weights[0]


# ---------------------------------------------------------------------------------------
# STCH
# ---------------------------------------------------------------------------------------


def test_smooth_max_bounds_and_limit():
    f = torch.tensor([0.3, -1.2, 0.25, 0.1], dtype=DT)
    for mu in (1.0, 0.1, 0.01, 1e-4):
        s = float(smooth_max(f, mu))
        assert 0.3 <= s <= 0.3 + mu * math.log(4) + 1e-15
    assert float(smooth_max(f, 1e-6)) == pytest.approx(0.3, abs=1e-5)


def test_stch_weights_are_the_gradient_of_the_published_loss():
    m = methods.create("stch", 3, mu=0.3, warmup_epochs=0)
    m.start_epoch(0, 3)
    m.aggregate(None, torch.tensor([0.5, 2.0, 1.0], dtype=DT))
    m.start_epoch(1, 3)
    L = torch.tensor([0.4, 2.5, 0.6], dtype=DT, requires_grad=True)
    w = m.aggregate(None, L.detach()).weights
    nadir = torch.tensor([0.5, 2.0, 1.0], dtype=DT)
    # LibMTL: T · μ · log Σ exp((log(L/n + 1e-20) − max)/μ), the max detached
    f = torch.log(L / nadir + 1e-20)
    ref = 3 * 0.3 * torch.log(torch.exp((f - f.detach().max()) / 0.3).sum())
    (grad,) = torch.autograd.grad(ref, L)
    torch.testing.assert_close(w, grad, rtol=1e-12, atol=0)
    (grad2,) = torch.autograd.grad(stch_loss(L, nadir, 0.3), L)
    torch.testing.assert_close(w, grad2, rtol=1e-12, atol=0)


def test_stch_concentrates_on_the_worst_task_as_mu_goes_to_zero():
    L = torch.tensor([0.4, 2.5, 0.6], dtype=DT)
    shares = []
    for mu in (1.0, 0.1, 0.01):
        m = methods.create("stch", 3, mu=mu, warmup_epochs=0)
        m.aggregate(None, torch.ones(3, dtype=DT))  # epoch 0: nadir = 1
        m.start_epoch(1, 2)
        w = m.aggregate(None, L).weights
        shares.append(float((w * L)[1] / (w * L).sum()))  # task 1 has the largest log(L/n)
    assert shares[0] < shares[1] <= shares[2] and shares[2] > 1 - 1e-12


# LibMTL STCH.backward, warm-up 0: epoch 0 at losses C (nadir = C), epoch 1 at C · SCALE
SCALE = np.array([1.5, 1.2, 2.0])
LIBMTL_STCH = {
    "G1": {"warm": [5.424908424908425, 0.8168498168498168, 1.2857142857142858, 0.8608058608058607],
           1.0: [3.4627075052606977, 0.5213935001169046, 0.8206686930091188, 0.5494505494505495],
           0.1: [0.7348036593077284, 0.0781812868083111, -0.05025598791708287, 0.6778301893774001],
           0.01: [0.14285714286076243, 0.07142857142854853, -0.21428571428472923,
                  0.7142857142854853]},
    "G2": {"warm": [2.7, 4.6, 0.6000000000000001],
           1.0: [1.9999999999999998, 3.407407407407407, 0.4444444444444443],
           0.1: [3.0424447138227473, 5.9556055967519015, 0.09696287317019522],
           0.01: [3.3333333327222223, 6.6666666651728397, 2.0370359759194932e-10]},
}


@pytest.mark.parametrize("g", ["G1", "G2"])
def test_stch_matches_libmtl(g):
    G = INPUTS[g]
    T = G.shape[0]
    c = {"G1": C1, "G2": C2}[g]
    for mu in (1.0, 0.1, 0.01):
        m = methods.create("stch", T, mu=mu, warmup_epochs=0)
        m.start_epoch(0, 2)
        w = m.aggregate(None, torch.from_numpy(c)).weights.numpy()
        np.testing.assert_allclose(w @ G, LIBMTL_STCH[g]["warm"], rtol=1e-12)
        m.start_epoch(1, 2)
        w = m.aggregate(None, torch.from_numpy(c * SCALE[:T])).weights.numpy()
        np.testing.assert_allclose(w @ G, LIBMTL_STCH[g][mu], rtol=1e-8, atol=1e-12)


def test_stch_schedule_state_and_refusals():
    m = methods.create("stch", 2, warmup_epochs=2)
    seen = []
    for epoch, L in enumerate([[1.0, 2.0], [1.0, 2.0], [2.0, 4.0], [1.0, 1.0]]):
        m.start_epoch(epoch, 4)
        L = torch.tensor(L, dtype=DT)
        seen.append(m.aggregate(None, L).weights)
        if epoch == 2:
            m.aggregate(None, torch.tensor([4.0, 2.0], dtype=DT))  # nadir = mean = [3, 3]
    for w, L in zip(seen[:3], ([1.0, 2.0], [1.0, 2.0], [2.0, 4.0])):
        torch.testing.assert_close(w, 1 / (torch.tensor(L, dtype=DT) + 1e-20))
    torch.testing.assert_close(m.nadir, torch.tensor([3.0, 3.0], dtype=DT))
    torch.testing.assert_close(seen[3], torch.tensor([1.0, 1.0], dtype=DT))  # equal f: softmax ½
    r = roundtrip(m, methods.create("stch", 2, warmup_epochs=2))
    L = torch.tensor([0.5, 3.0], dtype=DT)
    assert torch.equal(r.aggregate(None, L).weights, m.aggregate(None, L).weights)
    skipped = methods.create("stch", 2, warmup_epochs=0)
    skipped.start_epoch(3, 4)
    with pytest.raises(ValueError, match="nadir"):
        skipped.aggregate(None, L)
    with pytest.raises(ValueError, match="positive"):
        methods.create("stch", 2).aggregate(None, torch.tensor([1.0, -1.0], dtype=DT))
    with pytest.raises(ValueError, match="loss_transform"):
        methods.create("stch", 2, loss_transform="log")


# ---------------------------------------------------------------------------------------
# SI-LS = EW on log losses
# ---------------------------------------------------------------------------------------


def _grads(name, scale=(1.0, 1.0, 1.0), **hp):
    model = TinyMTL(3)
    x, y = make_data()
    losses, _ = model.losses(x, y)
    methods.backward(methods.create(name, 3, **hp), losses * torch.tensor(scale),
                     model.shared_parameters(), model.task_parameters())
    return [p.grad.clone() for p in model.parameters()]


def test_si_ls_equals_ew_with_the_log_transform():
    for a, b in zip(_grads("si_ls"), _grads("ew", loss_transform="log")):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    plain = _grads("ew")
    assert any(not torch.allclose(a, b) for a, b in zip(_grads("si_ls"), plain))


def test_si_ls_is_invariant_to_rescaling_a_loss():
    for a, b in zip(_grads("si_ls"), _grads("si_ls", scale=(1.0, 1000.0, 0.1))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="si_ls already"):
        methods.create("si_ls", 3, loss_transform="log")
