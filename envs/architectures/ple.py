"""Progressive layered extraction (PLE): CGC at every encoder stage
(docs/architectures.md §PLE).

Tang et al., "Progressive Layered Extraction (PLE)", RecSys 2020,
https://dl.acm.org/doi/10.1145/3383313.3412236; LibMTL ``architecture/PLE.py``.

Every expert is a copy of the benchmark's encoder split into stages s_0 … s_K; there are
E_s shared experts and E_t experts of task t. Task t's representation after stage i is

    g^{i+1}_t = Σ_e softmax(W^i_t ḡ^i_t + b^i_t)_e · s^{(e)}_i(g^i_t),   g^0_t = x,

the sum over the shared experts and task t's own, where ḡ is the flattened per-sample
tensor (the gate of stage i reads the input of stage i; its width is found by passing one
sample through a shared expert, in eval mode so that no BatchNorm statistic changes).
Shared experts run once per task, on that task's g^i_t.

Shared parameters: the shared experts (LibMTL ``get_share_params`` = ``shared_layer``).
Task t: its experts, its K + 1 gates and its head. No single shared representation.
Single-input benchmarks only (LibMTL refuses ``multi_input``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from envs.architectures.base import ArchModel, ArchSpec, expert_counts, input_size, mix


def _expert(spec: ArchSpec) -> nn.ModuleList:
    assert spec.stages is not None
    return nn.ModuleList(spec.stages(spec.encoder()))


@torch.no_grad()
def stage_input_sizes(expert: nn.ModuleList, input_shape: tuple[int, ...]) -> list[int]:
    """Per-sample sizes of the input of every stage (one eval-mode pass of a zero sample)."""
    device = next(expert.parameters()).device
    was_training = expert.training
    expert.eval()
    x = torch.zeros((1, *input_shape), device=device)
    sizes = []
    for stage in expert:
        sizes.append(x[0].numel())
        x = stage(x)
    expert.train(was_training)
    return sizes


class PLE(ArchModel):
    name = "ple"
    title = "Progressive layered extraction"
    paper = "Tang et al., RecSys 2020, https://dl.acm.org/doi/10.1145/3383313.3412236"
    needs = frozenset({"stages", "input_shape", "single_input"})
    options = {"num_experts": 1}

    def build(self, spec: ArchSpec, num_experts: int | Sequence[int] = 1) -> None:
        self.n_shared, per_task = expert_counts(num_experts, len(self.tasks), self.name)
        input_size(spec, self.name)
        self.experts = nn.ModuleList([_expert(spec) for _ in range(self.n_shared)])
        self.task_experts = nn.ModuleDict({
            t: nn.ModuleList([_expert(spec) for _ in range(n)]) for t, n in zip(self.tasks, per_task)
        })
        assert spec.input_shape is not None
        sizes = stage_input_sizes(self.experts[0], spec.input_shape)
        self.gates = nn.ModuleDict({
            t: nn.ModuleList([nn.Sequential(nn.Linear(s, self.n_shared + n), nn.Softmax(dim=-1))
                              for s in sizes])
            for t, n in zip(self.tasks, per_task)
        })

    def representations(self, x: Tensor, tasks: Sequence[str]):
        reps = {}
        for t in tasks:
            g = x
            for i, gate in enumerate(self.gates[t]):
                z = torch.stack([e[i](g) for e in self.experts]
                                + [e[i](g) for e in self.task_experts[t]])
                g = mix(z, gate(g.flatten(1)))
            reps[t] = g
        return reps, None

    def shared_modules(self) -> list[nn.Module]:
        return [self.experts]

    def task_modules(self, task: str) -> list[nn.Module]:
        return [self.task_experts[task], self.gates[task]]
