"""The gradient engine: exact per-task gradients, rep-level chain rule, head rules,
validation, and the distributed path (2 gloo processes spawned in the test)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

import methods
from methods.engine import jacobian
from tests.engine_cases import TinyMTL, make_data


def _grads(params):
    return torch.cat([p.grad.reshape(-1) for p in params])


@pytest.mark.parametrize("mode", ["loop", "batched"])
def test_param_jacobian_equals_separate_backward_passes(mode):
    model = TinyMTL()
    x, y = make_data()
    losses, _ = model.losses(x, y)
    params = model.shared_parameters() + model.task_parameters()
    J = jacobian(losses, params, mode=mode, retain_graph=True)
    for t in range(3):
        model.zero_grad()
        losses[t].backward(retain_graph=True)
        ref = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        torch.testing.assert_close(J[t], ref)


def test_loss_path_is_one_backward_of_weighted_sum():
    model = TinyMTL()
    x, y = make_data()
    losses, _ = model.losses(x, y)
    res = methods.backward(methods.create("ew", 3), losses, model.shared_parameters(), model.task_parameters())
    got = _grads(model.shared_parameters() + model.task_parameters())
    model.zero_grad()
    losses2, _ = model.losses(x, y)
    losses2.sum().backward()
    torch.testing.assert_close(got, _grads(model.shared_parameters() + model.task_parameters()))
    assert res.path == "loss" and torch.equal(res.weights, torch.ones(3))


@pytest.mark.parametrize("rule", ["own", "weighted"])
def test_param_path_direction_and_head_rule(rule):
    model = TinyMTL()
    x, y = make_data()
    losses, _ = model.losses(x, y)
    m = methods.create("imtl_g", 3)
    res = methods.backward(m, losses, model.shared_parameters(), model.task_parameters(),
                           head_update=rule, diagnostics=True)
    shared, heads = _grads(model.shared_parameters()), _grads(model.task_parameters())
    G = jacobian(model.losses(x, y)[0], model.shared_parameters())
    H = jacobian(model.losses(x, y)[0], model.task_parameters())
    w = res.weights
    torch.testing.assert_close(shared, w @ G)
    torch.testing.assert_close(heads, H.sum(0) if rule == "own" else w @ H)
    # IMTL-G's claim holds on the written gradient: equal projections on unit task gradients
    proj = (G / G.norm(dim=1, keepdim=True)) @ shared
    torch.testing.assert_close(proj, proj[0].expand(3), rtol=1e-4, atol=1e-6)
    # diagnostics (only when asked: the Gramian costs a T×T×P product)
    torch.testing.assert_close(res.grad_norms, G.norm(dim=1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(res.cosines, torch.nn.functional.cosine_similarity(
        G[:, None], G[None], dim=-1), rtol=1e-4, atol=1e-5)
    again = methods.backward(m, model.losses(x, y)[0], model.shared_parameters())
    assert again.grad_norms is None and again.cosines is None


def test_rep_level_equals_analytic_chain_rule():
    model = TinyMTL()
    x, y = make_data()
    losses, rep = model.losses(x, y)
    m = methods.create("imtl_g", 3)
    res = methods.backward(m, losses, model.shared_parameters(), model.task_parameters(), rep=rep, level="rep")
    got = _grads(model.shared_parameters())
    # analytic: Z = ∂L_t/∂rep (per task, flattened), weights from Z Zᵀ, then the encoder's
    # vector-Jacobian product with Σ_t w_t Z_t
    losses2, rep2 = model.losses(x, y)
    Z = jacobian(losses2, [rep2], retain_graph=True)
    from methods.imtl_g import imtl_g_weights

    w = imtl_g_weights((Z @ Z.T).double())[0].float()
    torch.testing.assert_close(res.weights, w, rtol=1e-5, atol=1e-6)
    model.zero_grad()
    rep2.backward((w @ Z).view_as(rep2))
    torch.testing.assert_close(got, _grads(model.shared_parameters()))
    assert res.path == "rep"


def test_level_auto_uses_method_default():
    model = TinyMTL()
    x, y = make_data()
    losses, rep = model.losses(x, y)
    res = methods.backward(methods.create("imtl_g", 3), losses, model.shared_parameters(),
                           model.task_parameters(), rep=rep)
    assert res.path == "param"


def test_validation_errors():
    model = TinyMTL()
    x, y = make_data()
    losses, rep = model.losses(x, y)
    with pytest.raises(ValueError, match="loss-weighting"):
        methods.backward(methods.create("ew", 3), losses, model.shared_parameters(), rep=rep, level="rep")
    with pytest.raises(ValueError, match="rep="):
        methods.backward(methods.create("imtl_g", 3), losses, model.shared_parameters(), level="rep")
    with pytest.raises(ValueError, match="shape"):
        methods.backward(methods.create("imtl_g", 2), losses, model.shared_parameters())
    with pytest.raises(ValueError, match="head_update"):
        methods.backward(methods.create("imtl_g", 3), losses, model.shared_parameters(), head_update="sum")
    with pytest.raises(ValueError, match="level"):
        methods.backward(methods.create("imtl_g", 3), losses, model.shared_parameters(), level="layer")
    with pytest.raises(ValueError, match="shared_params"):
        methods.backward(methods.create("ew", 3), losses, [])
    no_rep = [n for n in methods.available()
              if methods.get_class(n).requires_grads and not methods.get_class(n).supports_rep_grads]
    for name in no_rep:
        with pytest.raises(ValueError, match="representation"):
            methods.backward(methods.create(name, 3), model.losses(x, y)[0], model.shared_parameters(),
                             rep=rep, level="rep")


def test_non_finite_loss_raises_naming_task():
    model = TinyMTL()
    x, y = make_data()
    losses, _ = model.losses(x, y)
    losses = losses * torch.tensor([1.0, float("nan"), 1.0])
    with pytest.raises(FloatingPointError, match=r"\[1\]"):
        methods.backward(methods.create("ew", 3), losses, model.shared_parameters())


# ---------------------------------------------------------------------------------------
# distributed: 2 gloo processes vs one process on the concatenated batch
# ---------------------------------------------------------------------------------------

# (method name, level): param-level for the gradient methods, rep-level for MGDA-UB and
# IMTL-G, plus loss-level ones (EW, and UW whose transform sees the global loss).
DIST_CASES = [
    ("ew", "param"), ("pcgrad", "param"), ("cagrad", "param"), ("nash_mtl", "param"),
    ("db_mtl", "param"), ("imtl_g", "param"), ("mgda_ub", "rep"), ("imtl_g", "rep"),
    ("imtl", "param"), ("uw", "param"), ("famo", "param"), ("upgrad", "rep"),
    ("fairgrad", "param"),
]
STEPS = 3


def _run_case(name: str, level: str, x, y, steps: int = STEPS) -> torch.Tensor:
    """Train TinyMTL for a few SGD steps with ``name``; return all parameters, flattened."""
    model = TinyMTL()
    method = methods.create(name, 3, seed=11)
    opt = torch.optim.SGD(list(model.parameters()) + list(method.parameters()), lr=0.05)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        losses, rep = model.losses(x, y)
        methods.backward(method, losses, model.shared_parameters(), model.task_parameters(),
                         rep=rep, level=level)
        opt.step()
        with torch.no_grad():
            methods.after_step(method, model.losses(x, y)[0])
    return torch.cat([p.detach().reshape(-1) for p in list(model.parameters()) + list(method.parameters())])


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x, y = make_data(n=8)
        shard = slice(rank * 4, (rank + 1) * 4)
        results = {f"{n}@{lvl}": _run_case(n, lvl, x[shard], y[shard]) for n, lvl in DIST_CASES}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_distributed_update_equals_single_process_on_concatenated_batch(tmp_path):
    import torch.multiprocessing as mp

    missing = [n for n, _ in DIST_CASES if n not in methods.available()]
    assert not missing, f"methods not registered: {missing}"
    # spawn re-imports this module in the children; make sure the repo is importable there
    os.environ["PYTHONPATH"] = os.pathsep.join([os.getcwd(), *sys.path])
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    x, y = make_data(n=8)
    for name, level in DIST_CASES:
        key = f"{name}@{level}"
        single = _run_case(name, level, x, y)
        torch.testing.assert_close(r0[key], r1[key], rtol=0, atol=0, msg=f"{key}: ranks differ")
        torch.testing.assert_close(r0[key], single, rtol=1e-4, atol=1e-5,
                                   msg=f"{key}: distributed != single process")


@pytest.mark.parametrize("rule", ["own", "weighted"])
@pytest.mark.parametrize("name", ["imtl", "uw"])
def test_method_parameters_always_get_their_own_gradient(name, rule):
    """UW's/IMTL's s_t learn from their own task's transformed loss under either head rule."""
    model = TinyMTL()
    x, y = make_data()
    method = methods.create(name, 3)
    losses, _ = model.losses(x, y)
    methods.backward(method, losses, model.shared_parameters(), model.task_parameters(), head_update=rule)
    got = torch.cat([p.grad.reshape(-1) for p in method.parameters()])
    s = list(method.parameters())
    ref = torch.autograd.grad(method.transform_losses(model.losses(x, y)[0]).sum(), s)
    torch.testing.assert_close(got, torch.cat([g.reshape(-1) for g in ref]))


def test_rep_path_applies_the_methods_clipping():
    model = TinyMTL()
    x, y = make_data()
    losses, rep = model.losses(x, y)
    m = methods.create("nash_mtl", 3, max_norm=1e-3)
    res = methods.backward(m, losses, model.shared_parameters(), model.task_parameters(), rep=rep, level="rep")
    norm = torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()]).norm()
    assert res.info["shared_grad_norm_before_clip"] > 1e-3
    torch.testing.assert_close(norm, torch.tensor(1e-3), rtol=1e-4, atol=0)
