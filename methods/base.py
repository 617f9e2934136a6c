"""The method contract: what every MTL method is, declares and returns.

A method is a pure object. It receives the per-task losses (and, if it declares
``requires_grads``, the T×P matrix of per-task gradients of the *transformed* losses, or
only their T×T Gramian) and returns an :class:`Aggregation`: the update direction for the
shared parameters and the effective task weights. It never calls ``backward``, never
touches ``.grad`` and never sees the model; :func:`methods.backward` does all of that.

Capabilities are class attributes, read and validated before training starts:

``requires_grads``      needs per-task gradients of the shared parameters (or of the representation)
``supports_rep_grads``  valid when given gradients w.r.t. the shared representation instead
``gramian_only``        weights depend on the gradients only through K = G Gᵀ (exact under
                        distributed rep-level training, O(T²) communication)
``stateful``            keeps state across steps (EMA buffers, Nash weights, FAMO logits, ...)
``uses_after_step``     wants the same batch's losses again after the optimiser step (FAMO)
``requires_model``      model features the method needs (e.g. ``("task_batchnorm",)`` for CSO)
``default_head_update`` how task-specific parameters are updated, following the reference code:
                        ``"own"`` (each head its own unweighted gradient) or ``"weighted"``
``default_level``       ``"param"`` or ``"rep"``: the gradient level used unless the user picks
                        one (``mgda_ub`` is MGDA at ``"rep"``)
``positive_losses``     needs strictly positive raw task losses (log- or ratio-based
                        weightings); :meth:`Method.requires_positive_losses` refines it per
                        hyperparameters. Read by validation before training and checked by
                        the engine before the loss transform, so a signed loss (an RL actor
                        loss) is refused up front, not discovered by the method's error.

The public operation :meth:`Method.aggregate` is fixed: it validates the inputs' shapes,
calls the subclass's :meth:`Method._aggregate`, and counts
the step. Gramian methods implement only :meth:`GramianMethod.gramian_weights` (Gramian →
weights); the base forms the direction Gᵀw. Clipping has one channel,
:meth:`Method.max_grad_norm`, read by the engine on every path.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

HEAD_UPDATES = ("own", "weighted")
#: method-independent loss transforms, applied before the method's own (``loss_transform``)
LOSS_TRANSFORMS = ("none", "log")
LOG_EPS = 1e-8
_FIXED = ("aggregate", "weights_from_gramian")


@dataclass
class Aggregation:
    """What a method returns for one step.

    ``direction``: the update for the shared parameters (flat, length P), or ``None`` for
    pure loss-weighting methods (the engine then back-propagates ``Σ_t weights_t · L̃_t``).
    ``weights``: the effective task weights (length T), used for logging and by the
    ``"weighted"`` head-update rule. ``info``: extra scalars for diagnostics (solver
    iterations, κ, ``solver_failed`` counts, ...).
    """

    direction: Tensor | None
    weights: Tensor
    info: dict[str, float] = field(default_factory=dict)


@dataclass
class StepContext:
    """Optional per-step facts a method may use; filled in by the engine/trainer.

    ``param_slices``: for each shared parameter its (name, offset, shape) inside the flat
    gradient vector. ``model_stats``: model-provided quantities a method declared it needs
    via ``requires_model`` (e.g. per-task connection strengths for CSO).
    """

    epoch: int = 0
    num_epochs: int = 1
    step: int = 0
    param_slices: Sequence[tuple[str, int, torch.Size]] = ()
    model_stats: Mapping[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# Hyperparameter validation helpers: used in each method's ``Config.__post_init__``.
# ---------------------------------------------------------------------------------------


def check_range(
    name: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Raise ``ValueError`` naming ``name`` if ``value`` is outside the given interval."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    bad_low = low is not None and (value < low if low_inclusive else value <= low)
    bad_high = high is not None and (value > high if high_inclusive else value >= high)
    if bad_low or bad_high:
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        lb = "[" if low_inclusive and low is not None else "("
        hb = "]" if high_inclusive and high is not None else ")"
        raise ValueError(f"{name} must be in {lb}{lo}, {hi}{hb}, got {value!r}")


def check_int(name: str, value: int, low: int | None = None, high: int | None = None) -> None:
    """Raise ``ValueError`` unless ``value`` is an int in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    check_range(name, value, low, high)


def check_bool(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is a real bool (not 0/1)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_positive_losses(name: str, losses: Tensor) -> None:
    """``ValueError`` for losses ≤ 0 or non-finite, which log-based weightings cannot take."""
    bad = [t for t in range(losses.shape[0]) if not 0 < float(losses[t]) < math.inf]
    if bad:
        vals = [float(losses[t]) for t in bad]
        raise ValueError(
            f"{name} needs strictly positive, finite task losses; task(s) {bad} have {vals}. "
            "Shift or reparametrise those losses (e.g. add a constant to a negative "
            "log-likelihood) so that they are > 0"
        )


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise ``ValueError`` listing ``choices`` unless ``value`` is one of them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


@dataclass(frozen=True)
class NoConfig:
    """For methods without hyperparameters."""


# ---------------------------------------------------------------------------------------
# The base classes.
# ---------------------------------------------------------------------------------------


class Method(nn.Module):
    """Base of every method. Subclasses set the capability attributes, a ``Config``
    dataclass (validated in ``__post_init__``) and implement :meth:`_aggregate`
    (:meth:`aggregate` itself, which validates and counts, cannot be overridden).

    It is an ``nn.Module`` so that learnable parameters (UW, IMTL-L, GradNorm) and tensor
    state (EMA buffers) travel with ``state_dict``; non-tensor state (step counters, RNG)
    goes through :meth:`get_extra_state` / :meth:`set_extra_state`.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = NoConfig
    requires_grads: ClassVar[bool] = False
    supports_rep_grads: ClassVar[bool] = False
    gramian_only: ClassVar[bool] = False
    stateful: ClassVar[bool] = False
    uses_after_step: ClassVar[bool] = False
    requires_model: ClassVar[tuple[str, ...]] = ()
    default_head_update: ClassVar[str] = "own"
    default_level: ClassVar[str] = "param"
    positive_losses: ClassVar[bool] = False
    #: plain-data search space for ``mtlx tune``: {hparam: methods.space.Dimension}
    search_space: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, num_tasks: int, config: Any = None, seed: int = 0) -> None:
        super().__init__()
        check_int("num_tasks", num_tasks, 1)
        self.num_tasks = num_tasks
        self.config = config if config is not None else self.Config()
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.step_count = 0
        self.loss_transform = "none"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for fixed in _FIXED:
            if fixed in cls.__dict__ and cls.__module__ != __name__:
                raise TypeError(
                    f"{cls.__name__} overrides {fixed}(), which validates inputs and counts "
                    "steps for every method; implement _aggregate() (or gramian_weights() on "
                    "a GramianMethod) instead"
                )

    # -- the operations -------------------------------------------------------------------

    def transform_losses(self, losses: Tensor) -> Tensor:
        """Loss-level part of the method (identity by default). Must stay differentiable."""
        return losses

    def prepare_losses(self, losses: Tensor) -> Tensor:
        """What the engine differentiates: the method-independent ``loss_transform`` (log(L +
        1e-8) for ``"log"``, DB-MTL's loss balancing on any method), then the method's own
        :meth:`transform_losses` (IMTL-L's e^s·L − s, UW's terms: they act on log losses)."""
        if self.loss_transform == "log":
            losses = torch.log(losses + LOG_EPS)
        return self.transform_losses(losses)

    def set_loss_transform(self, name: str) -> None:
        """Choose the method-independent loss transform (``methods.create(...,
        loss_transform=...)``); ``ValueError`` where it cannot combine with the method."""
        check_choice("loss_transform", name, LOSS_TRANSFORMS)
        if name == "log":
            conflict = self.log_transform_conflict()
            if conflict:
                raise ValueError(f"{self.name} cannot take loss_transform='log': {conflict}")
        self.loss_transform = name

    def log_transform_conflict(self) -> str | None:
        """Why log-transformed losses cannot feed this method, or None. Methods that compute
        with the loss values themselves and need them positive (ratios, logs) cannot take
        log(L), which is negative for L < 1."""
        if self._needs_positive_losses():
            return ("it computes with the loss values and needs them positive, but log(L) is "
                    "negative for L < 1; use loss_transform='none'")
        return None

    def needs_grads(self) -> bool:
        """Whether the next :meth:`aggregate` call needs gradients (Nash-MTL skips steps)."""
        return self.requires_grads

    def requires_positive_losses(self) -> bool:
        """Whether this instance needs raw task losses > 0 (declared; read by validation
        before any training, e.g. to keep signed RL losses away from log-based methods)."""
        return self._needs_positive_losses() or self.loss_transform == "log"

    def _needs_positive_losses(self) -> bool:
        """The method's own need (``positive_losses``, refined per hyperparameters)."""
        return self.positive_losses

    def max_grad_norm(self) -> float | None:
        """Clip the shared gradient to this norm after it is written (None: no clipping).
        Read by the engine on every path; Nash-MTL's reference clipping is the user."""
        return None

    def aggregate(
        self, grads: Tensor | None, losses: Tensor, context: StepContext | None = None
    ) -> Aggregation:
        """The update for one step: validates the inputs, runs :meth:`_aggregate`, counts the
        step. ``context`` is read, never modified."""
        self._check_inputs(grads, losses)
        agg = self._aggregate(grads, losses, context)
        self.step_count += 1
        return agg

    def _aggregate(
        self, grads: Tensor | None, losses: Tensor, context: StepContext | None
    ) -> Aggregation:
        raise NotImplementedError

    def plan_step(self, epoch: int, num_epochs: int) -> str:
        """``"joint"`` (one engine step on all tasks) or ``"sequential"`` (one optimiser step
        per task on the same batch: CSO's Phase 1). Drawn with the method's generator."""
        return "joint"

    def after_step(self, losses: Tensor) -> None:
        """Called after the optimiser step with the same batch's new losses (if
        ``uses_after_step``)."""

    def start_epoch(self, epoch: int, num_epochs: int) -> None:
        """Called by the trainer at the start of each epoch (DWA, GradNorm, CSO use it)."""

    def reset(self) -> None:
        """Forget all state, as if freshly constructed."""
        self.generator.manual_seed(self.seed)
        self.step_count = 0

    # -- state ----------------------------------------------------------------------------

    def get_extra_state(self) -> dict[str, Any]:
        return {"step_count": self.step_count, "rng": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self.generator.set_state(state["rng"])

    # -- helpers for subclasses -----------------------------------------------------------

    def _check_inputs(self, grads: Tensor | None, losses: Tensor) -> None:
        self._check_losses(losses)
        T = self.num_tasks
        if self.requires_grads and self.needs_grads() and grads is None:
            raise ValueError(f"{self.name} requires per-task gradients, got grads=None")
        if grads is not None and (grads.dim() != 2 or grads.shape[0] != T):
            raise ValueError(f"{self.name}: grads must have shape ({T}, P), got {tuple(grads.shape)}")

    def _check_losses(self, losses: Tensor) -> None:
        T = self.num_tasks
        if not isinstance(losses, Tensor) or losses.shape != (T,):
            shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
            raise ValueError(f"{self.name}: losses must be a tensor of shape ({T},), got {shape}")

    def warn_once(self, key: str, message: str) -> None:
        """A ``RuntimeWarning`` the first time ``key`` happens on this object (one per run);
        the count itself goes into ``Aggregation.info`` so diagnostics keep every case."""
        warned = self.__dict__.setdefault("_warned", set())
        if key not in warned:
            warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def extra_repr(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())
        return f"num_tasks={self.num_tasks}" + (f", {fields}" if fields else "")

    def hparams(self) -> dict[str, Any]:
        """The resolved hyperparameters (what identifies a run). The common
        ``loss_transform`` appears only when set, so runs made before it existed keep
        their ids."""
        fields = dataclasses.asdict(self.config) if dataclasses.is_dataclass(self.config) else {}
        if self.loss_transform != "none":
            fields["loss_transform"] = self.loss_transform
        return fields

    def __str__(self) -> str:
        return self.name


class LossWeighting(Method):
    """A method that only reweights (transformed) losses: ``aggregate(None, losses)``.

    One backward of ``Σ_t w_t L̃_t`` reaches every parameter, so heads are weighted."""

    default_head_update = "weighted"

    def weights(self, losses: Tensor) -> Tensor:
        """Task weights for this step (detached). Equal weights by default."""
        return torch.ones_like(losses)

    def _aggregate(
        self, grads: Tensor | None, losses: Tensor, context: StepContext | None
    ) -> Aggregation:
        return Aggregation(direction=None, weights=self.weights(losses.detach()).to(losses.dtype))


class GramianMethod(Method):
    """A gradient method whose weights depend on the gradients only through ``K = G Gᵀ``.

    Subclasses implement :meth:`gramian_weights`; the direction is ``Gᵀ w``. This is what
    lets the engine run them on representation gradients and under torch.distributed by
    all-reducing the T×T Gramian instead of T×P gradients.
    """

    requires_grads = True
    supports_rep_grads = True
    gramian_only = True

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Return (weights, info) from the T×T Gramian (float64) and the losses."""
        raise NotImplementedError

    def _aggregate(
        self, grads: Tensor | None, losses: Tensor, context: StepContext | None
    ) -> Aggregation:
        assert grads is not None
        w, info = self._weights(grads @ grads.T, losses)
        return Aggregation(direction=w.to(grads.dtype) @ grads, weights=w.to(losses.dtype),
                           info=info)

    def weights_from_gramian(self, gramian: Tensor, losses: Tensor) -> tuple[Tensor, dict]:
        """Entry point for the engine's Gramian-only paths (rep-level, distributed): the
        same validation and step counting as :meth:`aggregate`, from the T×T Gramian."""
        T = self.num_tasks
        if gramian.shape != (T, T):
            raise ValueError(f"{self.name}: gramian must be ({T}, {T}), got {tuple(gramian.shape)}")
        self._check_losses(losses)
        w, info = self._weights(gramian, losses)
        self.step_count += 1
        return w, info

    def _weights(self, gramian: Tensor, losses: Tensor) -> tuple[Tensor, dict]:
        K = gramian.detach().to(torch.float64)
        if not torch.isfinite(K).all():
            raise ValueError(f"{self.name}: non-finite per-task gradients (NaN or inf)")
        w, info = self.gramian_weights(K, losses.detach().to(torch.float64))
        return w.to(gramian.device), info
