"""Property-based checks (hypothesis) of what methods claim beyond single examples:
non-conflicting updates, permutation equivariance and scale behaviour, each for the methods
whose paper claims it. Inputs: random full-rank gradient matrices with row norms spread
over 10⁻³…10³."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import methods

DT = torch.float64
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def gradients(draw, min_tasks=2, max_tasks=5):
    T = draw(st.integers(min_tasks, max_tasks))
    P = draw(st.integers(T, T + 4))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((T, P)) * 10.0 ** rng.uniform(-3, 3, size=(T, 1))
    n = np.linalg.norm(G, axis=1)
    assume(np.linalg.cond(G @ G.T / np.outer(n, n)) < 1e8)
    return G


def step(name, G, losses=None, **hp):
    T = G.shape[0]
    m = methods.create(name, T, **hp)
    L = torch.linspace(0.5, 2.0, T, dtype=DT) if losses is None else losses
    return m.aggregate(torch.from_numpy(G), L)


# non-conflicting: every task's inner product with the update is ≥ 0 ---------------------


@pytest.mark.parametrize("name", ["mgda", "nash_mtl", "upgrad", "dualproj"])
@SETTINGS
@given(G=gradients())
def test_update_conflicts_with_no_task(name, G):
    d = step(name, G).direction.numpy()
    assert np.all(G @ d >= -1e-9 * np.linalg.norm(G, axis=1) * np.linalg.norm(d))


@SETTINGS
@given(G=gradients(2, 2))
def test_pcgrad_two_tasks_non_conflicting(G):
    d = step("pcgrad", G).direction.numpy()
    assert np.all(G @ d >= -1e-9 * np.linalg.norm(G, axis=1) * np.linalg.norm(d))


# permutation equivariance: permuting the tasks permutes the weights ----------------------

EQUIVARIANT = ["ew", "mgda", "cagrad", "imgrad", "nash_mtl", "imtl_g", "aligned_mtl", "db_mtl",
               "msi", "gls", "uw", "imtl_l", "upgrad", "dualproj", "fairgrad", "si_ls"]


@pytest.mark.parametrize("name", EQUIVARIANT)
@SETTINGS
@given(G=gradients(), data=st.data())
def test_permutation_equivariance(name, G, data):
    T = G.shape[0]
    perm = np.array(data.draw(st.permutations(range(T))))
    L = torch.linspace(0.5, 2.0, T, dtype=DT)
    a = step(name, G, L)
    b = step(name, G[perm], L[perm])
    np.testing.assert_allclose(b.weights.numpy(), a.weights.numpy()[perm], rtol=1e-6,
                               atol=1e-9 * np.abs(a.weights.numpy()).max())
    if a.direction is not None:
        scale = np.abs(a.weights.numpy())[:, None] * np.abs(G)
        np.testing.assert_allclose(b.direction.numpy(), a.direction.numpy(), rtol=1e-6,
                                   atol=1e-8 * scale.sum(0).max())


# scale behaviour ---------------------------------------------------------------------------


@SETTINGS
@given(G=gradients(), data=st.data())
def test_imtl_g_direction_invariant_to_per_task_scaling(G, data):
    """Rescaling any task's gradient leaves the IMTL-G update on the same line: d has equal
    projections on the *unit* gradients, which do not change; only Σα = 1 fixes its length
    and sign (α ∝ C⁻¹1/n: the sum Σ_t (C⁻¹1)_t/n_t changes with the norms and can change
    sign when C⁻¹1 has mixed signs; the method does not force the projection positive)."""
    T = G.shape[0]
    c = np.array(data.draw(st.lists(st.floats(1e-3, 1e3), min_size=T, max_size=T)))
    d1 = step("imtl_g", G).direction.numpy()
    d2 = step("imtl_g", G * c[:, None]).direction.numpy()
    factor = (d2 @ d1) / (d1 @ d1)
    np.testing.assert_allclose(d2, factor * d1, rtol=1e-6, atol=1e-9 * np.linalg.norm(d2))


@SETTINGS
@given(G=gradients(), s=st.floats(1e-3, 1e3))
def test_nash_weights_scale_inversely_with_the_gradients(G, s):
    a1 = step("nash_mtl", G).weights.numpy()
    a2 = step("nash_mtl", G * s).weights.numpy()
    np.testing.assert_allclose(a2, a1 / s, rtol=1e-5)


@pytest.mark.parametrize("name", ["mgda", "aligned_mtl", "imtl_g", "pcgrad"])
@SETTINGS
@given(G=gradients(), s=st.floats(1e-2, 1e2))
def test_direction_scales_with_a_common_factor(name, G, s):
    """A common rescaling of all gradients rescales the update by the same factor for these
    methods (their weights depend on angles and norm ratios only). Not CAGrad/IMGrad: the
    reference's ε in λ = r/(‖g_w‖ + 1e-8) breaks it when the dual picks a small gradient."""
    d1 = step(name, G).direction.numpy()
    d2 = step(name, G * s).direction.numpy()
    np.testing.assert_allclose(d2, s * d1, rtol=1e-6, atol=1e-9 * s * np.linalg.norm(d1))
