"""Paper claims of the loss-level and learned-weight methods: UW, IMTL-L, IMTL (hybrid), DWA,
RLW, GLS, FAMO, GradNorm (docs/methods.md §UW, §IMTL-G, §IMTL-L, §DWA, §RLW, §GLS, §FAMO,
§GradNorm)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import methods
from methods.gradnorm import gradnorm_scale_grad
from methods.space import LogUniform, Uniform
from tests.method_cases import PINNED_G, roundtrip

DT = torch.float64


# ---------------------------------------------------------------------------------------
# a tiny hard-sharing model (float64, positive losses)
# ---------------------------------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self, T: int = 3, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.enc = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh())
        self.heads = nn.ModuleList([nn.Linear(5, 1) for _ in range(T)])
        self.double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=DT) * 0.6)
        self.x = torch.randn(10, 4, generator=g, dtype=DT)
        self.y = torch.randn(10, T, generator=g, dtype=DT) * torch.linspace(0.3, 3.0, T, dtype=DT)

    def shared(self):
        return list(self.enc.parameters())

    def head_params(self):
        return [p for h in self.heads for p in h.parameters()]

    def losses(self, scale: torch.Tensor | None = None):
        rep = self.enc(self.x)
        pred = torch.cat([h(rep) for h in self.heads], 1)
        L = ((pred - self.y) ** 2).mean(0) + 0.05
        return (L if scale is None else L * scale), rep


def flat(grads):
    return torch.cat([g.reshape(-1) for g in grads])


def read_grads(params):
    return flat([p.grad for p in params])


def run_engine(method, model, scale=None, **kw):
    for p in list(model.parameters()) + list(method.parameters()):
        p.grad = None
    L, rep = model.losses(scale)
    res = methods.backward(method, L, model.shared(), model.head_params(), rep=rep, **kw)
    return res, L.detach()


def per_task_grads(outputs, params):
    return torch.stack([flat(torch.autograd.grad(o, params, retain_graph=True)) for o in outputs])


# ---------------------------------------------------------------------------------------
# UW
# ---------------------------------------------------------------------------------------


def test_uw_default_init_and_hparam():
    assert torch.equal(methods.create("uw", 3).log_vars.detach(), torch.full((3,), -0.5))
    assert torch.equal(methods.create("uw", 2, init=0.0).log_vars.detach(), torch.zeros(2))
    with pytest.raises(ValueError, match="init"):
        methods.create("uw", 2, init=float("nan"))


def test_uw_gradients_match_hand_computation():
    model, m = Tiny(), methods.create("uw", 3)
    with torch.no_grad():
        m.log_vars.copy_(torch.tensor([-0.3, 0.4, 1.1]))
    res, L = run_engine(m, model)
    s = m.log_vars.detach().to(DT)
    # ∂/∂s ½(e^{−s}L + s) = ½(1 − e^{−s}L)
    assert torch.allclose(m.log_vars.grad.to(DT), 0.5 * (1 - torch.exp(-s) * L), atol=1e-6)
    L2, _ = model.losses()
    ref = flat(torch.autograd.grad((0.5 * torch.exp(-s) * L2).sum(), model.shared()))
    assert torch.allclose(read_grads(model.shared()), ref, atol=1e-6)
    assert torch.equal(res.weights, torch.ones(3, dtype=DT))
    assert res.info["loss_scale_2"] == pytest.approx(0.5 * math.exp(-float(m.log_vars.detach()[2])))


def test_uw_minimiser_over_s_is_log_loss():
    # at e^{s} = L the s-gradient vanishes and each task is weighted ½/L_t
    model, m = Tiny(), methods.create("uw", 3)
    L0, _ = model.losses()
    with torch.no_grad():
        m.log_vars.copy_(L0.detach().log())
    res, L = run_engine(m, model)
    assert m.log_vars.grad.abs().max() < 1e-6
    L2, _ = model.losses()
    ref = flat(torch.autograd.grad((0.5 * L2 / L2.detach()).sum(), model.shared()))
    assert torch.allclose(read_grads(model.shared()), ref, atol=1e-5)
    # ... and gradient descent on s alone converges there
    m2 = methods.create("uw", 3, init=0.0)
    opt = torch.optim.SGD(m2.parameters(), lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        m2.transform_losses(L).sum().backward()
        opt.step()
    assert torch.allclose(m2.log_vars.detach().to(DT), L.log(), atol=1e-5)


# ---------------------------------------------------------------------------------------
# IMTL-L
# ---------------------------------------------------------------------------------------


def test_imtl_l_gradients_and_minimiser():
    model, m = Tiny(), methods.create("imtl_l", 3)
    assert torch.equal(m.loss_scale.detach(), torch.zeros(3))
    with torch.no_grad():
        m.loss_scale.copy_(torch.tensor([0.2, -0.7, 0.5]))
    _, L = run_engine(m, model)
    s = m.loss_scale.detach().to(DT)
    assert torch.allclose(m.loss_scale.grad.to(DT), torch.exp(s) * L - 1, atol=1e-6)

    # at s = −log L: e^{s}L = 1, zero s-gradient, and the θ-gradient is ∇Σ log L_t
    with torch.no_grad():
        m.loss_scale.copy_(-L.log())
    res, L = run_engine(m, model)
    scaled = torch.exp(m.loss_scale.detach().to(DT)) * L
    assert torch.allclose(scaled, torch.ones(3, dtype=DT), atol=1e-6)
    assert m.loss_scale.grad.abs().max() < 1e-6
    L2, _ = model.losses()
    ref = flat(torch.autograd.grad(L2.log().sum(), model.shared()))
    assert torch.allclose(read_grads(model.shared()), ref, atol=1e-5)
    assert torch.equal(res.weights, torch.ones(3, dtype=DT))


# ---------------------------------------------------------------------------------------
# IMTL (hybrid)
# ---------------------------------------------------------------------------------------


def _scaled_loss_grads(m, model, scale=None):
    L, _ = model.losses(scale)
    Lt = m.transform_losses(L)
    return per_task_grads(Lt, model.shared()), per_task_grads(Lt, model.head_params()), L.detach()


def test_imtl_capabilities():
    cls = methods.get_class("imtl")
    assert cls.requires_grads and cls.supports_rep_grads and cls.gramian_only
    assert cls.default_head_update == "own"


def test_imtl_equal_projections_heads_and_s_get_own_gradient():
    model, m = Tiny(), methods.create("imtl", 3)
    with torch.no_grad():
        m.loss_scale.copy_(torch.tensor([0.3, -1.0, 0.6]))
    G, H, L = _scaled_loss_grads(m, model)
    res, _ = run_engine(m, model)
    d = read_grads(model.shared())
    U = G / G.norm(dim=1, keepdim=True)
    proj = U @ d
    assert torch.allclose(proj, proj.mean().expand(3), rtol=1e-8)
    assert torch.allclose(d, res.weights @ G, atol=1e-10)
    assert float(res.weights.sum()) == pytest.approx(1.0)
    # heads: unweighted gradient of their own scaled loss; s_t: e^{s_t}L_t − 1
    assert torch.allclose(read_grads(model.head_params()), H.sum(0), atol=1e-10)
    s = m.loss_scale.detach().to(DT)
    assert torch.allclose(m.loss_scale.grad.to(DT), torch.exp(s) * L - 1, atol=1e-6)


def test_imtl_rep_level_equal_projections_on_rep_gradients():
    model, m = Tiny(), methods.create("imtl", 3)
    L, rep = model.losses()
    Lt = m.transform_losses(L)
    R = per_task_grads(Lt, [rep])
    res, _ = run_engine(m, model, level="rep")
    assert res.path == "rep"
    U = R / R.norm(dim=1, keepdim=True)
    proj = U @ (res.weights @ R)
    assert torch.allclose(proj, proj.mean().expand(3), rtol=1e-8)
    L2, _ = model.losses()
    ref = flat(torch.autograd.grad((res.weights * m.transform_losses(L2)).sum(), model.shared()))
    assert torch.allclose(read_grads(model.shared()), ref, atol=1e-10)


def test_imtl_scale_invariance_at_s_minimiser():
    model = Tiny()
    outs = []
    for c in (1.0, 10.0):
        scale = torch.tensor([1.0, c, 1.0], dtype=DT)
        m = methods.create("imtl", 3)
        L, _ = model.losses(scale)
        with torch.no_grad():
            m.loss_scale.copy_(-L.detach().log())  # the IMTL-L minimiser e^{s}L = 1
        res, _ = run_engine(m, model, scale=scale)
        outs.append((read_grads(model.shared()).clone(), res.weights))
    assert torch.allclose(outs[0][0], outs[1][0], rtol=1e-6, atol=1e-9)
    assert torch.allclose(outs[0][1], outs[1][1], rtol=1e-6)


def test_imtl_s_adapts_toward_balanced_losses():
    # a few SGD steps on s alone (model frozen): e^{s}L → 1 for every task
    model, m = Tiny(), methods.create("imtl", 3)
    opt = torch.optim.SGD(m.parameters(), lr=0.3)
    for _ in range(150):
        run_engine(m, model, scale=torch.tensor([1.0, 10.0, 0.1], dtype=DT))
        opt.step()
    L, _ = model.losses(torch.tensor([1.0, 10.0, 0.1], dtype=DT))
    scaled = torch.exp(m.loss_scale.detach().to(DT)) * L.detach()
    assert torch.allclose(scaled, torch.ones(3, dtype=DT), atol=1e-3)


# ---------------------------------------------------------------------------------------
# DWA
# ---------------------------------------------------------------------------------------


def _dwa_epoch(m, epoch, batches):
    m.start_epoch(epoch, 10)
    return [m.aggregate(None, torch.tensor(b, dtype=DT)).weights for b in batches]


def test_dwa_hand_computed_weights():
    m = methods.create("dwa", 3)
    for w in _dwa_epoch(m, 0, [[1.0, 2.0, 4.0], [3.0, 2.0, 4.0]]):  # means (2, 2, 4)
        assert torch.equal(w, torch.ones(3, dtype=DT))
    for w in _dwa_epoch(m, 1, [[1.0, 1.0, 2.0], [1.0, 3.0, 2.0]]):  # means (1, 2, 2)
        assert torch.equal(w, torch.ones(3, dtype=DT))
    # r = (0.5, 1, 0.5), τ = 2: w = 3·softmax(r/2)
    expected = torch.tensor([0.913513027260852, 1.172973945478296, 0.913513027260852], dtype=DT)
    ws = _dwa_epoch(m, 2, [[1.0, 1.0, 1.0], [0.5, 1.0, 3.0]])  # means (0.75, 1, 2)
    for w in ws:
        assert torch.allclose(w, expected, rtol=1e-12)
        assert float(w.sum()) == pytest.approx(3.0)
    # the next epoch uses epochs 1 and 2: r = (0.75, 0.5, 1)
    (w3,) = _dwa_epoch(m, 3, [[1.0, 1.0, 1.0]])
    r = torch.tensor([0.75, 0.5, 1.0], dtype=DT)
    assert torch.allclose(w3, 3 * torch.softmax(r / 2, 0), rtol=1e-12)


def test_dwa_temperature_and_resume():
    m = methods.create("dwa", 3, temperature=1.0)
    _dwa_epoch(m, 0, [[2.0, 2.0, 4.0]])
    _dwa_epoch(m, 1, [[1.0, 2.0, 2.0]])
    m.start_epoch(2, 10)
    m.start_epoch(2, 10)  # re-entering the epoch in progress changes nothing
    expected = torch.tensor([0.8222058571835908, 1.355588285632818, 0.8222058571835908], dtype=DT)
    assert torch.allclose(m.aggregate(None, torch.ones(3, dtype=DT)).weights, expected)
    # mid-epoch checkpoint: the partial epoch sum survives the round trip
    restored = roundtrip(m, methods.create("dwa", 3, temperature=1.0))
    for k in (m, restored):
        k.aggregate(None, torch.tensor([4.0, 1.0, 1.0], dtype=DT))
        k.start_epoch(3, 10)
    a = m.aggregate(None, torch.ones(3, dtype=DT)).weights
    b = restored.aggregate(None, torch.ones(3, dtype=DT)).weights
    assert torch.equal(a, b)
    r = torch.tensor([2.5 / 1.0, 1.0 / 2.0, 1.0 / 2.0], dtype=DT)  # epoch-2 means (2.5, 1, 1)
    assert torch.allclose(a, 3 * torch.softmax(r, 0), rtol=1e-12)
    with pytest.raises(ValueError, match="temperature"):
        methods.create("dwa", 3, temperature=0.0)


# ---------------------------------------------------------------------------------------
# RLW
# ---------------------------------------------------------------------------------------


def test_rlw_simplex_and_seeding():
    T = 4
    a, b, c = (methods.create("rlw", T, seed=s) for s in (3, 3, 4))
    L = torch.ones(T, dtype=DT)
    wa = torch.stack([a.aggregate(None, L).weights for _ in range(50)])
    wb = torch.stack([b.aggregate(None, L).weights for _ in range(50)])
    wc = torch.stack([c.aggregate(None, L).weights for _ in range(50)])
    assert (wa > 0).all() and torch.allclose(wa.sum(1), torch.ones(50, dtype=DT))
    assert torch.equal(wa, wb)
    assert not torch.allclose(wa, wc)
    assert not torch.allclose(wa[0], wa[1])  # a fresh draw every step
    # w = softmax(ε), ε ~ N(0, I) from the method's generator
    ref = torch.Generator().manual_seed(3)
    eps = torch.randn(T, generator=ref, dtype=DT)
    assert torch.allclose(wa[0], torch.softmax(eps, 0))


def test_rlw_weights_are_exchangeable():
    m = methods.create("rlw", 3, seed=0)
    w = torch.stack([m.aggregate(None, torch.ones(3, dtype=DT)).weights for _ in range(4000)])
    assert torch.allclose(w.mean(0), torch.full((3,), 1 / 3, dtype=DT), atol=0.01)


# ---------------------------------------------------------------------------------------
# GLS
# ---------------------------------------------------------------------------------------


def test_gls_weights_pinned():
    w = methods.create("gls", 3).aggregate(None, torch.tensor([1.0, 4.0, 16.0], dtype=DT)).weights
    assert torch.allclose(w, torch.tensor([4 / 3, 1 / 3, 1 / 12], dtype=DT), rtol=1e-12)


def test_gls_gradient_is_geometric_mean_gradient():
    model, m = Tiny(), methods.create("gls", 3)
    run_engine(m, model)
    L, _ = model.losses()
    params = model.shared() + model.head_params()
    ref = flat(torch.autograd.grad(L.prod() ** (1 / 3), params, retain_graph=True))
    got = read_grads(params)
    assert torch.allclose(got, ref, rtol=1e-10, atol=1e-12)
    # the stated form (L/T) Σ ∇L_t / L_t
    geo = L.detach().prod() ** (1 / 3)
    stated = flat(torch.autograd.grad((geo / 3 * L / L.detach()).sum(), params))
    assert torch.allclose(got, stated, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bad", [0.0, -0.5, float("nan")])
def test_gls_rejects_non_positive_losses(bad):
    m = methods.create("gls", 3)
    with pytest.raises(ValueError, match="positive"):
        m.aggregate(None, torch.tensor([1.0, bad, 2.0], dtype=DT))
    if math.isnan(bad):
        return  # the engine itself stops non-finite losses (FloatingPointError)
    model = Tiny()
    with pytest.raises(ValueError, match="positive"):
        run_engine(m, model, scale=torch.tensor([1.0, bad, 1.0], dtype=DT))
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------------------------------
# FAMO
# ---------------------------------------------------------------------------------------


def _famo_official_loss(logits, losses):
    """famo.py ``get_weighted_loss`` (min_losses = 0)."""
    z = torch.softmax(logits, -1)
    D = losses + 1e-8
    c = (z / D).sum().detach()
    return (D.log() * z / c).sum()


def test_famo_weighted_loss_gradient_equals_log_form():
    model, m = Tiny(), methods.create("famo", 3)
    with torch.no_grad():
        m.logits.copy_(torch.tensor([0.4, -0.2, 0.9], dtype=DT))
    res, _ = run_engine(m, model)
    L, _ = model.losses()
    params = model.shared() + model.head_params()
    ref = flat(torch.autograd.grad(_famo_official_loss(m.logits, L), params))
    assert torch.allclose(read_grads(params), ref, rtol=1e-10, atol=1e-12)
    # the weights are d(official loss)/dL_t
    Lq = L.detach().clone().requires_grad_(True)
    (dw,) = torch.autograd.grad(_famo_official_loss(m.logits, Lq), Lq)
    assert torch.allclose(res.weights, dw, rtol=1e-12)


def test_famo_after_step_matches_official_update():
    T = 3
    m = methods.create("famo", T)  # famo.py defaults: gamma 0.01, w_lr 0.025
    w = torch.zeros(T, dtype=DT, requires_grad=True)
    w_opt = torch.optim.Adam([w], lr=0.025, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        old = torch.rand(T, generator=g, dtype=DT) + 0.2
        new = old * (torch.rand(T, generator=g, dtype=DT) * 0.5 + 0.6)
        agg = m.aggregate(None, old)
        Lq = old.clone().requires_grad_(True)
        (dw,) = torch.autograd.grad(_famo_official_loss(w, Lq), Lq)
        assert torch.allclose(agg.weights, dw, rtol=1e-12)
        m.after_step(new)
        # famo.py ``update``
        delta = (old + 1e-8).log() - (new + 1e-8).log()
        with torch.enable_grad():
            d = torch.autograd.grad(torch.softmax(w, -1), w, grad_outputs=delta.detach())[0]
        w_opt.zero_grad()
        w.grad = d
        w_opt.step()
        assert torch.allclose(m.logits, w.detach(), rtol=1e-12, atol=1e-15)
    assert not torch.equal(m.logits, torch.zeros(T, dtype=DT))


def test_famo_slower_task_gains_weight():
    m = methods.create("famo", 2, gamma=0.001)
    L = torch.tensor([1.0, 1.0], dtype=DT)
    rate = torch.tensor([0.9, 0.99], dtype=DT)  # task 1 improves more slowly
    z_prev = 0.5
    for _ in range(20):
        m.aggregate(None, L)
        L = L * rate
        m.after_step(L)
        z = float(m.task_distribution()[1])
        assert z > z_prev
        z_prev = z
    assert z_prev > 0.6


def test_famo_state_is_not_a_trainer_parameter_and_resumes_exactly():
    m = methods.create("famo", 3, gamma=0.001, w_lr=0.05)
    assert list(m.parameters()) == []
    g = torch.Generator().manual_seed(1)
    seq = [torch.rand(3, generator=g, dtype=DT) + 0.1 for _ in range(6)]
    for L in seq[:3]:
        m.aggregate(None, L)
        m.after_step(L * 0.8)
    r = roundtrip(m, methods.create("famo", 3, gamma=0.001, w_lr=0.05))
    for L in seq[3:]:
        for k in (m, r):
            k.aggregate(None, L)
            k.after_step(L * 0.7)
    assert torch.equal(m.logits, r.logits)
    assert torch.equal(m.adam.exp_avg_sq, r.adam.exp_avg_sq)


def test_famo_rejects_bad_input():
    m = methods.create("famo", 2)
    with pytest.raises(ValueError, match="before aggregate"):
        m.after_step(torch.ones(2, dtype=DT))
    with pytest.raises(ValueError, match="positive"):
        m.aggregate(None, torch.tensor([1.0, -0.1], dtype=DT))
    m.aggregate(None, torch.ones(2, dtype=DT))
    with pytest.raises(ValueError, match="positive"):
        m.after_step(torch.tensor([0.0, 1.0], dtype=DT))
    for bad in ({"gamma": -1.0}, {"w_lr": 0.0}):
        with pytest.raises(ValueError):
            methods.create("famo", 2, **bad)


# ---------------------------------------------------------------------------------------
# GradNorm
# ---------------------------------------------------------------------------------------


def _gradnorm_after_epoch0(T=3, epoch0=((1.0, 2.0, 4.0), (3.0, 2.0, 2.0)), **hp):
    m = methods.create("gradnorm", T, **hp)
    m.start_epoch(0, 10)
    for L in epoch0:
        agg = m.aggregate(None, torch.tensor(L[:T], dtype=DT))
        assert agg.direction is None and torch.equal(agg.weights, torch.ones(T, dtype=DT))
    m.start_epoch(1, 10)
    return m


def test_gradnorm_epoch0_is_equal_weights_and_sets_initial_losses():
    m = methods.create("gradnorm", 3)
    assert not m.needs_grads()
    model = Tiny()
    res, _ = run_engine(m, model)
    assert res.path == "loss" and torch.equal(res.weights, torch.ones(3, dtype=DT))
    L, _ = model.losses()
    ref = flat(torch.autograd.grad(L.sum(), model.shared() + model.head_params()))
    assert torch.allclose(read_grads(model.shared() + model.head_params()), ref, atol=1e-12)

    m = _gradnorm_after_epoch0()
    assert m.needs_grads()
    assert torch.allclose(m.initial_losses, torch.tensor([2.0, 2.0, 3.0], dtype=DT))
    with pytest.raises(ValueError, match="positive"):
        _gradnorm_after_epoch0(epoch0=((0.0, 1.0, 1.0),))


@pytest.mark.parametrize("alpha", [0.0, 0.7, 1.5, 3.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradnorm_analytic_gradient_matches_autograd(alpha, seed):
    T, P = 4, 11
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(T, P, generator=g, dtype=DT) * torch.exp(torch.randn(T, 1, generator=g))
    logits = torch.randn(T, generator=g, dtype=DT)
    L = torch.rand(T, generator=g, dtype=DT) + 0.1
    L0 = torch.rand(T, generator=g, dtype=DT) + 0.5
    # explicit LibMTL GradNorm.py
    ls = logits.clone().requires_grad_(True)
    w = T * torch.softmax(ls, -1)
    G_per = torch.norm(w.unsqueeze(1) * G, p=2, dim=-1)
    Lhat = L / L0
    const = (G_per.mean(0) * (Lhat / Lhat.mean()) ** alpha).detach()
    L_grad = (G_per - const).abs().sum(0)
    L_grad.backward()
    grad, w_out, lg = gradnorm_scale_grad(logits, G @ G.T, L, L0, alpha)
    assert torch.allclose(grad, ls.grad, rtol=1e-10, atol=1e-12)
    assert torch.allclose(w_out, w.detach()) and lg == pytest.approx(float(L_grad.detach()))


def test_gradnorm_steps_match_libmtl_transcription():
    T, lr, alpha = 3, 0.01, 1.5
    m = _gradnorm_after_epoch0(lr=lr, alpha=alpha)
    ls = torch.ones(T, dtype=DT, requires_grad=True)  # LibMTL init: ones
    opt = torch.optim.Adam([ls], lr=lr)
    L0 = torch.tensor([2.0, 2.0, 3.0], dtype=DT)
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        G = torch.randn(T, 7, generator=g, dtype=DT)
        L = torch.rand(T, generator=g, dtype=DT) + 0.5
        agg = m.aggregate(G, L)
        w = T * torch.softmax(ls, -1)
        G_per = torch.norm(w.unsqueeze(1) * G, p=2, dim=-1)
        Lhat = L / L0
        const = (G_per.mean(0) * (Lhat / Lhat.mean()) ** alpha).detach()
        opt.zero_grad()
        (G_per - const).abs().sum(0).backward()
        loss_weight = w.detach().clone()
        opt.step()
        assert torch.allclose(agg.weights, loss_weight, rtol=1e-12)
        assert torch.allclose(agg.direction, loss_weight @ G, rtol=1e-12)
        assert torch.allclose(m.logits, ls.detach(), rtol=1e-12, atol=1e-15)
        assert float(agg.weights.sum()) == pytest.approx(T)


def test_gradnorm_engine_shared_weighted_heads_own():
    model = Tiny()
    m = _gradnorm_after_epoch0(lr=0.05)
    with torch.no_grad():
        m.logits.copy_(torch.tensor([0.2, 1.0, -0.4], dtype=DT))
    w_before = 3 * torch.softmax(m.logits.clone(), 0)
    res, _ = run_engine(m, model)
    assert res.path == "param" and torch.allclose(res.weights, w_before)
    L, _ = model.losses()
    ref_sh = flat(torch.autograd.grad((w_before * L).sum(), model.shared(), retain_graph=True))
    ref_h = flat(torch.autograd.grad(L.sum(), model.head_params()))
    assert torch.allclose(read_grads(model.shared()), ref_sh, atol=1e-12)
    assert torch.allclose(read_grads(model.head_params()), ref_h, atol=1e-12)
    assert not torch.equal(m.logits, torch.tensor([0.2, 1.0, -0.4], dtype=DT))  # it stepped


def test_gradnorm_alpha0_equalises_weighted_gradient_norms():
    K = PINNED_G @ PINNED_G.T  # norms 4.12, 1.22, 1.07
    norms = K.diagonal().sqrt()
    m = _gradnorm_after_epoch0(alpha=0.0, lr=0.02)
    L = torch.tensor([1.0, 0.5, 2.0], dtype=DT)

    def spread():
        G = 3 * torch.softmax(m.logits, 0) * norms
        return float((G.max() - G.min()) / G.mean())

    start = spread()
    for _ in range(400):
        w, _ = m.weights_from_gramian(K, L)
        assert float(w.sum()) == pytest.approx(3.0) and (w > 0).all()
    assert start > 1.0 and spread() < 0.05


def test_gradnorm_rejects_bad_hparams_and_losses():
    with pytest.raises(ValueError, match="alpha"):
        methods.create("gradnorm", 2, alpha=-1.0)
    with pytest.raises(ValueError, match="lr"):
        methods.create("gradnorm", 2, lr=0.0)
    m = _gradnorm_after_epoch0()
    with pytest.raises(ValueError, match="positive"):
        m.aggregate(PINNED_G, torch.tensor([1.0, -1.0, 1.0], dtype=DT))


# ---------------------------------------------------------------------------------------
# declared search spaces
# ---------------------------------------------------------------------------------------


def test_search_spaces():
    assert methods.get_class("famo").search_space == {
        "gamma": LogUniform(1e-4, 1e-1), "w_lr": LogUniform(1e-3, 1e-1)}
    assert methods.get_class("gradnorm").search_space == {"alpha": Uniform(0.0, 3.0)}
    assert methods.get_class("dwa").search_space == {"temperature": Uniform(0.5, 5.0)}
