"""The SAC networks (mtrl ``agent/utils.py`` build_mlp + weight_init; ``actor.py``'s
squashing): a tanh-Gaussian actor and twin Q networks, shared by all tasks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orchestrator.trainers.rl.config import SACConfig


def mlp(inp: int, out: int, hidden: int, layers: int) -> nn.Sequential:
    """``layers`` hidden ReLU layers of width ``hidden``; Xavier-uniform weights, zero bias."""
    dims = [inp] + [hidden] * layers
    mods: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        mods += [nn.Linear(a, b), nn.ReLU()]
    mods.append(nn.Linear(dims[-1], out))
    net = nn.Sequential(*mods)
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return net


class Actor(nn.Module):
    """Tanh-Gaussian policy: (μ, log σ) = MLP(s), log σ = lo + ½(hi − lo)(tanh(·) + 1)."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: SACConfig) -> None:
        super().__init__()
        self.net = mlp(obs_dim, 2 * action_dim, cfg.hidden, cfg.layers)
        self.log_std_min, self.log_std_max = cfg.log_std_min, cfg.log_std_max

    def forward(self, obs: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(action, log π(action|s), deterministic action tanh(μ)); action = tanh(μ + σε)."""
        mu, log_std = self.net(obs).chunk(2, dim=-1)
        log_std = torch.tanh(log_std)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (log_std + 1)
        if noise is None:
            return torch.tanh(mu), torch.zeros_like(mu[:, 0]), torch.tanh(mu)
        u = mu + noise * log_std.exp()
        log_prob = (-0.5 * noise.pow(2) - log_std).sum(-1) - 0.5 * math.log(2 * math.pi) * mu.shape[-1]
        action = torch.tanh(u)
        # tanh change of variables (SAC appendix C); relu + 1e-6 as mtrl/pytorch_sac
        log_prob = log_prob - torch.log(F.relu(1 - action.pow(2)) + 1e-6).sum(-1)
        return action, log_prob, torch.tanh(mu)


class TwinQ(nn.Module):
    """Two independent Q networks Q(s, a) = MLP([s, a])."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: SACConfig) -> None:
        super().__init__()
        self.q1 = mlp(obs_dim + action_dim, 1, cfg.hidden, cfg.layers)
        self.q2 = mlp(obs_dim + action_dim, 1, cfg.hidden, cfg.layers)

    def forward(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.cat([obs, action], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)

