"""What an architecture needs from a benchmark (:class:`ArchSpec`) and what every
architecture model shares (:class:`ArchModel`); docs/architectures.md §Contract.

A benchmark describes its hard-parameter-sharing model as parts: a factory of fresh
encoders (the HPS encoder), a factory of heads, the per-sample input shape (for gates on
the input), how an encoder splits into stages (for column and progressive architectures)
or into a ResNet plus a tail (for MTAN), and how per-task outputs become what its
``forward_losses`` expects. Architectures recombine those parts as LibMTL's
``LibMTL/architecture/*.py`` do (commit 4336804847eaa5e0b924b743d76beec7ac3fdc97).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from envs.base import MTLModel

#: outputs (task → head output), shared representation or None, the input, the task asked
#: for (multi-input forward) or None → whatever the benchmark's forward_losses expects
Collate = Callable[[dict[str, Tensor], "Tensor | None", Tensor, "str | None"], Any]


def outputs_and_rep(outs: dict[str, Tensor], rep: Tensor | None, x: Tensor,
                    task: str | None) -> Any:
    """Default collation: ``(outputs, rep)``, or the task's output when one is asked for."""
    return outs[task] if task is not None else (outs, rep)


@dataclass(frozen=True)
class ArchSpec:
    """A benchmark's model described as parts (docs/architectures.md §Contract).

    ``encoder()``: a fresh shared encoder, input → representation (the HPS encoder).
    ``head(task)``: a fresh head reading a representation of the encoder's output shape.
    ``input_shape``: one sample's input shape (gates of MMoE/CGC/PLE/DSelect-k read the
    flattened input), None if the input is not a fixed-shape tensor.
    ``stages(encoder)``: submodules s_0 … s_K of that encoder with s_K ∘ … ∘ s_0 = encoder
    (s_0 the stem, s_1 … s_K the blocks; ResNet: conv1-bn1-relu-maxpool, layer1 … layer4).
    ``resnet(encoder)``: (a module with ResNet's conv1, bn1, relu, maxpool, layer1 … layer4,
    the shared tail after layer4) for MTAN.
    ``collate``: per-task outputs → the benchmark's model-output convention."""

    benchmark: str
    tasks: tuple[str, ...]
    encoder: Callable[[], nn.Module]
    head: Callable[[str], nn.Module]
    collate: Collate = outputs_and_rep
    input_shape: tuple[int, ...] | None = None
    multi_input: bool = False
    stages: Callable[[nn.Module], Sequence[nn.Module]] | None = None
    resnet: Callable[[nn.Module], tuple[nn.Module, nn.Module]] | None = None


def unique_parameters(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    """Parameters of ``modules`` in order, each once."""
    seen: set[int] = set()
    out = []
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def mix(experts: Tensor, weights: Tensor) -> Tensor:
    """Σ_e weights[b, e] · experts[e, b, ...]: the gated sum of MMoE/CGC/PLE."""
    return torch.einsum("eb...,be->b...", experts, weights)


class ArchModel(MTLModel):
    """Base of the architectures: per-task representations → heads → the benchmark's output.

    Subclasses build their modules from an :class:`ArchSpec` and implement
    :meth:`representations`, :meth:`shared_modules` and :meth:`task_modules`. Only HPS has
    a single shared representation; every other architecture gives each task its own, so
    ``features`` is empty and representation-level methods are refused for it."""

    name: ClassVar[str] = ""
    #: what the spec must provide: any of "stages", "resnet", "input_shape", "single_input"
    needs: ClassVar[frozenset[str]] = frozenset()
    #: architecture options and their defaults
    options: ClassVar[Mapping[str, Any]] = {}
    title: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    features = frozenset()

    def __init__(self, spec: ArchSpec, **options: Any):
        super().__init__()
        self.tasks = tuple(spec.tasks)
        self._collate = spec.collate
        self.build(spec, **options)
        self.heads = nn.ModuleDict({t: spec.head(t) for t in self.tasks})

    def build(self, spec: ArchSpec, **options: Any) -> None:
        """Build the encoder side (before the heads, as the benchmarks' models do)."""
        raise NotImplementedError

    def representations(self, x: Tensor, tasks: Sequence[str]) -> tuple[dict[str, Tensor],
                                                                          Tensor | None]:
        """({task: its representation}, the shared representation or None)."""
        raise NotImplementedError

    def shared_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def task_modules(self, task: str) -> list[nn.Module]:
        """Modules owned by ``task`` besides its head."""
        return []

    def forward(self, x: Tensor, task: str | None = None) -> Any:
        if task is not None and task not in self.tasks:
            raise ValueError(f"unknown task {task!r}; tasks: {list(self.tasks)}")
        tasks = self.tasks if task is None else (task,)
        reps, shared = self.representations(x, tasks)
        outs = {t: self.heads[t](reps[t]) for t in tasks}
        return self._collate(outs, shared, x, task)

    def shared_parameters(self) -> list[nn.Parameter]:
        return unique_parameters(self.shared_modules())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        shared = {id(p) for p in self.shared_parameters()}
        own = unique_parameters([*self.task_modules(task), self.heads[task]])
        return [p for p in own if id(p) not in shared]

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Epoch hook for architectures whose forward depends on training progress (LTB)."""


def input_size(spec: ArchSpec, arch: str) -> int:
    """Number of input features a gate reads (the flattened sample)."""
    assert spec.input_shape is not None, arch
    return math.prod(spec.input_shape)


def check_input(x: Tensor, n: int, arch: str) -> Tensor:
    """``x`` flattened per sample; a clear error if its size is not the gates' ``n``."""
    flat = x.flatten(1)
    if flat.shape[1] != n:
        raise ValueError(
            f"{arch}: the gates were built for inputs of {n} values per sample, got input of "
            f"shape {tuple(x.shape)}; build the model for this input size"
        )
    return flat


def check_count(name: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def expert_counts(value: Any, num_tasks: int, arch: str) -> tuple[int, tuple[int, ...]]:
    """CGC/PLE ``num_experts``: an int n (n shared, n per task) or LibMTL's list
    [shared, task_1, …, task_T] → (shared, per-task)."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = check_count(f"{arch} num_experts", value)
        return n, (n,) * num_tasks
    if isinstance(value, (list, tuple)) and len(value) == num_tasks + 1:
        counts = [check_count(f"{arch} num_experts[{i}]", v) for i, v in enumerate(value)]
        return counts[0], tuple(counts[1:])
    raise ValueError(
        f"{arch} num_experts must be an integer or a list [shared, one per task] of "
        f"{num_tasks + 1} positive integers (LibMTL's --num_experts), got {value!r}"
    )
