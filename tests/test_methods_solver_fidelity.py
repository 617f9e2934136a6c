"""Every method on ill-scaled gradients: the condition its paper says the update satisfies,
checked with references written here (numpy solves, simplex grids, KKT residuals) and never
with the code under test. Inputs: :func:`tests.method_cases.ill_scaled_battery` (norms
10⁻⁴…10³ apart, nearly parallel rows, near rank deficiency, cond(K) = 1e12, T = 2..10).

The three pinned reproductions at the end are inputs on which earlier solvers returned
wrong weights without a word (IMTL-G's pseudo-inverse cutoff, SLSQP on CAGrad's dual,
Nash-MTL's iteration cap)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import methods
from tests.method_cases import ill_scaled_battery

DT = torch.float64
BATTERY = list(ill_scaled_battery())
GENERIC = [n for n in methods.available() if not methods.get_class(n).requires_model]


def run(name: str, G: np.ndarray, **hp):
    T = G.shape[0]
    m = methods.create(name, T, **hp)
    agg = m.aggregate(torch.from_numpy(G), torch.linspace(0.5, 2.0, T, dtype=DT))
    return m, agg


def unit_projections(G: np.ndarray, d: np.ndarray) -> np.ndarray:
    return G @ d / np.linalg.norm(G, axis=1)


def cosine_condition(G: np.ndarray) -> float:
    n = np.linalg.norm(G, axis=1)
    return float(np.linalg.cond(G @ G.T / np.outer(n, n)))


# ---------------------------------------------------------------------------------------
# every method: finite, and for Gramian methods the update is Gᵀw
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GENERIC)
def test_every_method_is_finite_and_consistent_on_the_battery(name):
    for label, G in BATTERY:
        m, agg = run(name, G)
        assert torch.isfinite(agg.weights).all(), (name, label)
        assert agg.info.get("solver_failed", 0.0) == 0.0, (name, label, agg.info)
        if agg.direction is None:
            continue
        assert torch.isfinite(agg.direction).all(), (name, label)
        if m.gramian_only:
            ref = agg.weights.numpy() @ G
            scale = np.abs(agg.weights.numpy())[:, None] * np.abs(G)
            assert np.all(np.abs(agg.direction.numpy() - ref) <= 1e-9 * scale.sum(0) + 1e-300)


# ---------------------------------------------------------------------------------------
# MGDA: min-norm point of the convex hull (KKT conditions)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mgda", "mgda_ub"])
def test_mgda_kkt_on_the_battery(name):
    worst = 0.0
    for label, G in BATTERY:
        _, agg = run(name, G)
        w, d = agg.weights.numpy(), agg.direction.numpy()
        assert abs(w.sum() - 1) < 1e-12 and w.min() >= 0, (label, w)
        nn2 = d @ d
        # g_tᵀd ≥ ‖d‖² for all t, with equality on the support; measured per task in units
        # of ‖g_t‖‖d‖ so that a tiny task's condition is not hidden by a large one's
        resid = (G @ d - nn2) / (np.linalg.norm(G, axis=1) * math.sqrt(nn2))
        support = w > 1e-9 * w.max()
        worst = max(worst, -resid.min(), np.abs(resid[support]).max())
        assert resid.min() >= -1e-6 and np.abs(resid[support]).max() <= 1e-6, (label, resid, w)
    print(f"\n[battery] {name}: worst KKT residual {worst:.2e}")


# ---------------------------------------------------------------------------------------
# CAGrad / IMGrad: the dual at its minimiser
# ---------------------------------------------------------------------------------------


def dual_terms(K: np.ndarray, w: np.ndarray, radius: float, lin: float, quad: float):
    """Objective, gradient and term size of lin·wᵀK1/T + quad·radius·sqrt(wᵀKw + 1e-8)."""
    T = K.shape[0]
    a = lin * K @ np.full(T, 1.0 / T)
    q = math.sqrt(max(w @ K @ w, 0.0) + 1e-8)
    return a @ w + quad * radius * q, a + quad * radius * (K @ w) / q, abs(a @ w) + quad * radius * q


def dual_grid_min(K, radius, lin, quad, steps):
    T = K.shape[0]
    if T == 2:
        x = np.linspace(0, 1, steps + 1)
        W = np.stack([x, 1 - x], 1)
    else:
        i, j = np.meshgrid(np.arange(steps + 1), np.arange(steps + 1), indexing="ij")
        keep = i + j <= steps
        W = np.stack([i[keep], j[keep], steps - i[keep] - j[keep]], 1) / steps
    a = lin * K.mean(axis=1)
    F = W @ a + quad * radius * np.sqrt(np.einsum("ni,ij,nj->n", W, K, W) + 1e-8)
    return float(F.min())


@pytest.mark.parametrize("name,hp", [("cagrad", {"c": 0.4}), ("cagrad", {"c": 0.9}),
                                     ("imgrad", {"alpha": 0.5}), ("imgrad", {"alpha": 0.8})])
def test_conflict_averse_dual_at_its_minimiser_on_the_battery(name, hp):
    c = hp.get("c", hp.get("alpha"))
    worst = 0.0
    for label, G in BATTERY:
        T = G.shape[0]
        _, agg = run(name, G, **hp)
        K = G @ G.T
        w = np.array([agg.info[f"w_star_{t}"] for t in range(T)])
        assert abs(w.sum() - 1) < 1e-12 and w.min() >= 0, (label, w)
        kappa = agg.info.get("kappa")
        lin, quad = (1.0, 1.0) if kappa is None else (1.5 - kappa, kappa)
        radius = c * math.sqrt(K.mean() + 1e-8) + 1e-8
        f, grad, size = dual_terms(K, w, radius, lin, quad)
        gap = grad @ w - grad.min()  # Frank–Wolfe gap ≥ f(w) − min f (convexity)
        worst = max(worst, gap / size)
        assert gap <= 1e-6 * size, (label, gap, size)
        if T <= 3:  # nothing on a fine simplex grid is lower
            assert f <= dual_grid_min(K, radius, lin, quad, 4000 if T == 2 else 300) + 1e-9 * size
    print(f"\n[battery] {name} {hp}: worst relative dual gap {worst:.2e}")


# ---------------------------------------------------------------------------------------
# Nash-MTL: α ⊙ Kα = 1
# ---------------------------------------------------------------------------------------


def test_nash_fixed_point_on_the_battery():
    worst, iters = 0.0, []
    for label, G in BATTERY:
        _, agg = run("nash_mtl", G)
        alpha = agg.weights.numpy()
        resid = np.abs(alpha * (G @ G.T @ alpha) - 1).max()
        worst = max(worst, resid)
        iters.append(agg.info["iterations"])
        assert agg.info["solver_failed"] == 0 and resid < 1e-6, (label, resid, agg.info)
    print(f"\n[battery] nash_mtl: worst residual {worst:.2e}, Newton iterations ≤ {max(iters):.0f}")


def test_nash_warm_start_far_from_the_solution_still_converges():
    """A previous α from a very different K (the next step's gradients changed scale)."""
    m = methods.create("nash_mtl", 3)
    for label, G in BATTERY:
        if G.shape[0] != 3:
            continue
        agg = m.aggregate(torch.from_numpy(G), torch.ones(3, dtype=DT))
        alpha = agg.weights.numpy()
        assert agg.info["solver_failed"] == 0, label
        assert np.abs(alpha * (G @ G.T @ alpha) - 1).max() < 1e-6, label


# ---------------------------------------------------------------------------------------
# IMTL-G: equal projections on the unit task gradients
# ---------------------------------------------------------------------------------------


def imtl_closed_form(G: np.ndarray) -> np.ndarray:
    """The paper's closed form: D rows g_1 − g_t, U rows u_1 − u_t, α_{2:} = g_1Uᵀ(DUᵀ)⁻¹."""
    U = G / np.linalg.norm(G, axis=1, keepdims=True)
    D, Ud = G[0] - G[1:], U[0] - U[1:]
    rest = np.linalg.solve((D @ Ud.T).T, (G[0] @ Ud.T))
    return np.concatenate([[1 - rest.sum()], rest])


@pytest.mark.parametrize("name", ["imtl_g", "imtl"])
def test_imtl_equal_projections_on_the_battery(name):
    worst = {}
    for label, G in BATTERY:
        _, agg = run(name, G)
        w, d = agg.weights.numpy(), agg.direction.numpy()
        assert abs(w.sum() - 1) < 1e-9, label
        p = unit_projections(G, d)
        cond = cosine_condition(G)
        # rounding in the direction is amplified by the conditioning of the unit gradients
        spread = (p.max() - p.min()) / np.abs(p).max()
        tol = 1e-10 * max(cond, 1.0)
        worst[label] = spread / tol
        assert spread <= tol, (label, spread, cond)
        if cond < 1e6:
            np.testing.assert_allclose(w, imtl_closed_form(G), rtol=1e-6, atol=1e-12)
    label = max(worst, key=worst.get)
    print(f"\n[battery] {name}: worst projection spread {worst[label]:.2e} × its tolerance "
          f"({label})")


# ---------------------------------------------------------------------------------------
# PCGrad, DB-MTL, Aligned-MTL
# ---------------------------------------------------------------------------------------


def test_pcgrad_two_tasks_leave_no_conflict_on_the_battery():
    for label, G in BATTERY:
        if G.shape[0] != 2:
            continue
        _, agg = run("pcgrad", G)
        d = agg.direction.numpy()
        # the update never conflicts with either task (exact for T = 2)
        assert np.all(G @ d >= -1e-9 * np.linalg.norm(G, axis=1) * np.linalg.norm(d)), label


def test_db_mtl_equal_contributions_on_the_battery():
    for label, G in BATTERY:
        m, agg = run("db_mtl", G)
        contrib = np.linalg.norm(agg.weights.numpy()[:, None] * m.grad_buffer.numpy(), axis=1)
        b = np.linalg.norm(m.grad_buffer.numpy(), axis=1)
        # every task contributes γ = max_t ‖b_t‖ (the reference's a_t = γ/(‖b_t‖ + 1e-8))
        np.testing.assert_allclose(contrib, b.max() * b / (b + 1e-8), rtol=1e-9, err_msg=label)


def test_aligned_mtl_equal_singular_values_on_the_battery():
    for label, G in BATTERY:
        m, agg = run("aligned_mtl", G)
        U, S, _ = np.linalg.svd(G, full_matrices=False)
        keep = S**2 > S.max() ** 2 * G.shape[0] * np.finfo(np.float32).eps
        U, S = U[:, keep], S[keep]
        B = S.min() * (U / S) @ U.T  # B G = σ_min U Vᵀ: every kept singular value σ_min
        assert agg.info["rank"] == keep.sum(), label
        np.testing.assert_allclose(agg.weights.numpy(), B.sum(0), rtol=1e-7,
                                   atol=1e-9 * np.abs(B.sum(0)).max(), err_msg=label)
        s_aligned = np.linalg.svd(B @ G, compute_uv=False)[: keep.sum()]
        np.testing.assert_allclose(s_aligned, S.min(), rtol=1e-6, err_msg=label)


# ---------------------------------------------------------------------------------------
# pinned reproductions of the silent failures
# ---------------------------------------------------------------------------------------


def test_imtl_g_norms_1e7_apart():
    """LibMTL, nash-mtl and an exact solve give [1e-5, 0.99999]; a pseudo-inverse of K with
    the default cutoff dropped the small eigenvalue and returned [0.99999, 1e-5]."""
    G = np.array([[1000.0, 0.0], [0.01, 1e-5]])
    _, agg = run("imtl_g", G)
    np.testing.assert_allclose(agg.weights.numpy(), imtl_closed_form(G), rtol=1e-9)
    np.testing.assert_allclose(agg.weights.numpy(), [9.99990e-06, 0.99999], rtol=1e-5)
    p = unit_projections(G, agg.direction.numpy())
    assert p[0] == pytest.approx(p[1], rel=1e-9)


def test_cagrad_dual_with_one_dominant_task():
    """SLSQP stopped after 3 iterations at w* = [0.5, 0.5, 0] (objective 0.3532); a simplex
    grid and an independent convex solver find [1, 0, 0] at 0.3008."""
    G = np.array([[3.6e-4, 8.6e-4, 3.5e-4], [-7.9e-4, 5.5e-4, 2.7e-4], [-620.0, 670.0, 420.0]])
    K = G @ G.T
    _, agg = run("cagrad", G, c=0.4)
    w = np.array([agg.info[f"w_star_{t}"] for t in range(3)])
    radius = 0.4 * math.sqrt(K.mean() + 1e-8) + 1e-8
    f, _, _ = dual_terms(K, w, radius, 1.0, 1.0)
    np.testing.assert_allclose(w, [1, 0, 0], atol=1e-6)
    assert f == pytest.approx(0.3008, abs=1e-4)
    assert f <= dual_grid_min(K, radius, 1.0, 1.0, 600) + 1e-12
    # IMGrad (α = 0.5) on the same input: 0.2500, where SLSQP stopped at 0.2671
    _, agg = run("imgrad", G, alpha=0.5)
    w = np.array([agg.info[f"w_star_{t}"] for t in range(3)])
    kappa = agg.info["kappa"]
    radius = 0.5 * math.sqrt(K.mean() + 1e-8) + 1e-8
    f, _, _ = dual_terms(K, w, radius, 1.5 - kappa, kappa)
    assert f == pytest.approx(0.2500, abs=1e-4)
    assert f <= dual_grid_min(K, radius, 1.5 - kappa, kappa, 600) + 1e-12


def test_nash_mtl_cond_1e11():
    """With 20 Newton iterations from α = 1 the solve failed and fell back to equal weights;
    it converges to α = [9991.4, 0.2005] (residual 1e-9)."""
    G = np.array([[-0.0011, -0.0013], [60.0, 60.0]])
    _, agg = run("nash_mtl", G, optim_niter=20)
    alpha = agg.weights.numpy()
    assert agg.info["solver_failed"] == 0
    np.testing.assert_allclose(alpha, [9991.4, 0.2005], rtol=1e-4)
    assert np.abs(alpha * (G @ G.T @ alpha) - 1).max() < 1e-6


def test_failed_solves_are_counted_and_warned_once():
    G = np.array([[1.0, 0.0], [0.0, 0.0]])  # a zero gradient: no bargaining solution
    m = methods.create("nash_mtl", 2)
    with pytest.warns(RuntimeWarning, match="nash_mtl: no bargaining solution"):
        agg = m.aggregate(torch.from_numpy(G), torch.ones(2, dtype=DT))
    assert agg.info["solver_failed"] == 1
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second failure is counted, not warned again
        assert m.aggregate(torch.from_numpy(G), torch.ones(2, dtype=DT)).info["solver_failed"] == 1
