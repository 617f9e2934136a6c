"""A tiny hard-parameter-sharing model and data for engine tests (no BatchNorm, so the
loss on a concatenated batch is exactly the mean of the per-shard losses)."""

from __future__ import annotations

import torch
from torch import nn


class TinyMTL(nn.Module):
    def __init__(self, num_tasks: int = 3, d_in: int = 6, d_rep: int = 5, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.encoder = nn.Sequential(nn.Linear(d_in, 8), nn.Tanh(), nn.Linear(8, d_rep), nn.Tanh())
        self.heads = nn.ModuleList([nn.Linear(d_rep, 1) for _ in range(num_tasks)])
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def shared_parameters(self):
        return list(self.encoder.parameters())

    def task_parameters(self):
        return [p for h in self.heads for p in h.parameters()]

    def losses(self, x, y):
        """Per-task mean squared errors (positive, so log-transform methods work) and rep."""
        rep = self.encoder(x)
        preds = torch.cat([h(rep) for h in self.heads], dim=1)
        return ((preds - y) ** 2).mean(0) + 0.1, rep


def make_data(n: int = 8, num_tasks: int = 3, d_in: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    y = torch.randn(n, num_tasks, generator=g) * torch.tensor([1.0, 5.0, 0.2][:num_tasks])
    return x, y
