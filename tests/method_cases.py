"""Input generators and helpers shared by the method tests."""

from __future__ import annotations

import io

import numpy as np
import torch

import methods

# The pinned input of docs/methods.md §Pinned input (rows = tasks, m = 4).
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


def ill_scaled_battery(seed: int = 0):
    """Ill-scaled gradient matrices, as real MTL produces them: yields (label, G).

    For T in 2, 3, 5, 10 (P = T + 4): row norms spread over 10⁻⁴…10³; two nearly parallel rows
    (relative difference 1e-7); rows in a (T−1)-dimensional subspace plus 1e-9 noise (near
    rank deficiency); singular values spread so that cond(K) = 1e12. Every case is full rank
    in exact arithmetic, so every method's defining condition has a solution."""
    rng = np.random.default_rng(seed)

    def spread(G: np.ndarray) -> np.ndarray:
        norms = 10.0 ** rng.uniform(-4, 3, size=G.shape[0])
        norms[:2] = (1e-4, 1e3)[: G.shape[0]]  # both ends of the range, every time
        return G / np.linalg.norm(G, axis=1, keepdims=True) * norms[:, None]

    for T in (2, 3, 5, 10):
        P = T + 4
        for k in range(2):
            yield f"T{T}-norms-{k}", spread(rng.standard_normal((T, P)))
        G = spread(rng.standard_normal((T, P)))
        G[1] = 3.0 * G[0] * (1 + 1e-7 * rng.standard_normal(P))
        yield f"T{T}-parallel", G
        if T > 2:
            low = rng.standard_normal((T, T - 1)) @ rng.standard_normal((T - 1, P))
            yield f"T{T}-rank-deficient", spread(low + 1e-9 * rng.standard_normal((T, P)))
        U, _ = np.linalg.qr(rng.standard_normal((T, T)))
        V, _ = np.linalg.qr(rng.standard_normal((P, T)))
        yield f"T{T}-cond1e12", (U * np.logspace(0, -6, T)) @ V.T * 100.0
