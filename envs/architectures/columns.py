"""One encoder column per task, linked between stages: Cross-stitch and Learning to Branch
(docs/architectures.md §Cross-stitch, §LTB).

The benchmark's encoder splits into stages s_0 (stem), s_1 … s_K (blocks); task t owns
column t, a full copy of the encoder, and h^i_t is the output of its stage i.

* Cross-stitch (Misra et al., CVPR 2016, https://arxiv.org/abs/1604.03539; LibMTL
  ``Cross_stitch.py``): h^1_t = s^t_1(s^t_0(x)), and for i = 2 … K
  h^i_t = s^t_i(Σ_j α_{i−1,t,j} h^{i−1}_j); α ∈ R^{K×T×T}, initialised to ones. LibMTL
  allocates K units for its K = 4 ResNet layers and uses the first K − 1; the last one is
  kept so that parameter counts agree (its gradient is always zero).
* LTB (Guo et al., ICML 2020, http://proceedings.mlr.press/v119/guo20e.html; LibMTL
  ``LTB.py``): h^0_t = s^t_0(x) and h^i_t = s^t_i(Σ_j a_{i,t,j} h^{i−1}_j) for i = 1 … K,
  with a = 1 (every branch summed) during warm-up (epoch < epochs / 100) and afterwards
  a = gumbel_softmax(α, τ, hard) over j, τ = (epochs / 20) / √(epoch + 1); α ∈ R^{(K+2)×T×T},
  ones (LibMTL's size; slices 0 and K + 1 are unused). The training progress comes from
  :meth:`LTB.start_epoch`, which the trainer calls at the start of every epoch.

Shared parameters: every column and the link parameters α — LibMTL's ``get_share_params``
is the whole encoder, since every task's loss reaches every column through the links.
Task t: its head. Each task reads its own column's output, so no single shared
representation exists (``features`` is empty). Single-input benchmarks only (LibMTL refuses
``multi_input``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from envs.architectures.base import ArchModel, ArchSpec, unique_parameters

log = logging.getLogger(__name__)


def _columns(spec: ArchSpec, arch: str) -> nn.ModuleList:
    assert spec.stages is not None, arch
    cols = nn.ModuleList([nn.ModuleList(spec.stages(spec.encoder())) for _ in spec.tasks])
    if len(cols[0]) < 2:
        raise ValueError(f"{arch} needs an encoder of a stem and at least one block, got "
                         f"{len(cols[0])} stage(s) from benchmark {spec.benchmark!r}")
    return cols


def _link(alpha: Tensor, h: Sequence[Tensor], t: int) -> Tensor:
    return sum(alpha[t, j] * h[j] for j in range(len(h)))  # type: ignore[return-value]


class CrossStitch(ArchModel):
    name = "cross_stitch"
    title = "Cross-stitch networks"
    paper = "Misra et al., CVPR 2016, https://arxiv.org/abs/1604.03539"
    needs = frozenset({"stages", "single_input"})

    def build(self, spec: ArchSpec) -> None:
        self.columns = _columns(spec, self.name)
        K, T = len(self.columns[0]) - 1, len(self.tasks)
        self.cross = nn.Parameter(torch.ones(K, T, T))

    def representations(self, x: Tensor, tasks: Sequence[str]):
        h = [col[1](col[0](x)) for col in self.columns]
        for i in range(2, len(self.columns[0])):
            h = [col[i](_link(self.cross[i - 2], h, t)) for t, col in enumerate(self.columns)]
        return {t: h[self.tasks.index(t)] for t in tasks}, None

    def shared_modules(self) -> list[nn.Module]:
        return [self.columns]

    def shared_parameters(self) -> list[nn.Parameter]:
        return [*unique_parameters([self.columns]), self.cross]


class LTB(ArchModel):
    name = "ltb"
    title = "Learning to branch"
    paper = "Guo et al., ICML 2020, http://proceedings.mlr.press/v119/guo20e.html"
    needs = frozenset({"stages", "single_input"})

    def build(self, spec: ArchSpec) -> None:
        self.columns = _columns(spec, self.name)
        K, T = len(self.columns[0]) - 1, len(self.tasks)
        self.alpha = nn.Parameter(torch.ones(K + 2, T, T))
        self.epoch, self.epochs = 0, None
        self._warned = False

    def start_epoch(self, epoch: int, epochs: int) -> None:
        if not (0 <= epoch < epochs):
            raise ValueError(f"LTB start_epoch needs 0 <= epoch < epochs, got {epoch}, {epochs}")
        self.epoch, self.epochs = int(epoch), int(epochs)

    def links(self) -> Tensor:
        """The (K+2)×T×T link weights of this epoch (ones in warm-up, else a hard sample)."""
        if self.epochs is None and not self._warned:
            log.warning("LTB: start_epoch(epoch, epochs) was never called, so the model stays "
                        "in warm-up (every branch summed); the trainer must call it each epoch")
            self._warned = True
        if self.epochs is None or self.epoch < self.epochs / 100:
            return torch.ones_like(self.alpha)
        tau = self.epochs / 20 / math.sqrt(self.epoch + 1)
        return F.gumbel_softmax(self.alpha, tau=tau, hard=True, dim=-1)

    def representations(self, x: Tensor, tasks: Sequence[str]):
        a = self.links()
        h = [col[0](x) for col in self.columns]
        for i in range(1, len(self.columns[0])):
            h = [col[i](_link(a[i], h, t)) for t, col in enumerate(self.columns)]
        return {t: h[self.tasks.index(t)] for t in tasks}, None

    def shared_modules(self) -> list[nn.Module]:
        return [self.columns]

    def shared_parameters(self) -> list[nn.Parameter]:
        return [*unique_parameters([self.columns]), self.alpha]
