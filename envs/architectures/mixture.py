"""Mixtures of experts gated on the input: MMoE, CGC and DSelect-k
(docs/architectures.md §MMoE, §CGC, §DSelect-k).

Every expert is a full copy of the benchmark's encoder; each task mixes the experts'
outputs z_e(x) with weights computed from its flattened input x̄ ∈ R^n:

* MMoE (Ma et al., KDD 2018, https://dl.acm.org/doi/10.1145/3219819.3220007):
  r_t = Σ_e softmax(W_t x̄ + b_t)_e z_e(x), E shared experts; LibMTL ``MMoE.py``.
* CGC (Tang et al., RecSys 2020, https://dl.acm.org/doi/10.1145/3383313.3412236): the same
  gate over the E_s shared experts and task t's own E_t experts; LibMTL ``CGC.py``.
* DSelect-k (Hazimeh et al., NeurIPS 2021, https://arxiv.org/abs/2106.03760): E = 2^m shared
  experts, k selectors per task; selector i's expert weights are
  Π_j [c_e,j ? S(ℓ_ij) : 1 − S(ℓ_ij)] with ℓ = Z_t x̄ (k·m logits), S the cubic smooth step
  of width γ and c_e the m-bit binary code of expert e; the selectors are combined with
  softmax(W_t x̄); LibMTL ``DSelect_k.py`` (with the real binary codes and γ in S, where
  LibMTL's differ; docs/architectures.md §DSelect-k).

Shared parameters: the shared experts (LibMTL ``get_share_params``). Task t: its gate(s),
its own experts (CGC) and its head. Each task's representation is its own mixture, so no
single shared representation exists (``features`` is empty).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from envs.architectures.base import (
    ArchModel,
    ArchSpec,
    check_count,
    check_input,
    expert_counts,
    input_size,
    mix,
)


def _gate(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_out), nn.Softmax(dim=-1))


class MMoE(ArchModel):
    name = "mmoe"
    title = "Multi-gate mixture-of-experts"
    paper = "Ma et al., KDD 2018, https://dl.acm.org/doi/10.1145/3219819.3220007"
    needs = frozenset({"input_shape"})
    options = {"num_experts": 4}

    def build(self, spec: ArchSpec, num_experts: int = 4) -> None:
        self.num_experts = check_count("mmoe num_experts", num_experts)
        self.n_in = input_size(spec, self.name)
        self.experts = nn.ModuleList([spec.encoder() for _ in range(self.num_experts)])
        self.gates = nn.ModuleDict({t: _gate(self.n_in, self.num_experts) for t in self.tasks})

    def representations(self, x: Tensor, tasks: Sequence[str]):
        flat = check_input(x, self.n_in, self.name)
        z = torch.stack([e(x) for e in self.experts])
        return {t: mix(z, self.gates[t](flat)) for t in tasks}, None

    def shared_modules(self) -> list[nn.Module]:
        return [self.experts]

    def task_modules(self, task: str) -> list[nn.Module]:
        return [self.gates[task]]


class CGC(ArchModel):
    name = "cgc"
    title = "Customized gate control"
    paper = "Tang et al., RecSys 2020, https://dl.acm.org/doi/10.1145/3383313.3412236"
    needs = frozenset({"input_shape"})
    options = {"num_experts": 1}

    def build(self, spec: ArchSpec, num_experts: int | Sequence[int] = 1) -> None:
        self.n_shared, per_task = expert_counts(num_experts, len(self.tasks), self.name)
        self.n_in = input_size(spec, self.name)
        self.experts = nn.ModuleList([spec.encoder() for _ in range(self.n_shared)])
        self.task_experts = nn.ModuleDict({
            t: nn.ModuleList([spec.encoder() for _ in range(n)]) for t, n in zip(self.tasks, per_task)
        })
        self.gates = nn.ModuleDict(
            {t: _gate(self.n_in, self.n_shared + n) for t, n in zip(self.tasks, per_task)}
        )

    def representations(self, x: Tensor, tasks: Sequence[str]):
        flat = check_input(x, self.n_in, self.name)
        shared = [e(x) for e in self.experts]
        reps = {}
        for t in tasks:
            z = torch.stack(shared + [e(x) for e in self.task_experts[t]])
            reps[t] = mix(z, self.gates[t](flat))
        return reps, None

    def shared_modules(self) -> list[nn.Module]:
        return [self.experts]

    def task_modules(self, task: str) -> list[nn.Module]:
        return [self.task_experts[task], self.gates[task]]


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    """Cubic smooth step (DSelect-k eq. 3): 0 for t ≤ −γ/2, 1 for t ≥ γ/2, else
    −2t³/γ³ + 3t/(2γ) + 1/2."""
    cubic = -2.0 / gamma**3 * t**3 + 3.0 / (2.0 * gamma) * t + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t),
                       torch.where(t >= gamma / 2, torch.ones_like(t), cubic))


class DSelectK(ArchModel):
    name = "dselect_k"
    title = "DSelect-k"
    paper = "Hazimeh et al., NeurIPS 2021, https://arxiv.org/abs/2106.03760"
    needs = frozenset({"input_shape"})
    options = {"num_experts": 4, "num_nonzeros": 2, "kgamma": 1.0}

    def build(self, spec: ArchSpec, num_experts: int = 4, num_nonzeros: int = 2,
                 kgamma: float = 1.0) -> None:
        E = check_count("dselect_k num_experts", num_experts, 2)
        if E & (E - 1):
            raise ValueError(
                f"dselect_k num_experts must be a power of two (2, 4, 8, ...), got {E}: with "
                "other counts LibMTL adds a selector-sum regulariser through a backward call "
                "inside forward, which the gradient engine cannot honour "
                "(docs/architectures.md §DSelect-k)"
            )
        self.k = check_count("dselect_k num_nonzeros", num_nonzeros)
        if isinstance(kgamma, bool) or not isinstance(kgamma, (int, float)) or not kgamma > 0:
            raise ValueError(f"dselect_k kgamma must be a positive number, got {kgamma!r}")
        self.gamma = float(kgamma)
        self.num_experts, self.m = E, int(math.log2(E))
        self.n_in = input_size(spec, self.name)
        self.experts = nn.ModuleList([spec.encoder() for _ in range(E)])
        self.z_logits = nn.ModuleDict({t: nn.Linear(self.n_in, self.k * self.m) for t in self.tasks})
        self.w_logits = nn.ModuleDict({t: nn.Linear(self.n_in, self.k) for t in self.tasks})
        with torch.no_grad():  # LibMTL's initialisation
            for p in self.z_logits.parameters():
                p.uniform_(-self.gamma / 100, self.gamma / 100)
            for p in self.w_logits.parameters():
                p.uniform_(-0.05, 0.05)
        # row e: expert e's m-bit code, most significant bit first. LibMTL's string-to-bool
        # cast makes all its codes True; these are the paper's (docs/architectures.md §DSelect-k)
        bits = [[(e >> (self.m - 1 - j)) & 1 for j in range(self.m)] for e in range(E)]
        self.register_buffer("codes", torch.tensor(bits, dtype=torch.bool), persistent=False)

    def expert_weights(self, flat: Tensor, task: str) -> Tensor:
        """[B, E] weights of task ``task``'s k selectors combined (rows sum to 1)."""
        logits = self.z_logits[task](flat).view(-1, self.k, 1, self.m)
        s = smooth_step(logits, self.gamma)
        selectors = torch.where(self.codes, s, 1 - s).prod(-1)  # [B, k, E]
        combine = F.softmax(self.w_logits[task](flat), dim=1)  # [B, k]
        return torch.einsum("bk,bke->be", combine, selectors)

    def representations(self, x: Tensor, tasks: Sequence[str]):
        flat = check_input(x, self.n_in, self.name)
        z = torch.stack([e(x) for e in self.experts])
        return {t: mix(z, self.expert_weights(flat, t)) for t in tasks}, None

    def shared_modules(self) -> list[nn.Module]:
        return [self.experts]

    def task_modules(self, task: str) -> list[nn.Module]:
        return [self.z_logits[task], self.w_logits[task]]
