"""PCGrad, GradVac, GradDrop, MoCo, MSI/POMSI/POMSI-static and CSO against explicit
vector-space transcriptions of their reference loops, pinned numbers and paper properties."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import methods
from methods.base import StepContext
from methods.cso import connection_strength, project_on_priority
from methods.graddrop import graddrop_direction
from methods.gradvac import gradvac_coefficients
from methods.msi import msi_scales
from methods.pcgrad import pcgrad_coefficients
from methods.pomsi import pomsi_coefficients
from tests.method_cases import PINNED_G, random_grads, random_losses, roundtrip

ONES3 = torch.ones(3, dtype=torch.float64)


def conflicting_grads(T: int, P: int = 11, seed: int = 0) -> torch.Tensor:
    """Random gradients of very different norms with at least one conflicting pair."""
    g = random_grads(T, P, seed=seed)
    g0, g1 = g[0], g[1]
    g[1] = g1 - 1.5 * (g1 @ g0) / (g0 @ g0) * g0 - 0.3 * g0 * g1.norm() / g0.norm()
    assert g[0] @ g[1] < 0
    return g


# ---------------------------------------------------------------------------------------
# PCGrad
# ---------------------------------------------------------------------------------------


def ref_pcgrad(G: torch.Tensor, orders, eps: float = 0.0) -> torch.Tensor:
    """LibMTL's loop (j = i included), projected gradients as rows."""
    pc = G.clone()
    for i in range(G.shape[0]):
        for j in orders[i]:
            dot = pc[i] @ G[j]
            if dot < 0:
                pc[i] -= dot * G[j] / (G[j].norm() ** 2 + eps)
    return pc


def fixed(T):
    return [list(range(T)) for _ in range(T)]


def test_pcgrad_pinned_number():
    expected = torch.tensor([3.503922, 2.433333, 0.817647, 2.166667], dtype=torch.float64)
    for eps in (1e-8, 0.0):  # the pinned number used LibMTL's +1e-8; the default 0 agrees to ~1e-8
        m = methods.create("pcgrad", 3, order="fixed", eps=eps)
        agg = m.aggregate(PINNED_G, ONES3)
        assert torch.allclose(agg.direction, expected, atol=1e-6)
        assert torch.allclose(agg.direction, ref_pcgrad(PINNED_G, fixed(3), eps).sum(0), atol=1e-12)
        assert torch.allclose(agg.weights @ PINNED_G, agg.direction, atol=1e-12)


@pytest.mark.parametrize("T", [2, 3, 4, 5])
def test_pcgrad_equals_vector_space_reference(T):
    for seed in range(5):
        G = conflicting_grads(T, seed=seed)
        d = methods.create("pcgrad", T, order="fixed").aggregate(G, torch.ones(T)).direction
        assert torch.allclose(d, ref_pcgrad(G, fixed(T)).sum(0), rtol=1e-10, atol=1e-12)
        C, _ = pcgrad_coefficients(G @ G.T, fixed(T))
        assert torch.allclose(C @ G, ref_pcgrad(G, fixed(T)), rtol=1e-10, atol=1e-12)


def test_pcgrad_random_order_is_seeded_generator_order():
    T = 4
    m = methods.create("pcgrad", T, seed=11)
    gen = torch.Generator().manual_seed(11)
    for step in range(3):
        G = conflicting_grads(T, seed=step)
        orders = [torch.randperm(T, generator=gen).tolist() for _ in range(T)]
        d = m.aggregate(G, torch.ones(T)).direction
        assert torch.allclose(d, ref_pcgrad(G, orders).sum(0), rtol=1e-10, atol=1e-12)
    # orders do matter for T >= 3, so the seed is not a no-op
    G = random_grads(5, 3)  # few dimensions: many conflicts, so the order matters
    outs = {
        tuple(methods.create("pcgrad", 5, seed=s).aggregate(G, torch.ones(5)).direction.tolist())
        for s in range(12)
    }
    assert len(outs) > 1


def test_pcgrad_two_tasks_no_conflict_remains():
    conflicts = 0
    for seed in range(20):
        G = random_grads(2, 7, seed=seed)
        conflicts += int(G[0] @ G[1] < 0)
        C, _ = pcgrad_coefficients(G @ G.T, [torch.randperm(2).tolist() for _ in range(2)])
        pc = C @ G
        tol = 1e-12 * G.norm(dim=1).prod()
        assert pc[0] @ G[1] >= -tol and pc[1] @ G[0] >= -tol
        if G[0] @ G[1] >= 0:
            assert torch.allclose(pc, G)
    assert conflicts >= 5  # the property was actually exercised


def test_pcgrad_scale_equivariant_and_rep_level_through_engine():
    G = conflicting_grads(3)
    a = methods.create("pcgrad", 3, order="fixed").aggregate(G, ONES3)
    b = methods.create("pcgrad", 3, order="fixed").aggregate(G * 1e-6, ONES3)
    assert torch.allclose(a.weights, b.weights, rtol=1e-9)

    # rep level: the engine uses only the Gramian of ∇_z L_t; compare with the explicit loop
    torch.manual_seed(0)
    enc = nn.Linear(5, 4).double()
    heads = [nn.Linear(4, 1).double() for _ in range(3)]
    x = torch.randn(6, 5, dtype=torch.float64)
    targets = [torch.randn(6, 1, dtype=torch.float64) * s for s in (1.0, -3.0, 0.2)]

    def forward():
        z = enc(x)
        return z, torch.stack([(h(z) - y).pow(2).mean() for h, y in zip(heads, targets)])

    z, losses = forward()
    R = torch.stack([torch.autograd.grad(L, z, retain_graph=True)[0].reshape(-1) for L in losses])
    d_rep = ref_pcgrad(R, fixed(3)).sum(0)
    want = torch.autograd.grad(z, list(enc.parameters()), grad_outputs=d_rep.view_as(z))
    z, losses = forward()
    head_params = [p for h in heads for p in h.parameters()]
    methods.backward(methods.create("pcgrad", 3, order="fixed"), losses, enc.parameters(),
                     head_params, rep=z, level="rep")
    for p, w in zip(enc.parameters(), want):
        assert torch.allclose(p.grad, w, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------
# GradVac
# ---------------------------------------------------------------------------------------


def ref_gradvac(G, targets, orders, beta, always):
    """LibMTL's loop (group 0); ``always`` moves the EMA update out of the ``if`` (TorchJD)."""
    pc = G.clone()
    for i in range(G.shape[0]):
        for j in orders[i]:
            rho = pc[i] @ G[j] / (pc[i].norm() * G[j].norm() + 1e-8)
            tgt = targets[i, j].clone()
            if rho < tgt:
                w = pc[i].norm() * (tgt * (1 - rho**2).sqrt() - rho * (1 - tgt**2).sqrt()) / (
                    G[j].norm() * (1 - tgt**2).sqrt() + 1e-8
                )
                pc[i] += G[j] * w
                if not always:
                    targets[i, j] = (1 - beta) * tgt + beta * rho
            if always:
                targets[i, j] = (1 - beta) * tgt + beta * rho
    return pc.sum(0)


def gradvac_orders(T, gen):
    out = []
    for i in range(T):
        others = [j for j in range(T) if j != i]
        out.append([others[p] for p in torch.randperm(T - 1, generator=gen).tolist()])
    return out


@pytest.mark.parametrize("target_update", ["on_correction", "always"])
@pytest.mark.parametrize("T", [2, 3, 4])
def test_gradvac_matches_libmtl_loop_over_steps(T, target_update):
    beta = 0.3
    m = methods.create("gradvac", T, seed=5, beta=beta, target_update=target_update)
    gen = torch.Generator().manual_seed(5)
    targets = torch.zeros(T, T, dtype=torch.float64)
    corrected = 0
    for step in range(5):
        G = conflicting_grads(T, seed=step)
        want = ref_gradvac(G, targets, gradvac_orders(T, gen), beta, target_update == "always")
        agg = m.aggregate(G, torch.ones(T))
        corrected += agg.info["corrections"]
        assert torch.allclose(agg.direction, want, rtol=1e-9, atol=1e-12)
        assert torch.allclose(m.targets[:, :, 0], targets, atol=1e-12)
    assert corrected > 0
    if target_update == "on_correction":
        assert (targets <= 0).all()  # LibMTL's targets only ever move down from 0


def test_gradvac_zero_targets_non_conflicting_is_sum():
    G = torch.rand(3, 9, dtype=torch.float64) * torch.tensor([[1.0], [10.0], [0.1]])
    m = methods.create("gradvac", 3, beta=0.0)  # β = 0: the targets stay at 0
    for _ in range(3):
        agg = m.aggregate(G, ONES3)
        assert torch.allclose(agg.direction, G.sum(0))
        assert torch.equal(m.targets, torch.zeros_like(m.targets))


def test_gradvac_correction_reaches_the_target_cosine():
    G = conflicting_grads(2)
    targets = torch.tensor([[0.0, 0.4], [0.4, 0.0]], dtype=torch.float64).numpy()
    C, n = gradvac_coefficients(G @ G.T, targets, [[1], [0]], beta=0.5)
    assert n == 2
    pc = C @ G
    for i, j in ((0, 1), (1, 0)):
        assert math.isclose(float(torch.cosine_similarity(pc[i], G[j], dim=0)), 0.4, abs_tol=1e-6)


def test_gradvac_per_tensor_groups():
    T, shapes = 3, [(2, 3), (4,), (5,)]
    sizes = [math.prod(s) for s in shapes]
    slices, off = [], 0
    for k, s in enumerate(shapes):
        slices.append((f"p{k}", off, torch.Size(s)))
        off += sizes[k]
    ctx = StepContext(param_slices=slices)
    m = methods.create("gradvac", T, seed=2, group_type=2)
    assert not m.gramian_only and not m.supports_rep_grads
    gen = torch.Generator().manual_seed(2)
    targets = [torch.zeros(T, T, dtype=torch.float64) for _ in shapes]
    for step in range(3):
        G = random_grads(T, off, seed=step)
        orders = gradvac_orders(T, gen)
        parts, o = [], 0
        for k, n in enumerate(sizes):
            parts.append(ref_gradvac(G[:, o:o + n], targets[k], orders, 0.5, True))
            o += n
        agg = m.aggregate(G, torch.ones(T), ctx)
        assert torch.allclose(agg.direction, torch.cat(parts), rtol=1e-9, atol=1e-12)
    # the lazily sized target array round-trips into a fresh object
    fresh = roundtrip(m, methods.create("gradvac", T, seed=0, group_type=2))
    G = random_grads(T, off, seed=9)
    assert torch.allclose(m.aggregate(G, torch.ones(T), ctx).direction,
                          fresh.aggregate(G, torch.ones(T), ctx).direction, rtol=1e-12)
    with pytest.raises(ValueError, match="param_slices"):
        methods.create("gradvac", T, group_type=2).aggregate(G, torch.ones(T))
    with pytest.raises(ValueError, match="group_type"):
        methods.create("gradvac", T, group_type=1)


# ---------------------------------------------------------------------------------------
# GradDrop
# ---------------------------------------------------------------------------------------


def test_graddrop_same_sign_and_leak_one_give_the_sum():
    G = torch.rand(3, 50, dtype=torch.float64) + 0.01
    assert torch.allclose(methods.create("graddrop", 3).aggregate(G, ONES3).direction, G.sum(0))
    assert torch.allclose(methods.create("graddrop", 3).aggregate(-G, ONES3).direction, -G.sum(0))
    mixed = random_grads(3, 50)
    d = methods.create("graddrop", 3, leak=1.0).aggregate(mixed, ONES3).direction
    assert torch.allclose(d, mixed.sum(0))


def test_graddrop_keeps_one_sign_per_element_with_purity_probability():
    a, b = 3.0, 1.0  # P(keep +) = ½(1 + (a − b)/(a + b)) = a/(a + b) = 0.75
    N = 4000
    G = torch.tensor([[a], [-b]], dtype=torch.float64).expand(2, N).contiguous()
    d = methods.create("graddrop", 2, seed=1).aggregate(G, torch.ones(2)).direction
    assert set(d.unique().tolist()) <= {a, -b}
    assert abs(float((d == a).double().mean()) - 0.75) < 0.03


def test_graddrop_masks_reproducible_under_seed():
    G = random_grads(3, 200)
    x = methods.create("graddrop", 3, seed=4).aggregate(G, ONES3).direction
    y = methods.create("graddrop", 3, seed=4).aggregate(G, ONES3).direction
    z = methods.create("graddrop", 3, seed=5).aggregate(G, ONES3).direction
    assert torch.equal(x, y) and not torch.equal(x, z)
    gen = torch.Generator().manual_seed(4)
    want, _ = graddrop_direction(G, torch.rand(200, generator=gen, dtype=torch.float64))
    assert torch.equal(x, want)


def test_graddrop_default_level_is_rep_through_engine():
    torch.manual_seed(1)
    enc, heads = nn.Linear(4, 3).double(), [nn.Linear(3, 1).double() for _ in range(2)]
    x = torch.randn(5, 4, dtype=torch.float64)

    def forward():
        z = enc(x)
        return z, torch.stack([heads[0](z).mean(), -(heads[1](z).pow(2).mean())])

    z, losses = forward()
    R = torch.stack([torch.autograd.grad(L, z, retain_graph=True)[0].reshape(-1) for L in losses])
    gen = torch.Generator().manual_seed(3)
    d_rep, _ = graddrop_direction(R, torch.rand(R.shape[1], generator=gen, dtype=torch.float64))
    want = torch.autograd.grad(z, list(enc.parameters()), grad_outputs=d_rep.view_as(z))
    z, losses = forward()
    res = methods.backward(methods.create("graddrop", 2, seed=3), losses, enc.parameters(),
                           [p for h in heads for p in h.parameters()], rep=z)
    assert res.path == "rep"
    for p, w in zip(enc.parameters(), want):
        assert torch.allclose(p.grad, w, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------
# MoCo
# ---------------------------------------------------------------------------------------


def test_moco_matches_libmtl_update_over_three_steps():
    T, P = 3, 8
    hp = dict(beta=0.6, beta_sigma=0.4, gamma=0.3, gamma_sigma=0.7, rho=0.05)
    m = methods.create("moco", T, **hp)
    y = torch.zeros(T, P, dtype=torch.float64)
    lambd = torch.ones(T, dtype=torch.float64) / T
    for k in range(1, 4):
        G, L = random_grads(T, P, seed=k), random_losses(T, seed=k)
        g = G.clone()
        for tn in range(T):
            g[tn] = g[tn] / (g[tn].norm() + 1e-8) * L[tn]
        y = y - (hp["beta"] / k ** hp["beta_sigma"]) * (y - g)
        lambd = torch.softmax(
            lambd - (hp["gamma"] / k ** hp["gamma_sigma"])
            * (y @ y.t() + hp["rho"] * torch.eye(T, dtype=torch.float64)) @ lambd, -1)
        agg = m.aggregate(G, L)
        assert torch.allclose(agg.direction, y.t() @ lambd, rtol=1e-10, atol=1e-12)
        assert torch.allclose(agg.weights, lambd, rtol=1e-10)


def test_moco_state_roundtrip_and_size_check():
    T = 3
    m = methods.create("moco", T)
    for k in range(2):
        m.aggregate(random_grads(T, 6, seed=k), random_losses(T, seed=k))
    fresh = roundtrip(m, methods.create("moco", T))
    assert fresh.tracked.shape == (T, 6) and fresh.step_count == 2
    G, L = random_grads(T, 6, seed=7), random_losses(T, seed=7)
    assert torch.allclose(m.aggregate(G, L).direction, fresh.aggregate(G, L).direction)
    with pytest.raises(ValueError, match="reset"):
        m.aggregate(random_grads(T, 5), L)


# ---------------------------------------------------------------------------------------
# MSI / POMSI / POMSI-static (documented reconstruction)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("reference", ["mean", "max", "geometric"])
def test_msi_equal_norms_leave_the_sum_unchanged(reference):
    G = random_grads(4, 9)
    G = G / G.norm(dim=1, keepdim=True) * 2.5
    agg = methods.create("msi", 4, reference=reference).aggregate(G, G.new_ones(4))
    assert torch.allclose(agg.weights, G.new_ones(4))
    assert torch.allclose(agg.direction, G.sum(0))


def test_msi_hand_case():
    G = torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    # Φ = 2·1·3/(1 + 9) = 0.6, n_ref = mean = 2: s = (2/1)^0.4, (2/3)^0.4
    w = methods.create("msi", 2).aggregate(G, torch.ones(2, dtype=G.dtype)).weights
    assert torch.allclose(w, torch.tensor([2**0.4, (2 / 3) ** 0.4], dtype=torch.float64))
    w = methods.create("msi", 2, reference="geometric").aggregate(G, G.new_ones(2)).weights
    assert torch.allclose(w, torch.tensor([3**0.2, 3**-0.2], dtype=torch.float64))


@pytest.mark.parametrize("reference", ["mean", "max", "geometric"])
def test_msi_rescaled_norms_between_own_and_reference(reference):
    for seed in range(5):
        G = random_grads(4, 9, seed=seed) * torch.tensor([[1e-3], [1.0], [50.0], [1.0]])
        norms = G.norm(dim=1)
        w, info = msi_scales(G @ G.T, reference)
        new = w * norms
        n_ref = info["reference_norm"]
        ref = torch.tensor(n_ref, dtype=norms.dtype)
        lo, hi = torch.minimum(norms, ref), torch.maximum(norms, ref)
        assert (new >= lo * (1 - 1e-12)).all() and (new <= hi * (1 + 1e-12)).all()
        # imbalance shrinks: the norms' spread (max/min) does not grow
        assert new.max() / new.min() <= norms.max() / norms.min() * (1 + 1e-12)
        # a common rescaling scales the direction and leaves the weights alone
        a = methods.create("msi", 4, reference=reference).aggregate(G, torch.ones(4))
        b = methods.create("msi", 4, reference=reference).aggregate(G * 1e4, torch.ones(4))
        assert torch.allclose(a.weights, b.weights, rtol=1e-10)
        assert torch.allclose(b.direction, a.direction * 1e4, rtol=1e-10)


def test_msi_zero_rows_are_finite_and_take_no_part():
    G = random_grads(3, 9)
    Z = torch.cat([torch.zeros(1, 9, dtype=torch.float64), G])
    for name in ("msi", "pomsi", "pomsi_static"):
        agg = methods.create(name, 4, **({} if name == "msi" else {"order": "fixed"})).aggregate(
            Z, torch.ones(4))
        assert torch.isfinite(agg.weights).all() and torch.isfinite(agg.direction).all()
        ref = methods.create(name, 3, **({} if name == "msi" else {"order": "fixed"})).aggregate(
            G, ONES3)
        assert torch.allclose(agg.direction, ref.direction, rtol=1e-10)


def test_pomsi_static_gives_every_projected_gradient_norm_n_ref():
    for T in (2, 3, 5):
        G = conflicting_grads(T, seed=T)
        M, info = pomsi_coefficients(G @ G.T, fixed(T), "mean", static=True)
        pc = ref_pcgrad(G, fixed(T))
        n_ref = pc.norm(dim=1).mean()
        assert math.isclose(info["reference_norm"], float(n_ref), rel_tol=1e-10)
        rows = M @ G
        assert torch.allclose(rows.norm(dim=1), n_ref.expand(T), rtol=1e-9)
        # same directions as the projected gradients
        assert torch.allclose(torch.cosine_similarity(rows, pc, dim=1), G.new_ones(T), atol=1e-9)
        d = methods.create("pomsi_static", T, order="fixed").aggregate(G, torch.ones(T)).direction
        assert torch.allclose(d, rows.sum(0), rtol=1e-10)


def test_pomsi_is_msi_on_the_projected_gradients():
    T = 3
    G = conflicting_grads(T, seed=1)
    pc = ref_pcgrad(G, fixed(T))
    s, _ = msi_scales(pc @ pc.T, "max")
    d = methods.create("pomsi", T, order="fixed", reference="max").aggregate(G, ONES3).direction
    assert torch.allclose(d, (s[:, None] * pc).sum(0), rtol=1e-10)
    # T = 2: positive rescaling keeps PCGrad's "no conflict left" property
    G2 = conflicting_grads(2, seed=3)
    M, _ = pomsi_coefficients(G2 @ G2.T, fixed(2), "mean", static=False)
    rows = M @ G2
    assert rows[0] @ G2[1] >= -1e-10 and rows[1] @ G2[0] >= -1e-10


def test_pomsi_static_exact_cancellation_is_not_amplified():
    g1 = torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=torch.float64)
    g3 = torch.tensor([2.0, -1.0, 0.0, 0.0], dtype=torch.float64)  # orthogonal to g1
    G = torch.stack([g1, -g1 * 0.7, g3])  # g1 and g2 cancel each other under PCGrad
    d = methods.create("pomsi_static", 3, order="fixed").aggregate(G, ONES3).direction
    assert torch.allclose(d, g3, atol=1e-9)


# ---------------------------------------------------------------------------------------
# CSO
# ---------------------------------------------------------------------------------------


def test_connection_strength_hand_case():
    W = torch.tensor([[[1.0, 2.0]], [[0.0, 3.0]]])  # C_out = 2: ‖W[0]‖² = 5, ‖W[1]‖² = 9
    gamma = [torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.0])]
    var = [torch.tensor([1.0, 3.0]), torch.tensor([0.25, 1.0])]
    s = connection_strength(W, gamma, var)
    want = torch.tensor(
        [[5 * 1 / (1 + 1e-5), 9 * 4 / (3 + 1e-5)], [5 * 0.25 / (0.25 + 1e-5), 0.0]]
    )
    assert torch.allclose(s, want)
    with pytest.raises(ValueError, match="running variances"):
        connection_strength(W, torch.ones(2, 3), torch.ones(2, 3))


def test_cso_phase_schedule():
    m = methods.create("cso", 3, seed=0)
    assert {m.plan_step(0, 10) for _ in range(200)} == {"sequential"}
    E, n = 10, 4000
    for e in (3, 7):
        joint = sum(m.plan_step(e, E) == "joint" for _ in range(n)) / n
        assert abs(joint - e / E) < 0.03
    a, b = methods.create("cso", 3, seed=9), methods.create("cso", 3, seed=9)
    assert [a.plan_step(5, 10) for _ in range(50)] == [b.plan_step(5, 10) for _ in range(50)]
    with pytest.raises(ValueError):
        m.plan_step(-1, 10)


def test_cso_phase2_hand_case():
    # task 0 tops channel 0, task 1 tops channel 1 (priorities 0.75 vs 0.25)
    s = torch.tensor([[3.0, 1.0], [1.0, 3.0]])
    G = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[-1.0, 1.0], [0.0, 2.0]]], dtype=torch.float64)
    # ch 0: ⟨(1,0), (−1,1)⟩ = −1 → task 1 becomes (0,1); ch 1: ⟨(0,2), (1,1)⟩ = 2 → unchanged
    projected, n = project_on_priority(G, s)
    assert n == 1
    assert torch.allclose(projected.sum(0), torch.tensor([[1.0, 1.0], [1.0, 3.0]], dtype=G.dtype))
    # the inner product runs over the task's channels jointly, not channel by channel
    s3 = torch.tensor([[3.0, 3.0, 1.0], [1.0, 1.0, 3.0]])
    G3 = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]],
                       [[-1.0, 0.0], [0.0, 3.0], [1.0, 0.0]]], dtype=torch.float64)
    projected, n = project_on_priority(G3, s3)  # per channel −1 and 3, jointly 2 ≥ 0
    assert n == 0 and torch.equal(projected, G3)
    # one task on top of every channel: the plain sum
    projected, n = project_on_priority(G, torch.tensor([[3.0, 3.0], [1.0, 1.0]]))
    assert n == 0 and torch.equal(projected, G)


def test_cso_phase2_properties_random():
    T, C, n = 3, 6, 5
    for seed in range(10):
        gen = torch.Generator().manual_seed(seed)
        G = torch.randn(T, C, n, generator=gen, dtype=torch.float64)
        s = torch.rand(T, C, generator=gen) * torch.tensor([[1.0], [2.0], [0.5]])
        projected, _ = project_on_priority(G, s)
        top = (s / s.sum(1, keepdim=True)).argmax(0)
        if (top == top[0]).all():
            continue
        for i in range(T):
            S = top == i
            if not S.any():
                continue
            gi = G[i, S].reshape(-1)
            assert torch.equal(projected[i, S], G[i, S])  # the top task is never modified
            for j in range(T):
                if j == i:
                    continue
                pj, gj = projected[j, S].reshape(-1), G[j, S].reshape(-1)
                assert pj @ gi >= -1e-10
                if gj @ gi >= 0:
                    assert torch.equal(pj, gj)
                else:  # only the component along g_i was removed
                    assert torch.allclose(pj, gj - (gj @ gi) / (gi @ gi) * gi)


class TinyTaskBNNet(nn.Module):
    """A shared conv with one BatchNorm per task, a shared linear layer, one head per task."""

    def __init__(self, T: int = 2):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, bias=False)
        self.bn = nn.ModuleList(nn.BatchNorm2d(4) for _ in range(T))
        self.proj = nn.Linear(4, 4)
        self.heads = nn.ModuleList(nn.Linear(4, 1) for _ in range(T))

    def forward(self, x, task: int):
        h = torch.relu(self.bn[task](self.conv(x))).mean((2, 3))
        return self.heads[task](torch.relu(self.proj(h)))


def test_cso_phase2_through_engine_and_missing_context():
    torch.manual_seed(0)  # a draw where both channel sets conflict (2 projections)
    net = TinyTaskBNNet().double()
    with torch.no_grad():
        net.bn[0].weight.copy_(torch.tensor([2.0, 2.0, 0.5, 0.5]))
        net.bn[1].weight.copy_(torch.tensor([0.5, 0.5, 2.0, 2.0]))
        net.bn[1].running_var.copy_(torch.tensor([1.0, 2.0, 0.5, 1.0]))
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    y = torch.randn(4, 1, dtype=torch.float64)
    shared = [("conv.weight", net.conv.weight), ("proj.weight", net.proj.weight),
              ("proj.bias", net.proj.bias)]
    slices, off = [], 0
    for name, p in shared:
        slices.append((name, off, p.shape))
        off += p.numel()
    strengths = connection_strength(net.conv.weight, [b.weight for b in net.bn],
                                    [b.running_var for b in net.bn])
    ctx = StepContext(param_slices=slices,
                      model_stats={"connection_strength": {"conv.weight": strengths}})
    params = [p for _, p in shared]

    def losses():
        return torch.stack([(net(x, t) - (-1) ** t * y).pow(2).mean() for t in range(2)])

    L = losses()
    G = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(L[t], params,
                                                                          retain_graph=True)])
                     for t in range(2)])
    n_conv = net.conv.weight.numel()
    projected, n = project_on_priority(G[:, :n_conv].reshape(2, 4, -1), strengths.double())
    assert n == 2
    want = torch.cat([projected.sum(0).reshape(-1), G[:, n_conv:].sum(0)])
    m = methods.create("cso", 2)
    assert m.requires_model == ("task_batchnorm",)
    task_params = [p for mod in (*net.bn, *net.heads) for p in mod.parameters()]
    methods.backward(m, losses(), params, task_params, context=ctx)
    got = torch.cat([p.grad.reshape(-1) for p in params])
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(want, G.sum(0))  # the projection did something here

    with pytest.raises(ValueError, match="connection strengths"):
        m.aggregate(G, torch.ones(2))
    with pytest.raises(ValueError, match="connection strengths"):
        m.aggregate(G, torch.ones(2), StepContext(param_slices=slices))
    bad = StepContext(param_slices=slices,
                      model_stats={"connection_strength": {"conv.wieght": strengths}})
    with pytest.raises(ValueError, match="not shared parameters"):
        m.aggregate(G, torch.ones(2), bad)
    bad = StepContext(param_slices=slices,
                      model_stats={"connection_strength": {"conv.weight": strengths[:, :3]}})
    with pytest.raises(ValueError, match="shape"):
        m.aggregate(G, torch.ones(2), bad)
