"""The method-independent loss transform (``loss_transform="log"``) and DB-MTL's ablation
switches: DB-MTL's Table 5 (log transform × gradient balancing) and Figure 1 (the log
transform added to other methods) become configurations, not new methods."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import methods
from tests.engine_cases import TinyMTL, make_data


def grads_through_engine(name, **hp):
    model = TinyMTL(3)
    x, y = make_data()
    losses, rep = model.losses(x, y)
    methods.backward(methods.create(name, 3, **hp), losses, model.shared_parameters(),
                     model.task_parameters(), rep=rep)
    return torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()])


def per_task_grads_of(fn):
    """Independent reference: G of fn(losses) by separate autograd calls."""
    model = TinyMTL(3)
    x, y = make_data()
    losses, _ = model.losses(x, y)
    out = fn(losses)
    shared = model.shared_parameters()
    return torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        out[t], shared, retain_graph=True)]) for t in range(3)])


@pytest.mark.parametrize("name", ["pcgrad", "imtl_g", "cagrad", "nash_mtl", "aligned_mtl",
                                  "gradvac"])
def test_log_transform_feeds_the_method_the_log_losses(name):
    """DB-MTL's Figure 1 rows: <method> + log equals <method> on ∇log(L + 1e-8)."""
    G = per_task_grads_of(lambda L: torch.log(L + 1e-8))
    m = methods.create(name, 3)
    model = TinyMTL(3)
    x, y = make_data()
    L, _ = model.losses(x, y)
    ref = m.aggregate(G, torch.log(L.detach() + 1e-8)).direction
    got = grads_through_engine(name, loss_transform="log")
    clip = m.max_grad_norm()
    if clip is not None:
        ref = ref * min(1.0, clip / (float(ref.norm()) + 1e-6))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9)


def test_db_mtl_ablation_rows():
    """Table 5: ew; ew + log = db_mtl without gradient balancing; db_mtl without log;
    db_mtl. The rows are four different updates."""
    ew = grads_through_engine("ew")
    ew_log = grads_through_engine("ew", loss_transform="log")
    no_balance = grads_through_engine("db_mtl", balance_gradients=False)
    np.testing.assert_allclose(no_balance, ew_log, rtol=1e-5, atol=1e-7)  # float32 model
    np.testing.assert_allclose(ew_log, per_task_grads_of(lambda L: torch.log(L + 1e-8)).sum(0),
                               rtol=1e-5, atol=1e-7)
    no_log = grads_through_engine("db_mtl", log_transform=False)
    full = grads_through_engine("db_mtl")
    rows = [ew, ew_log, no_log, full]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(rows[i], rows[j], rtol=1e-3), (i, j)
    # without the log, DB-MTL balances the raw gradients: first step b = 0.9, so each task
    # contributes γ = max‖0.1 g_t‖ along g_t
    G = per_task_grads_of(lambda L: L)
    buf = 0.1 * G
    n = buf.norm(dim=1)
    np.testing.assert_allclose(no_log, ((n.max() / (n + 1e-8))[:, None] * buf).sum(0),
                               rtol=1e-5, atol=1e-7)


def test_db_mtl_without_log_takes_signed_losses():
    assert methods.create("db_mtl", 2).requires_positive_losses()
    assert not methods.create("db_mtl", 2, log_transform=False).requires_positive_losses()


@pytest.mark.parametrize("name,hp,match", [
    ("db_mtl", {}, "log_transform"),
    ("famo", {}, "positive"),
    ("gls", {}, "positive"),
    ("gradnorm", {}, "positive"),
    ("mgda", {"normalization": "loss"}, "positive"),
])
def test_log_transform_refused_where_it_cannot_combine(name, hp, match):
    with pytest.raises(ValueError, match=match):
        methods.create(name, 3, loss_transform="log", **hp)


def test_unknown_loss_transform_lists_choices():
    with pytest.raises(ValueError, match=r"\['none', 'log'\]"):
        methods.create("ew", 3, loss_transform="sqrt")


def test_log_transform_composes_with_a_methods_own_transform():
    """IMTL-L's e^s·L − s acts on the log losses; UW's terms likewise."""
    m = methods.create("imtl_l", 2, loss_transform="log")
    with torch.no_grad():
        m.loss_scale.copy_(torch.tensor([0.3, -0.2]))
    L = torch.tensor([0.5, 4.0])
    expect = torch.exp(m.loss_scale) * torch.log(L + 1e-8) - m.loss_scale
    np.testing.assert_allclose(m.prepare_losses(L).detach(), expect.detach(), rtol=1e-6)
    assert m.requires_positive_losses()


def test_loss_transform_is_a_hyperparameter_of_every_method():
    for name in methods.available():
        assert methods.hparam_fields(name)["loss_transform"] == "none", name
    assert methods.create("pcgrad", 2, loss_transform="log").hparams()["loss_transform"] == "log"
    # unset, it is not part of the resolved hyperparameters (run ids stay as they were)
    assert "loss_transform" not in methods.create("pcgrad", 2).hparams()
