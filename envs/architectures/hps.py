"""Hard parameter sharing (HPS): one shared encoder, one head per task.

Caruana, "Multitask Learning: A Knowledge-Based Source of Inductive Bias", ICML 1993,
https://dl.acm.org/doi/10.5555/3091529.3091535; LibMTL ``architecture/HPS.py``. Every
benchmark's own model is this architecture (docs/architectures.md §HPS); the class here
builds it from an :class:`~envs.architectures.base.ArchSpec` for models of your own.

Shared: the encoder. Task t: its head. The encoder output z is the single shared
representation (∇_θ L_t = (∂z/∂θ)ᵀ ∇_z L_t for every shared θ), so ``features`` offers
``"representation"`` and representation-level methods are valid.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from envs.architectures.base import ArchModel, ArchSpec


class HPS(ArchModel):
    name = "hps"
    title = "Hard parameter sharing"
    paper = "Caruana, ICML 1993, https://dl.acm.org/doi/10.5555/3091529.3091535"
    features = frozenset({"representation"})

    def build(self, spec: ArchSpec) -> None:
        self.encoder = spec.encoder()

    def representations(self, x: Tensor, tasks: Sequence[str]):
        z = self.encoder(x)
        return {t: z for t in tasks}, z

    def shared_modules(self) -> list[nn.Module]:
        return [self.encoder]
