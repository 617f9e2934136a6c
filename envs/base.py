"""The benchmark contract (the ``envs`` layer).

A :class:`Benchmark` bundles everything a trainer needs and nothing it must know by name:
task names, per-task losses and metrics (each with a direction), a model factory, data
loaders for train/val/test read from a user-given root in the dataset's published layout,
single-task reference metrics for Δm, and the protocol defaults of the paper it follows.

The trainer only ever calls:

* ``bench.build_model(**model_options)`` → :class:`MTLModel`
* ``bench.make_loader(split, batch_size, shuffle=..., seed=..., rank=..., world_size=...)``
* ``bench.forward_losses(model, batch)`` → :class:`Forward` (losses Tensor[T], rep, outputs)
* ``bench.new_evaluator()`` → :class:`Evaluator` (``update(forward, batch)``, ``compute()``)
* ``bench.protocol``, ``bench.tasks``, ``bench.metrics``, ``bench.stl_reference``

Multi-input benchmarks (Office: each task has its own images) yield a batch per task and
have no single shared representation, so rep-level methods are rejected for them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Metric:
    """A reported metric of a task and whether higher values are better."""

    name: str
    higher_is_better: bool


@dataclass(frozen=True)
class Protocol:
    """Training protocol defaults of the paper/reference code a benchmark follows."""

    optimizer: str = "adam"  # adam | sgd | adamw
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    lr_schedule: str = "none"  # none | step | cosine | plateau
    step_size: int = 100  # step schedule: epochs per decay
    gamma: float = 0.5  # step/plateau schedule: decay factor
    # plateau (ReduceLROnPlateau on the validation selection criterion, e.g. QM9's val Δm):
    patience: int = 10  # epochs without improvement before lr *= gamma (torch default)
    min_lr: float = 0.0  # lower bound of the lr
    batch_size: int = 32
    epochs: int = 100
    average_last: int = 1  # report the mean of the last k evaluated epochs (1 = final)
    selection: str = "last"  # last | best_val: which epoch's test numbers are reported
    eval_every: int = 1  # evaluate val/test every k epochs
    source: str = ""  # where these numbers come from


@dataclass
class Forward:
    """Result of one forward pass over a batch.

    ``losses``: Tensor[T] of per-task mini-batch mean losses, in ``bench.tasks`` order.
    ``rep``: the shared representation (None for multi-input benchmarks or models without
    one). ``outputs``: whatever the evaluator needs (predictions per task)."""

    losses: Tensor
    rep: Tensor | None
    outputs: Mapping[str, Any]


class Evaluator:
    """Accumulates predictions over a whole split, then computes every task's metrics.

    States are sums (confusion matrices, error sums, counts), so pooled metrics such as
    mIoU are computed over the whole split, not averaged per batch."""

    def update(self, forward: Forward, batch: Any) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, dict[str, float]]:
        """{task: {metric: value}}."""
        raise NotImplementedError


class MTLModel(nn.Module):
    """A multi-task model with an explicit shared / task-specific split.

    Subclasses usually define ``self.encoder`` (shared) and ``self.heads`` (an
    ``nn.ModuleDict`` by task) and override only what differs. ``features`` lists what the
    model offers to methods: ``"representation"`` (a single shared representation tensor),
    ``"task_batchnorm"`` (per-task BatchNorm after shared convs, for CSO)."""

    features: ClassVar[frozenset[str]] = frozenset({"representation"})

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())  # type: ignore[attr-defined]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self.heads[task].parameters())  # type: ignore[attr-defined]

    def all_task_parameters(self) -> list[nn.Parameter]:
        shared = {id(p) for p in self.shared_parameters()}
        return [p for p in self.parameters() if id(p) not in shared]


class Benchmark:
    """Base class of every benchmark; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    tasks: tuple[str, ...] = ()
    metrics: Mapping[str, Sequence[Metric]] = {}
    multi_input: ClassVar[bool] = False
    splits: tuple[str, ...] = ("train", "val", "test")
    protocol: Protocol = Protocol()
    #: {task: {metric: value}} single-task references for Δm (None if not published)
    stl_reference: Mapping[str, Mapping[str, float]] | None = None
    stl_reference_source: str = ""
    #: Options accepted by ``envs.create`` beyond ``root`` ({name: default})
    options: ClassVar[Mapping[str, Any]] = {}
    #: which trainer trains it (``orchestrator.run.registry``): "supervised" or "rl"
    kind: ClassVar[str] = "supervised"
    #: {method: {hparam: value}}: its reference runs' method settings, applied unless the
    #: user sets them (e.g. CAGrad's c on MT10)
    method_hparams: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    def build_model(self, **model_options: Any) -> MTLModel:
        raise NotImplementedError

    def make_loader(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> Iterable[Any]:
        """Batches of ``split`` for one rank (``batch_size`` per rank). ``num_workers``
        loader processes and ``pin_memory`` (for CUDA) change speed only, never the batches
        (:func:`envs._sampling.worker_options`); in-memory benchmarks ignore both."""
        raise NotImplementedError

    def forward_losses(self, model: MTLModel, batch: Any) -> Forward:
        raise NotImplementedError

    def new_evaluator(self) -> Evaluator:
        raise NotImplementedError

    def to_device(self, batch: Any, device: torch.device) -> Any:
        """Move a batch to ``device`` (tensors, and dicts/tuples/lists of them)."""
        return _to_device(batch, device)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tasks": list(self.tasks),
            "metrics": {t: [(m.name, m.higher_is_better) for m in ms] for t, ms in self.metrics.items()},
            "multi_input": self.multi_input,
        }


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, Mapping):
        return {k: _to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
        return type(x)(_to_device(v, device) for v in x)
    if hasattr(x, "to") and not isinstance(x, (str, bytes)):
        return x.to(device)  # e.g. torch_geometric batches
    return x


@dataclass
class _Registry:
    classes: dict[str, type[Benchmark]] = field(default_factory=dict)


_REG = _Registry()


def register(name: str):
    """Class decorator: make a benchmark available as ``envs.create(name, ...)``."""

    def deco(cls: type[Benchmark]) -> type[Benchmark]:
        if name in _REG.classes and _REG.classes[name] is not cls:
            raise RuntimeError(f"benchmark name {name!r} registered twice")
        cls.name = name
        _REG.classes[name] = cls
        return cls

    return deco


def available() -> list[str]:
    return sorted(_REG.classes)


def get_class(name: str) -> type[Benchmark]:
    if name not in _REG.classes:
        raise ValueError(f"unknown benchmark {name!r}; choose one of: {', '.join(available())}")
    return _REG.classes[name]


def create(name: str, root: str | None = None, **options: Any) -> Benchmark:
    """Build benchmark ``name`` reading data under ``root``; options are validated."""
    cls = get_class(name)
    unknown = sorted(set(options) - set(cls.options))
    if unknown:
        valid = ", ".join(cls.options) or "(none)"
        raise ValueError(f"unknown option(s) {unknown} for benchmark {name!r}; valid: {valid}")
    return cls(root=root, **options)  # type: ignore[call-arg]
