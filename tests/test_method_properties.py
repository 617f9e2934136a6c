"""The property suite every registered method must pass (docs/methods.md §Testing a method)."""

from __future__ import annotations

import pytest
import torch

import methods
from tests.method_cases import random_grads, random_losses, roundtrip, step

# Methods that need model-provided context (e.g. CSO's per-task BatchNorm) have their own
# tests; the generic suite drives methods with gradients and losses alone.
GENERIC = [n for n in methods.available() if not methods.get_class(n).requires_model]


def _same(a, b):
    if a is None or b is None:
        return a is None and b is None
    return torch.allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", GENERIC)
@pytest.mark.parametrize("T", [2, 3, 5])
def test_shapes_and_finiteness(name, T):
    m = methods.create(name, T)
    P = 17
    for k in range(3):
        agg = step(m, random_grads(T, P, seed=k), random_losses(T, seed=k))
        assert agg.weights.shape == (T,)
        assert torch.isfinite(agg.weights).all()
        if agg.direction is not None:
            assert agg.direction.shape == (P,)
            assert torch.isfinite(agg.direction).all()
        else:
            assert not m.requires_grads or not m.needs_grads() or m.name in ("nash_mtl",)


@pytest.mark.parametrize("name", GENERIC)
def test_deterministic_under_seed(name):
    T = 3
    a, b = methods.create(name, T, seed=7), methods.create(name, T, seed=7)
    for k in range(4):
        g, L = random_grads(T, seed=k), random_losses(T, seed=k)
        x, y = step(a, g, L), step(b, g, L)
        assert _same(x.weights, y.weights) and _same(x.direction, y.direction)


@pytest.mark.parametrize("name", GENERIC)
def test_state_roundtrip(name):
    T = 3
    m = methods.create(name, T, seed=3)
    for k in range(3):
        step(m, random_grads(T, seed=k), random_losses(T, seed=k))
    restored = roundtrip(m, methods.create(name, T, seed=99))
    g, L = random_grads(T, seed=10), random_losses(T, seed=10)
    x, y = step(m, g, L), step(restored, g, L)
    assert _same(x.weights, y.weights), name
    assert _same(x.direction, y.direction), name


@pytest.mark.parametrize("name", GENERIC)
def test_reset_forgets_state(name):
    T = 3
    fresh = methods.create(name, T, seed=5)
    used = methods.create(name, T, seed=5)
    for k in range(3):
        step(used, random_grads(T, seed=k), random_losses(T, seed=k))
    used.reset()
    g, L = random_grads(T, seed=20), random_losses(T, seed=20)
    x, y = step(fresh, g, L), step(used, g, L)
    assert _same(x.weights, y.weights) and _same(x.direction, y.direction)


def _degenerate_cases(T):
    P = 9
    base = random_grads(T, P)
    yield "zero_row", torch.cat([torch.zeros(1, P, dtype=base.dtype), base[1:]])
    yield "all_zero", torch.zeros(T, P, dtype=base.dtype)
    yield "rank1", torch.outer(torch.arange(1.0, T + 1, dtype=base.dtype), base[0])
    yield "duplicate_rows", base[[0] * T]
    for s in (1e-10, 1e10):
        yield f"scale{s:g}", base * s


@pytest.mark.parametrize("name", GENERIC)
@pytest.mark.parametrize("T", [1, 3])
def test_degenerate_inputs_no_nan(name, T):
    for label, g in _degenerate_cases(T):
        m = methods.create(name, T)
        try:
            agg = step(m, g, random_losses(T))
        except ValueError:
            continue  # a clear error is an acceptable answer to a degenerate input
        assert torch.isfinite(agg.weights).all(), (name, label)
        if agg.direction is not None:
            assert torch.isfinite(agg.direction).all(), (name, label)


@pytest.mark.parametrize("name", GENERIC)
def test_bad_shapes_raise(name):
    m = methods.create(name, 3)
    with pytest.raises(ValueError):
        m.aggregate(random_grads(3) if m.requires_grads else None, random_losses(4))
    if m.requires_grads:
        with pytest.raises(ValueError):
            methods.create(name, 3).aggregate(random_grads(2), random_losses(3))


@pytest.mark.parametrize("name", methods.available())
def test_unknown_hparam_raises(name):
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        methods.create(name, 3, definitely_not_a_knob=1)


def test_unknown_method_lists_choices():
    with pytest.raises(ValueError, match="ew"):
        methods.create("not_a_method", 3)


def test_search_space_names_are_hparams():
    for name in methods.available():
        cls = methods.get_class(name)
        fields = methods.hparam_fields(name)
        assert set(cls.search_space) <= set(fields), name


def test_capabilities_are_consistent():
    for name in methods.available():
        cls = methods.get_class(name)
        assert cls.default_head_update in ("own", "weighted"), name
        if cls.gramian_only:
            assert cls.requires_grads, name
        if cls.supports_rep_grads:
            assert cls.requires_grads, name


def test_aggregate_cannot_be_overridden():
    with pytest.raises(TypeError, match="implement _aggregate"):

        class Bad(methods.Method):  # noqa: F841
            def aggregate(self, grads, losses, context=None):
                raise AssertionError


@pytest.mark.parametrize("name", GENERIC)
def test_step_count_is_kept_by_the_base(name):
    m = methods.create(name, 3)
    for k in range(3):
        step(m, random_grads(3, seed=k), random_losses(3, seed=k))
    assert m.step_count == 3


@pytest.mark.parametrize("name", GENERIC)
def test_positive_loss_declaration_matches_behaviour(name):
    """A method that does not declare positive losses takes negative ones through the
    engine; one that declares them is refused by the engine before any backward pass."""
    from tests.engine_cases import TinyMTL, make_data

    m = methods.create(name, 2)
    model = TinyMTL(2)
    x, y = make_data(num_tasks=2)
    losses, rep = model.losses(x, y)
    signed = losses - 10.0  # every task loss negative
    shared, heads = list(model.shared_parameters()), list(model.task_parameters())
    if m.requires_positive_losses():
        with pytest.raises(ValueError, match="positive"):
            methods.backward(m, signed, shared, heads, rep=rep)
        assert all(p.grad is None for p in model.parameters())
    else:
        methods.backward(m, signed, shared, heads, rep=rep)
        assert all(torch.isfinite(p.grad).all() for p in shared)


def test_engine_leaves_the_callers_context_alone():
    from methods.base import StepContext
    from tests.engine_cases import TinyMTL, make_data

    model = TinyMTL(2)
    x, y = make_data(num_tasks=2)
    losses, _ = model.losses(x, y)
    ctx = StepContext(epoch=1)
    methods.backward(methods.create("pcgrad", 2), losses, list(model.shared_parameters()),
                     list(model.task_parameters()), context=ctx)
    assert ctx.param_slices == ()
