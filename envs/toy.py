"""toy — the two-objective 2-D landscape of CAGrad, reused by Nash-MTL and FAMO.

Source: CAGrad ``toy.py`` (Cranial-XIX/CAGrad, class ``Toy``; Liu et al., NeurIPS 2021,
https://arxiv.org/abs/2110.14048, Fig. 1), copied with a ``scale`` on the first loss into
nash-mtl ``experiments/toy/problem.py`` (Navon et al., ICML 2022, https://arxiv.org/abs/2202.01017,
Fig. 1) and FAMO ``experiments/toy`` (Liu et al., NeurIPS 2023). For x = (x₁, x₂)::

    c₁ = max(tanh(x₂/2), 0)                c₂ = max(tanh(−x₂/2), 0)
    g₁ = log(max(|−(x₁+7)/2 − tanh(−x₂)|, 5e−6)) + 6
    g₂ = log(max(|(3−x₁)/2 + tanh(−x₂) + 2|, 5e−6)) + 6
    h₁ = ((x₁−7)² + 0.1 (x₂+8)²)/10 − 20   h₂ = ((x₁+7)² + 0.1 (x₂+8)²)/10 − 20
    f₁ = scale · (c₁ g₁ + c₂ h₁)           f₂ = c₁ g₂ + c₂ h₂

Pareto set: for x₂ < 0 (c₁ = 0) the objectives are f_i = c₂(x₂) h_i, and the minimiser of
w f₁/scale + (1−w) f₂ has x₁ = 7(2w − 1) and x₂ the root of
∂/∂x₂ [tanh(−x₂/2)(19.6 w(1−w) − 20 + 0.01 (x₂+8)²)] = 0, from −8.4345 at w ∈ {0, 1} to
−8.3551 at w = ½ (checked against a grid search: these are the global minimisers).
:func:`pareto_point` solves it; the reference plots draw the front at the constant
x₂ = −8.3552 (x₁ ∈ [−7, 7]), which is exact only at w = ½.

Defaults and where they come from:

* ``scale = 0.1``: nash-mtl and FAMO (``--scale 1e-1``: the imbalanced-loss variant their
  figures use); CAGrad's original is ``scale = 1``;
* starting points :data:`STARTS` = nash-mtl/FAMO's five; CAGrad's three are
  :data:`CAGRAD_STARTS`;
* optimiser Adam, lr 1e-3, on x only; 35,000 steps (nash-mtl's default ``n_epochs``; FAMO
  uses 50,000, CAGrad 100,000). Method parameters (UW, ...) get their own Adam group with lr
  0.025 (nash-mtl ``--method-params-lr``);
* the losses are negative (f_i ≥ −20·scale or −20), so log-based methods (FAMO, DB-MTL)
  need ``shift_losses=True``: it optimises f_i − L*_i with FAMO's lower bounds
  L* = (−21·scale, −21) (``set_min_losses`` in FAMO's toy trainer). Gradients are unchanged.

Deliberate difference: CAGrad's toy descends the *mean* of the two gradients for its "Adam"
baseline; ``methods.create("ew")`` sums them. Under Adam the factor ½ hardly matters (it is
invariant to a constant gradient scale up to ε).

As a benchmark (``envs.create("toy")``) the "model" holds the 2-D point as its only shared
parameter and has no heads and no representation. Its data are dummy: every split's loader
yields ``steps_per_epoch`` empty batches per epoch (default 1000, so the protocol's 35 epochs
are 35,000 steps), identically on every rank, so the generic trainer runs it unchanged. The
evaluator reports each objective's value (``loss``, lower is better) at the current point.
:func:`run_trajectory` is the standalone, pure-function form used for the papers' figures;
:func:`plot_trajectories` draws them (matplotlib imported only there).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import methods
from envs.base import Benchmark, Evaluator, Forward, Metric, MTLModel, Protocol, register
from methods.base import check_int, check_range

TASKS = ("f1", "f2")
LOWER = 5e-6  # CAGrad's clamp inside the logarithms
#: Starting points of nash-mtl and FAMO ``experiments/toy/trainer.py``.
STARTS: tuple[tuple[float, float], ...] = (
    (-8.5, 7.5),
    (0.0, 0.0),
    (9.0, 9.0),
    (-7.5, -0.5),
    (9.0, -1.0),
)
#: Starting points of CAGrad ``toy.py``.
CAGRAD_STARTS: tuple[tuple[float, float], ...] = ((-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0))
#: x₂ at which the reference plots draw the Pareto front (x₁ ∈ [−7, 7]).
REFERENCE_FRONT_X2 = -8.3552


def _clamp_min(t: Tensor, low: float) -> Tensor:
    """max(t, low) with gradient 1 at t == low: torch 1.x ``clamp``'s subgradient, which the
    reference code ran with. torch 2.x's ``clamp`` gives 0 there, which would make the
    nash-mtl/FAMO starting point (0, 0) — where tanh(±x₂/2) = 0 — a point no method leaves."""
    return torch.where(t >= low, t, torch.full_like(t, low))


def loss(x: Tensor, scale: float = 0.1) -> Tensor:
    """The two objectives [f₁, f₂] at a point ``x`` of shape (2,) or a batch (N, 2)."""
    x1, x2 = x[..., 0], x[..., 1]
    g1 = _clamp_min((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), LOWER).log() + 6
    g2 = _clamp_min((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), LOWER).log() + 6
    c1 = _clamp_min(torch.tanh(x2 * 0.5), 0.0)
    h1 = ((-x1 + 7).pow(2) + 0.1 * (-x2 - 8).pow(2)) / 10 - 20
    h2 = ((-x1 - 7).pow(2) + 0.1 * (-x2 - 8).pow(2)) / 10 - 20
    c2 = _clamp_min(torch.tanh(-x2 * 0.5), 0.0)
    f1 = (g1 * c1 + h1 * c2) * scale
    f2 = g2 * c1 + h2 * c2
    return torch.stack([f1, f2], dim=-1)


def loss_lower_bounds(scale: float = 0.1) -> tuple[float, float]:
    """FAMO's L* for this problem: strictly below each objective's minimum (−20·scale, −20)."""
    return (-21.0 * scale, -21.0)


def pareto_point(w: float) -> tuple[float, float]:
    """The Pareto-optimal point minimising w·f₁/scale + (1 − w)·f₂ (w ∈ [0, 1]).

    x₁ = 7(2w − 1); x₂ solves the 1-D stationarity condition by bisection on [−12, −7]."""
    check_range("w", w, 0.0, 1.0)
    x1 = 7.0 * (2.0 * w - 1.0)
    a = 19.6 * w * (1.0 - w) - 20.0  # Σ w_i h_i without the x₂ term, at this x₁

    def dphi(x2: float) -> float:  # d/dx₂ of tanh(−x₂/2)·(a + 0.01(x₂+8)²)
        t = math.tanh(-x2 / 2)
        return -0.5 * (1 - t * t) * (a + 0.01 * (x2 + 8) ** 2) + t * 0.02 * (x2 + 8)

    lo, hi = -12.0, -7.0  # dphi(lo) < 0 < dphi(hi) for every w
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if dphi(mid) < 0:
            lo = mid
        else:
            hi = mid
    return x1, 0.5 * (lo + hi)


def pareto_front(n: int = 101, scale: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(points [n, 2], losses [n, 2]) of the Pareto set for n weights evenly spaced in [0, 1]."""
    check_int("n", n, 2)
    pts = np.array([pareto_point(w) for w in np.linspace(0.0, 1.0, n)])
    vals = loss(torch.from_numpy(pts), scale).numpy()
    return pts, vals


# ---------------------------------------------------------------------------------------
# standalone trajectories
# ---------------------------------------------------------------------------------------


@dataclass
class Trajectory:
    """One optimisation path: ``x`` [steps + 1, 2] points, ``losses`` [steps + 1, 2] (the
    unshifted objectives), ``weights`` [steps, 2] the method's task weights per step."""

    method: str
    start: tuple[float, float]
    x: np.ndarray
    losses: np.ndarray
    weights: np.ndarray


def _start(start: int | Sequence[float]) -> tuple[float, float]:
    if isinstance(start, int) and not isinstance(start, bool):
        check_int("start", start, 0, len(STARTS) - 1)
        return STARTS[start]
    if isinstance(start, Sequence) and len(start) == 2:
        for i, v in enumerate(start):
            check_range(f"start[{i}]", v)
        return float(start[0]), float(start[1])
    raise ValueError(
        f"start must be an index into STARTS (0…{len(STARTS) - 1}) or a point (x1, x2), "
        f"got {start!r}"
    )


def run_trajectory(
    method: methods.Method | str,
    start: int | Sequence[float] = 0,
    *,
    steps: int = 35_000,
    lr: float = 1e-3,
    scale: float = 0.1,
    shift_losses: bool = False,
    method_lr: float = 0.025,
    hparams: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> Trajectory:
    """Optimise the toy problem from ``start`` with ``method`` through ``methods.backward``.

    ``method``: a 2-task method instance (used as is, state and all) or a registered name
    (created with ``hparams`` and ``seed``). Adam (lr ``lr``) on the point, a second Adam
    group (lr ``method_lr``) on the method's own parameters; FAMO-style methods get the new
    losses after every step. No global state is touched."""
    if isinstance(method, str):
        method = methods.create(method, len(TASKS), seed=seed, **(hparams or {}))
    elif hparams:
        raise ValueError("hparams only apply when method is given by name")
    if method.num_tasks != len(TASKS):
        raise ValueError(f"the toy problem has 2 tasks; got a method for {method.num_tasks}")
    check_int("steps", steps, 1)
    check_range("lr", lr, 0.0, low_inclusive=False)
    check_range("scale", scale, 0.0, low_inclusive=False)
    x0 = _start(start)
    x = nn.Parameter(torch.tensor(x0))
    offset = torch.tensor(loss_lower_bounds(scale) if shift_losses else (0.0, 0.0))
    groups = [{"params": [x], "lr": lr}]
    extra = list(method.parameters())
    if extra:
        groups.append({"params": extra, "lr": method_lr})
    opt = torch.optim.Adam(groups)
    xs = np.empty((steps + 1, 2))
    ws = np.empty((steps, 2))
    for it in range(steps):
        xs[it] = x.detach().numpy()
        opt.zero_grad(set_to_none=True)
        res = methods.backward(method, loss(x, scale) - offset, [x])
        ws[it] = res.weights.numpy()
        opt.step()
        if method.uses_after_step:
            with torch.no_grad():
                method.after_step(loss(x, scale) - offset)
    xs[steps] = x.detach().numpy()
    with torch.no_grad():
        fs = loss(torch.from_numpy(xs), scale).numpy()
    return Trajectory(method.name, x0, xs, fs, ws)


def plot_trajectories(
    trajectories: Sequence[Trajectory], scale: float = 0.1, ax: Any = None, space: str = "loss"
) -> Any:
    """Draw trajectories over the Pareto front (``space="loss"``, as nash-mtl/FAMO) or in the
    parameter plane (``space="param"``, as CAGrad). Returns the matplotlib axes."""
    if space not in ("loss", "param"):
        raise ValueError(f"space must be 'loss' or 'param', got {space!r}")
    import matplotlib.pyplot as plt  # lazily: plotting is optional

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 5))
    pts, vals = pareto_front(201, scale)
    front = vals if space == "loss" else pts
    ax.plot(front[:, 0], front[:, 1], "-", lw=6, color="#72727A", label="Pareto front", zorder=0)
    for i, tr in enumerate(trajectories):
        path = tr.losses if space == "loss" else tr.x
        ax.plot(path[:, 0], path[:, 1], "-", lw=1.5, label=f"{tr.method} from {tr.start}")
        ax.scatter(
            path[:1, 0], path[:1, 1], color="k", s=40, zorder=5, label="start" if i == 0 else None
        )
    labels = ("$f_1$", "$f_2$") if space == "loss" else ("$x_1$", "$x_2$")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.legend(fontsize=8)
    return ax


# ---------------------------------------------------------------------------------------
# the benchmark form, for the generic trainer
# ---------------------------------------------------------------------------------------


class ToyModel(MTLModel):
    """The point x as the only (shared) parameter; no heads, no representation."""

    features = frozenset()

    def __init__(self, start: tuple[float, float]) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.tensor(start, dtype=torch.float32))

    def shared_parameters(self) -> list[nn.Parameter]:
        return [self.x]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        if task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
        return []


class DummyLoader:
    """``length`` empty batches per iteration, the same on every rank (the toy has no data)."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for _ in range(self.length):
            yield {}


@dataclass(frozen=True)
class ToyConfig:
    """Validated options of :class:`Toy`."""

    scale: float = 0.1
    start: Any = 0  # index into STARTS or a point (x1, x2)
    shift_losses: bool = False
    steps_per_epoch: int = 1000

    def __post_init__(self) -> None:
        check_range("scale", self.scale, 0.0, low_inclusive=False)
        object.__setattr__(self, "start", _start(self.start))
        if not isinstance(self.shift_losses, bool):
            raise ValueError(f"shift_losses must be True or False, got {self.shift_losses!r}")
        check_int("steps_per_epoch", self.steps_per_epoch, 1)


@register("toy")
class Toy(Benchmark):
    """CAGrad's two-objective toy landscape (2-D parameter, known Pareto front)."""

    description = "CAGrad / Nash-MTL / FAMO two-objective toy landscape on a 2-D point"
    tasks = TASKS
    metrics = {t: (Metric("loss", higher_is_better=False),) for t in TASKS}
    protocol = Protocol(
        optimizer="adam",
        lr=1e-3,
        batch_size=1,
        epochs=35,  # × steps_per_epoch = 35,000 steps
        average_last=1,
        selection="last",
        source="nash-mtl experiments/toy/trainer.py (Adam 1e-3, 35k steps, scale 0.1)",
    )
    options = {"scale": 0.1, "start": 0, "shift_losses": False, "steps_per_epoch": 1000}
    stl_reference = None  # Δm is meaningless here (negative losses, no single-task runs)

    def __init__(self, root: str | None = None, **options: Any) -> None:
        self.root = root  # unused: no data
        self.config = ToyConfig(**options)
        c = self.config
        self._offset = torch.tensor(loss_lower_bounds(c.scale) if c.shift_losses else (0.0, 0.0))

    def build_model(self, **model_options: Any) -> ToyModel:
        if model_options:
            raise ValueError(f"the toy model takes no options, got {sorted(model_options)}")
        return ToyModel(self.config.start)

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
    ) -> DummyLoader:
        if split not in self.splits:
            raise ValueError(f"split must be one of {list(self.splits)}, got {split!r}")
        check_int("batch_size", batch_size, 1)
        check_int("world_size", world_size, 1)
        check_int("rank", rank, 0, world_size - 1)
        # Evaluation needs one look at the point; training takes steps_per_epoch steps.
        return DummyLoader(self.config.steps_per_epoch if split == "train" else 1)

    def forward_losses(self, model: MTLModel, batch: Any) -> Forward:
        f = loss(model.x, self.config.scale)  # type: ignore[attr-defined]
        return Forward(losses=f - self._offset.to(f.device), rep=None, outputs={"f": f})

    def new_evaluator(self) -> ToyEvaluator:
        return ToyEvaluator()


class ToyEvaluator(Evaluator):
    """The objectives' values (unshifted) at the current point, averaged over the batches
    seen (all equal: the loss does not depend on the batch)."""

    def __init__(self) -> None:
        self.total = torch.zeros(2, dtype=torch.float64)
        self.count = 0

    def update(self, forward: Forward, batch: Any) -> None:
        self.total += forward.outputs["f"].detach().double().cpu()
        self.count += 1

    def compute(self) -> dict[str, dict[str, float]]:
        if self.count == 0:
            raise ValueError("ToyEvaluator.compute(): no batch was evaluated")
        vals = (self.total / self.count).tolist()
        return {t: {"loss": v} for t, v in zip(TASKS, vals)}
