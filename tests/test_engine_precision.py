"""Mixed precision through the engine: the method sees unscaled fp32 gradients under fp16
loss scaling (T backward passes, rep level, loss path), bf16 autocast needs no scaler,
overflowed fp16 steps are skipped before the method's state advances, and the scaler's
state round-trips. All on CPU (torch's CPU autocast does bf16 and fp16)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import methods
from methods.precision import LossScaler
from tests.engine_cases import TinyMTL, make_data

CASES = [("ew", "param"), ("pcgrad", "param"), ("cagrad", "param"), ("imtl_g", "param"),
         ("nash_mtl", "param"), ("mgda_ub", "rep"), ("db_mtl", "param"), ("famo", "param")]


def shared_grads(name, level, dtype=None, scaler=None, seed=0):
    model = TinyMTL(3, d_in=6, d_rep=5, seed=seed)
    x, y = make_data()
    method = methods.create(name, 3)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        losses, rep = model.losses(x, y)
    res = methods.backward(method, losses.float(), model.shared_parameters(),
                           model.task_parameters(), rep=rep, level=level, scaler=scaler)
    grads = [p.grad for p in model.shared_parameters()]
    flat = None if any(g is None for g in grads) else torch.cat([g.reshape(-1) for g in grads])
    return flat, res, method


@pytest.mark.parametrize("name,level", CASES)
def test_scaled_fp32_equals_unscaled(name, level):
    """With exact arithmetic in fp32 the scale cancels: the method saw unscaled gradients
    (CAGrad, Nash-MTL, IMTL-G and DB-MTL depend on their norms)."""
    ref, _, _ = shared_grads(name, level)
    got, res, _ = shared_grads(name, level, scaler=LossScaler(scale=1024.0))
    assert not res.skipped and res.info["loss_scale"] == 1024.0
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype,scale,rtol", [(torch.float16, 1024.0, 2e-2),
                                              (torch.bfloat16, None, 6e-2)])
@pytest.mark.parametrize("name,level", CASES)
def test_low_precision_direction_matches_fp32(name, level, dtype, scale, rtol):
    ref, _, _ = shared_grads(name, level)
    scaler = LossScaler(scale=scale) if scale else None
    got, res, _ = shared_grads(name, level, dtype=dtype, scaler=scaler)
    assert not res.skipped
    cos = float(got @ ref / (got.norm() * ref.norm()))
    assert cos > 1 - rtol, (name, cos)
    assert abs(float(got.norm() / ref.norm()) - 1) < 5 * rtol, name


@pytest.mark.parametrize("name,level", [("pcgrad", "param"), ("mgda_ub", "rep"), ("ew", "param")])
def test_overflow_skips_the_step_before_the_method_moves(name, level):
    scaler = LossScaler(scale=1e38)  # × a loss of order 1: the backward overflows fp32
    got, res, method = shared_grads(name, level, scaler=scaler)
    assert res.skipped and got is None
    assert scaler.scale == 0.5e38 and scaler.skipped_steps == 1
    if method.requires_grads:  # a gradient method never saw the step
        assert method.step_count == 0


def test_scaler_growth_backoff_and_state():
    s = LossScaler(scale=8.0, growth_interval=2)
    s.update(False)
    assert s.scale == 8.0
    s.update(False)
    assert s.scale == 16.0 and s.good_steps == 0
    s.update(True)
    assert s.scale == 8.0 and s.skipped_steps == 1
    t = LossScaler()
    t.load_state_dict(s.state_dict())
    assert (t.scale, t.good_steps, t.skipped_steps) == (8.0, 0, 1)
    with pytest.raises(ValueError, match="backoff_factor"):
        LossScaler(backoff_factor=2.0)


def test_measured_jacobian_choice_is_cached_and_logged():
    from methods.engine import jacobian, jacobian_choices

    model = TinyMTL(3)
    x, y = make_data()
    losses, _ = model.losses(x, y)
    ref = jacobian(losses, model.shared_parameters(), mode="loop", retain_graph=True)
    got = jacobian(losses, model.shared_parameters(), mode="measure", retain_graph=True)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-8)
    key = ("cpu", 3, ref.shape[1], torch.float32)
    assert jacobian_choices()[key] in ("loop", "batched")
    np.testing.assert_allclose(jacobian(losses, model.shared_parameters(), mode="measure"),
                               ref, rtol=1e-5, atol=1e-7)
    # through the engine the choice is in the step's info
    m = methods.create("pcgrad", 3)
    losses, rep = model.losses(x, y)
    res = methods.backward(m, losses, model.shared_parameters(), model.task_parameters(),
                           jacobian_mode="measure")
    assert res.info["jacobian_batched"] in (0.0, 1.0)
    # on CPU, auto is the loop and logs nothing
    losses, rep = model.losses(x, y)
    res = methods.backward(m, losses, model.shared_parameters(), model.task_parameters())
    assert "jacobian_batched" not in res.info
