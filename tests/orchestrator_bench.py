"""A tiny test-only benchmark for the orchestrator tests (registered as ``_orch_toy``).

Two tasks on synthetic data: ``a`` (regression, metric ``mse`` ↓) and ``b`` (3-class
classification, metrics ``acc`` ↑ and ``ce`` ↓), a 4→8 encoder with linear heads. Options:
``task_bn`` builds a trunk with per-task BatchNorm (feature ``"task_batchnorm"``, with
``connection_strengths()``, forward needs ``task=``); ``nan_at_step`` makes task ``b``'s
loss NaN from that training forward on; ``no_val`` drops the validation split;
``no_rep`` hides the representation feature (like a model without a single one);
``raise_at_step`` raises a RuntimeError from that training forward on (a crashing run).
Its loader is multi_digits' ``TensorBatchLoader`` (strided sharding like DistributedSampler).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from envs.base import Benchmark, Evaluator, Forward, Metric, MTLModel, Protocol, register
from envs.multi_digits import TensorBatchLoader
from methods.cso import connection_strength

NAME = "_orch_toy"


class ToyNet(MTLModel):
    features = frozenset({"representation"})

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, width), nn.Tanh())
        self.heads = nn.ModuleDict({"a": nn.Linear(width, 1), "b": nn.Linear(width, 3)})
        self.forwards = 0

    def forward(self, x: Tensor, task: str | None = None):
        rep = self.encoder(x)
        return rep, {t: h(rep) for t, h in self.heads.items()}


class NoRepNet(ToyNet):
    features = frozenset()


class TaskBNNet(MTLModel):
    """Shared linear trunk followed by one BatchNorm per task (what CSO needs)."""

    features = frozenset({"task_batchnorm"})

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.trunk = nn.Linear(4, width, bias=False)
        self.bn = nn.ModuleDict({t: nn.BatchNorm1d(width) for t in ("a", "b")})
        self.heads = nn.ModuleDict({"a": nn.Linear(width, 1), "b": nn.Linear(width, 3)})
        self.forwards = 0

    def shared_parameters(self):
        return [self.trunk.weight]

    def forward(self, x: Tensor, task: str | None = None):
        if task is None:
            raise ValueError("TaskBNNet needs task=")
        rep = torch.tanh(self.bn[task](self.trunk(x)))
        return rep, {task: self.heads[task](rep)}

    def connection_strengths(self) -> dict[str, Tensor]:
        return {"trunk.weight": connection_strength(
            self.trunk.weight, [self.bn[t].weight for t in ("a", "b")],
            [self.bn[t].running_var for t in ("a", "b")])}


class ToyEvaluator(Evaluator):
    def __init__(self) -> None:
        self.se = self.n = self.correct = self.ce = 0.0

    def update(self, forward: Forward, batch: Any) -> None:
        out = forward.outputs
        self.se += float(((out["a"].squeeze(-1) - batch["ya"]) ** 2).sum())
        self.correct += float((out["b"].argmax(-1) == batch["yb"]).sum())
        self.ce += float(F.cross_entropy(out["b"], batch["yb"], reduction="sum"))
        self.n += batch["x"].shape[0]

    def compute(self) -> dict[str, dict[str, float]]:
        return {"a": {"mse": self.se / self.n},
                "b": {"acc": self.correct / self.n, "ce": self.ce / self.n}}


@register(NAME)
class ToyBench(Benchmark):
    description = "test-only two-task synthetic benchmark"
    tasks = ("a", "b")
    metrics = {"a": (Metric("mse", False),), "b": (Metric("acc", True), Metric("ce", False))}
    protocol = Protocol(optimizer="sgd", lr=0.1, batch_size=8, epochs=2, selection="best_val",
                        source="tests")
    stl_reference = {"a": {"mse": 0.5}, "b": {"acc": 0.8, "ce": 0.5}}
    stl_reference_source = "made up for tests"
    options = {"n_train": 64, "nan_at_step": -1, "task_bn": False, "no_val": False,
               "no_rep": False, "needs_root": False, "raise_at_step": -1}

    def __init__(self, root: str | None = None, **options: Any) -> None:
        self.opts = {**self.options, **options}
        if self.opts["needs_root"] and root is None:
            raise ValueError("_orch_toy(needs_root=True) needs root=<dir>")
        self.splits = ("train", "test") if self.opts["no_val"] else ("train", "val", "test")
        g = torch.Generator().manual_seed(123)
        self.w = torch.randn(4, generator=g)
        self.v = torch.randn(4, 3, generator=g)
        self._data = {s: self._make(n, i) for i, (s, n) in
                      enumerate((("train", self.opts["n_train"]), ("val", 32), ("test", 32)))}

    def _make(self, n: int, salt: int) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(1000 + salt)
        x = torch.randn(n, 4, generator=g)
        ya = x @ self.w + 0.1 * torch.randn(n, generator=g)
        yb = (x @ self.v).argmax(-1)
        return {"x": x, "ya": ya, "yb": yb}

    def build_model(self, **model_options: Any) -> MTLModel:
        if self.opts["task_bn"]:
            return TaskBNNet(**model_options)
        return (NoRepNet if self.opts["no_rep"] else ToyNet)(**model_options)

    def make_loader(self, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                    rank: int = 0, world_size: int = 1, drop_last: bool = False,
                    num_workers: int = 0) -> TensorBatchLoader:
        if split not in self.splits:
            raise ValueError(f"no split {split!r}")
        return TensorBatchLoader(self._data[split], batch_size, shuffle=shuffle, seed=seed,
                                 rank=rank, world_size=world_size, drop_last=drop_last)

    def forward_losses(self, model: MTLModel, batch: Mapping[str, Tensor],
                       task: str | None = None) -> Forward:
        rep, out = model(batch["x"], task=task)
        losses = []
        for t in self.tasks:
            if t not in out:
                losses.append(torch.zeros((), requires_grad=True))
            elif t == "a":
                losses.append(F.mse_loss(out["a"].squeeze(-1), batch["ya"]))
            else:
                losses.append(F.cross_entropy(out["b"], batch["yb"]))
        losses = torch.stack(losses)
        if model.training:
            model.forwards += 1
            if 0 <= self.opts["raise_at_step"] < model.forwards:
                raise RuntimeError("injected failure")
            k = self.opts["nan_at_step"]
            if 0 <= k < model.forwards:
                losses = losses * torch.tensor([1.0, float("nan")])
        return Forward(losses=losses, rep=rep, outputs=out)

    def new_evaluator(self) -> ToyEvaluator:
        return ToyEvaluator()


@register(NAME + "_multi")
class ToyMultiInput(ToyBench):
    """The same, declared multi-input (each task its own batch): no shared representation."""

    multi_input = True
