"""UPGrad — unconflicting projection of gradients ("Jacobian Descent for Multi-Objective
Optimization").

Quinton & Rey, 2024, https://arxiv.org/abs/2406.16232. Reference code: TorchJD
(github.com/TorchJD/torchjd, ``src/torchjd/aggregation/_upgrad.py`` and
``_utils/dual_cone.py``, v0.8.1); LibMTL ``UPGrad.py`` is a port of it.

Each task gradient g_i (row i of G) is projected onto the dual cone of the rows,
C = {x : Gx ≥ 0}, and the projections are averaged:

    d = (1/T) Σ_i π_C(g_i),      π_C(Gᵀu) = Gᵀv*(u),   v*(u) = argmin_{v ≥ u} vᵀKv,

(the paper's Proposition 1: projecting Gᵀu onto C is a QP on the T×T Gramian K = G Gᵀ with
the bound v ≥ u). For UPGrad u = e_i/T, so the weights are w = Σ_i v*(e_i/T) and d = Gᵀw.
Every π_C(g_i) lies in C, hence so does d: **no task's inner product with the update is
negative** (g_tᵀd = (Kw)_t ≥ 0), and d = the mean gradient when there is no conflict.

The QP is solved here directly (:func:`dual_cone_weights`, no QP library): in the
Jacobi-scaled variables y = s ⊙ v, s_t = sqrt(A_tt), where the matrix has a unit diagonal (so
gradient norms 10⁻⁴…10³ apart do not matter) and eigenvalues at rounding level are set to 0,
by a Lawson–Hanson active-set method on x = y − s ⊙ u ≥ 0, which ends in finitely many steps
with exact zeros. Its KKT conditions (x ≥ 0, r = Â(b + x) ≥ 0, x ⊙ r = 0, each in units of
Σ_j |Â_tj y_j|, the size of the terms that make up r_t) are checked afterwards, except for the
part of r in the free face's numerical null space, which the Gramian cannot resolve (rows at
an angle ≲ 1e-7 have cosine 1 to float64 precision) and which is reported as
``info["unresolved"]``. If they are not met, L-BFGS-B (exact for bound constraints) is run
from the active-set point and checked again; a QP still uncertified is counted in
``info["solver_failed"]`` and warned about once, and its (feasible) best point is used. When
K is only positive semi-definite (dependent rows) v* is not unique but d is.

Hyperparameters: ``norm_eps`` and ``reg_eps``: TorchJD first divides K by its trace (0 if
the trace is below ``norm_eps``: then d is the mean gradient) and adds ``reg_eps``·I, both
1e-4 by default, because quadprog needs a strictly positive definite matrix. mtlx's solver
does not need them, so its defaults are 0, the exact projection of the paper; the
regularisation would loosen the non-conflict guarantee to (Kw)_t ≥ −reg_eps·tr(K)·v_t.
``upgrad(norm_eps=1e-4, reg_eps=1e-4)`` reproduces TorchJD's defaults (pinned in
tests/test_methods_new.py). TorchJD's ``pref_vector`` (u = p_i e_i) is not offered; mtlx uses
its default, the mean. No hyperparameter is tuned (no search space).

Heads: TorchJD aggregates the Jacobian of the shared parameters only; mtlx gives each head its
own unweighted gradient (as LibMTL's port does). Weights depend on G only through K, so this
is a :class:`GramianMethod`: representation-level and distributed training are exact (the
paper and LibMTL use parameter-level Jacobians, the default).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from methods.base import GramianMethod, check_range
from methods.registry import register

#: KKT tolerance, relative to the size of the terms of each residual
KKT_RTOL = 1e-9


@dataclass(frozen=True)
class DualConeSolution:
    """Result of :func:`dual_cone_weights`: the weights ``V`` (one row v*(u) per row u of U),
    the worst relative KKT residual over the QPs, and how many were not certified."""

    V: np.ndarray
    kkt_residual: float
    failed: int
    unresolved: float = 0.0


def regularised_gramian(K: np.ndarray, norm_eps: float, reg_eps: float) -> np.ndarray:
    """TorchJD's ``normalize`` then ``regularize``: K / tr(K) (0 if tr(K) < norm_eps, or if it
    is 0), plus reg_eps·I."""
    trace = float(np.trace(K))
    Kn = np.zeros_like(K) if (trace < norm_eps or trace <= 0) else K / trace
    return Kn + reg_eps * np.eye(K.shape[0])


def dual_cone_weights(A: np.ndarray, U: np.ndarray) -> DualConeSolution:
    """For each row u of U: v*(u) = argmin_{v ≥ u} vᵀAv (A positive semi-definite).

    Gᵀv*(u) is the projection of Gᵀu onto the dual cone {x : Gx ≥ 0} when A = G Gᵀ (up to a
    positive factor). Solved in Jacobi-scaled variables by :func:`_nonnegative_qp`; a
    variable whose diagonal is 0 (a zero gradient) does not affect the objective and stays at
    its bound u_t."""
    s = np.sqrt(np.maximum(np.diag(A), 0.0))
    live = s > 0
    idx = np.flatnonzero(live)
    A_hat = _drop_rounding_eigenvalues(A[np.ix_(idx, idx)] / np.outer(s[idx], s[idx]))
    V = np.array(U, dtype=np.float64, copy=True)
    worst, failed, unresolved = 0.0, 0, 0.0
    for row in V:
        if idx.size == 0:
            continue
        b = s[idx] * row[idx]
        x, (resid, unres) = _nonnegative_qp(A_hat, b)
        row[idx] = (b + x) / s[idx]
        worst, unresolved = max(worst, resid), max(unresolved, unres)
        failed += resid > KKT_RTOL
    return DualConeSolution(V, worst, failed, unresolved)


def _drop_rounding_eigenvalues(C: np.ndarray) -> np.ndarray:
    """C with its eigenvalues below 10·n·eps·λ_max set to 0: rows dependent to within float64
    precision (cosines 1 − 1e-15) are made exactly dependent, so that the face solves and the
    KKT check see one consistent problem instead of a rounding-level one whose exact solution
    is swamped by cancellation. A change of C by at most that bound (relative 1e-14 at T = 5)."""
    lam, Q = np.linalg.eigh(C)
    cut = 10 * len(lam) * np.finfo(np.float64).eps * max(float(lam.max()), 0.0)
    if lam.min() >= cut:
        return C
    lam = np.where(lam < cut, 0.0, lam)
    return (Q * lam) @ Q.T


def kkt_residual(A: np.ndarray, b: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """Worst violation of x ≥ 0, r = A(b + x) ≥ 0, x_t·r_t = 0, each relative to the size
    Σ_j |A_tj (b + x)_j| of the terms of r_t (the scale of its rounding error); and the part
    of r on the free face that lies in the face's numerical null space (eigenvalues below
    10·n·eps·λ_max), which the Gramian cannot resolve: two task gradients at an angle θ ≲ 1e-7
    have cosine 1 − θ²/2 = 1 to float64 precision, and an exact answer would need weights
    ~1/θ² whose cancellation swamps it. Returns (residual, unresolved)."""
    y = b + x
    r = A @ y
    size = np.abs(A) @ np.abs(y) + 1e-300
    free = x > 0
    resolved = r.copy()
    if free.any():
        lam, Q = np.linalg.eigh(A[np.ix_(free, free)])
        null = Q[:, lam <= 10 * len(lam) * np.finfo(np.float64).eps * max(float(lam.max()), 0.0)]
        resolved[free] = r[free] - null @ (null.T @ r[free])
    unresolved = float(np.max(np.abs(r - resolved) / size))
    comp = np.abs(resolved) * free
    resid = max(np.max(-resolved / size), np.max(comp / size),
                np.max(-x / (np.abs(y) + 1e-300)), 0.0)
    return float(resid), unresolved


def _nonnegative_qp(A: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """argmin_{x ≥ 0} ½(b + x)ᵀA(b + x): Lawson–Hanson active set, L-BFGS-B if that does not
    certify. Returns (x, (relative KKT residual, unresolved part)) (:func:`kkt_residual`)."""
    x = _lawson_hanson(A, b)
    resid = kkt_residual(A, b, x)
    if resid[0] <= KKT_RTOL:
        return x, resid
    res = minimize(lambda z: 0.5 * (b + z) @ A @ (b + z), x, jac=lambda z: A @ (b + z),
                   method="L-BFGS-B", bounds=[(0.0, None)] * len(b),
                   options={"ftol": 1e-15, "gtol": 1e-14, "maxiter": 1000})
    z = np.maximum(res.x, 0.0)
    resid_z = kkt_residual(A, b, z)
    return (z, resid_z) if resid_z[0] < resid[0] else (x, resid)


def _lawson_hanson(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Lawson–Hanson's active-set loop for the LCP x ≥ 0, A(b + x) ≥ 0, xᵀA(b + x) = 0: free
    the most violated bound, solve the free face exactly (least squares, so a singular face is
    fine), and step back to the boundary when that solution leaves the orthant."""
    n = len(b)
    x = np.zeros(n)
    free = np.zeros(n, dtype=bool)
    q = A @ b
    for _ in range(3 * n + 3):
        r = A @ (b + x)
        size = np.abs(A) @ np.abs(b + x) + 1e-300
        cand = np.where(free, np.inf, r / size)
        t = int(np.argmin(cand))
        if not cand[t] < -1e-13:
            return x
        free[t] = True
        for _ in range(n + 1):
            idx = np.flatnonzero(free)
            z = np.zeros(n)
            z[idx] = np.linalg.lstsq(A[np.ix_(idx, idx)], -q[idx], rcond=None)[0]
            if (z[idx] > 0).all():
                x = z
                break
            blocked = idx[z[idx] <= 0]
            gap = x[blocked] - z[blocked]  # ≥ 0; 0 only where x = z = 0
            step = np.divide(x[blocked], gap, out=np.zeros_like(gap), where=gap > 0)
            alpha = float(step.min())
            x = x + alpha * (z - x)
            free[blocked[step <= alpha]] = False
            x[~free] = 0.0
            if not free.any():
                break
    return x


@dataclass(frozen=True)
class DualConeConfig:
    """``norm_eps``: K is divided by its trace unless that is below norm_eps (then K = 0);
    ``reg_eps``: added to the normalised K's diagonal. TorchJD: 1e-4 and 1e-4; mtlx: 0, 0."""

    norm_eps: float = 0.0
    reg_eps: float = 0.0

    def __post_init__(self) -> None:
        check_range("norm_eps", self.norm_eps, 0.0)
        check_range("reg_eps", self.reg_eps, 0.0)


def solve_info(method: GramianMethod, sol: DualConeSolution) -> dict[str, float]:
    """Diagnostics of the QPs; an uncertified one is counted and warned about once."""
    if sol.failed:
        method.warn_once(
            "solver_failed",
            f"{method.name}: {sol.failed} dual-cone QP(s) stopped at a relative KKT residual of "
            f"{sol.kkt_residual:.3g} (tolerance {KKT_RTOL:g}); their best feasible point is used "
            "and the failure is counted in diagnostics as solver_failed",
        )
    return {"solver_failed": float(sol.failed > 0), "kkt_residual": sol.kkt_residual,
            "unresolved": sol.unresolved}


@register("upgrad")
class UPGrad(GramianMethod):
    """UPGrad: the mean of each task gradient's projection onto the rows' dual cone."""

    Config = DualConeConfig

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> tuple[Tensor, dict[str, float]]:
        T = self.num_tasks
        A = regularised_gramian(gramian.cpu().numpy(), self.config.norm_eps, self.config.reg_eps)
        sol = dual_cone_weights(A, np.eye(T) / T)
        return torch.from_numpy(sol.V.sum(axis=0)).to(gramian), solve_info(self, sol)
