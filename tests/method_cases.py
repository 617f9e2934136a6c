"""Input generators and helpers shared by the method tests."""

from __future__ import annotations

import io

import torch

import methods

# The pinned input of research/methods.md §7 (rows = tasks, m = 4).
PINNED_G = torch.tensor(
    [[4.0, 0.0, 1.0, 0.0], [-0.5, 1.0, 0.0, 0.5], [0.2, 0.1, -0.3, 1.0]], dtype=torch.float64
)


def random_grads(T: int, P: int = 17, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.exp(torch.randn(T, 1, generator=g, dtype=dtype))
    return torch.randn(T, P, generator=g, dtype=dtype) * scales


def random_losses(T: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1000)
    return torch.rand(T, generator=g, dtype=dtype) * 2 + 0.1


def step(method: methods.Method, grads: torch.Tensor, losses: torch.Tensor):
    """One method step as the trainer drives it (aggregate, then after_step if used)."""
    agg = method.aggregate(grads if method.needs_grads() else None, losses)
    if method.uses_after_step:
        method.after_step(losses * 0.9)
    return agg


def roundtrip(method: methods.Method, fresh: methods.Method) -> methods.Method:
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, weights_only=False))
    return fresh
