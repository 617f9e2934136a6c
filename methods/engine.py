"""The per-task gradient engine: the one place that calls ``backward`` for a method.

:func:`backward` takes a method, the T per-task losses of the current batch, the shared
parameters and (optionally) the shared representation, and leaves ``.grad`` set on the
shared parameters, the task-specific parameters and the method's own parameters. It picks
the cheapest path the method allows:

``loss``   the method needs no gradients this step: one backward of Σ_t w_t L̃_t.
``param``  the T×P Jacobian of the shared parameters (T backward passes, or one batched
           ``is_grads_batched`` pass), handed to ``method.aggregate``.
``rep``    gradients w.r.t. the shared representation z (T cheap passes through the heads
           only), weights from their Gramian, then one backward of Σ_t w_t ∇_z L̃_t through
           the encoder.

Under torch.distributed (one process per worker, equal per-worker batch sizes) every rank
ends with the gradient of the single-process update on the concatenated batch:

* losses are replaced by the straight-through surrogate L + (mean_ranks(L) − L).detach(),
  so every loss transform and every loss-dependent weight sees the global loss value while
  gradients stay local;
* param-level: the T×(P+H) Jacobian is mean-all-reduced in one flat collective before the
  method sees it, so stateful methods (EMA buffers, Nash weights) evolve identically on
  every rank;
* rep-level: the T×T Gramian of the representation gradients is a sum over samples, so
  all-reducing it (÷W² for the mean loss) is exact; the parameter gradients of the combined
  representation gradient are then mean-all-reduced;
* loss-level: all gradients are mean-all-reduced in one flat collective.

The model must therefore *not* be wrapped in DistributedDataParallel (its all-reduce would
double-count); the engine does every collective itself.

Task-specific parameters follow an explicit head-update rule: ``"own"`` — each head gets
the unweighted gradient of its own (transformed) loss, as CAGrad/IMGrad/LibMTL do — or
``"weighted"`` — the gradient of Σ_t w_t L̃_t, as nash-mtl's Nash-MTL/IMTL-G/MGDA and every
loss-weighting method do. Each method's ``default_head_update`` follows its reference code.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor

from methods.base import HEAD_UPDATES, Method, StepContext, check_positive_losses
from methods.precision import LossScaler

Level = Literal["auto", "param", "rep"]
JacobianMode = Literal["auto", "loop", "batched", "measure"]


@dataclass
class StepResult:
    """Diagnostics of one engine step (all detached, on the losses' device)."""

    path: str
    losses: Tensor
    weights: Tensor
    grad_norms: Tensor | None = None
    cosines: Tensor | None = None
    info: dict[str, float] = field(default_factory=dict)
    skipped: bool = False  # an fp16 overflow: no gradient was written


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------


def resolve_level(method: Method, level: Level, has_rep: bool) -> str:
    """Which gradient level a step uses; ``ValueError`` for impossible combinations."""
    if level not in ("auto", "param", "rep"):
        raise ValueError(f"level must be one of ['auto', 'param', 'rep'], got {level!r}")
    if level == "rep":
        if not method.requires_grads:
            raise ValueError(
                f"{method.name} is a loss-weighting method and takes no gradients; "
                "use level='param' (or 'auto')"
            )
        if not method.supports_rep_grads:
            raise ValueError(
                f"{method.name} does not support representation-level gradients; "
                "use level='param'"
            )
        if not has_rep:
            raise ValueError("level='rep' needs the shared representation: pass rep=...")
        return "rep"
    return "param"


def effective_level(method: Method, level: Level) -> str:
    """The level ``level`` means for ``method``: ``"auto"`` is its ``default_level`` (a
    loss-weighting method takes no gradients: ``"param"``, i.e. the plain loss path)."""
    if level == "auto":
        return method.default_level if method.requires_grads else "param"
    return level


def validate_head_update(method: Method, head_update: str | None) -> str:
    rule = method.default_head_update if head_update is None else head_update
    if rule not in HEAD_UPDATES:
        raise ValueError(f"head_update must be one of {list(HEAD_UPDATES)}, got {rule!r}")
    return rule


# ---------------------------------------------------------------------------------------
# distributed helpers
# ---------------------------------------------------------------------------------------


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_reduce_mean_(t: Tensor) -> Tensor:
    """In place: the mean of ``t`` over the torch.distributed ranks (unchanged with one)."""
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(dist.get_world_size())
    return t


def _globalise(losses: Tensor) -> Tensor:
    """Straight-through surrogate: the value is the mean over ranks, the gradient local."""
    mean = losses.detach().clone()
    all_reduce_mean_(mean)
    return losses + (mean - losses.detach())


# ---------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------


def _numel(params: Sequence[Tensor]) -> int:
    return sum(p.numel() for p in params)


#: the measured choice of ``jacobian(mode="auto")`` per (device, T, N, dtype): one timing of
#: each way on the first call, then reused (``jacobian_choices()`` shows it)
_AUTO_CHOICE: dict[tuple, str] = {}


def jacobian_choices() -> dict[tuple, str]:
    """What ``mode="auto"``/``"measure"`` chose so far: {(device, T, N, dtype): mode}."""
    return dict(_AUTO_CHOICE)


def jacobian(
    outputs: Tensor,
    inputs: Sequence[Tensor],
    *,
    mode: JacobianMode = "auto",
    retain_graph: bool = False,
) -> Tensor:
    """The T×N Jacobian of a T-vector w.r.t. ``inputs`` (flattened, concatenated).

    ``loop`` runs T ``autograd.grad`` calls writing straight into the rows of one dense
    buffer; ``batched`` runs one vmapped backward (``is_grads_batched``). ``auto`` uses the
    loop on CPU (measured as fast or faster on CPU conv nets: bench/engine_speed.py
    --jacobian) and, on an accelerator, times both once for this (device, T, N, dtype) and
    keeps the faster (``measure`` does that on any device). The choice is cached for the
    process; a run that must be bit-identical across restarts pins ``loop`` or ``batched``."""
    if mode not in ("auto", "loop", "batched", "measure"):
        raise ValueError(
            f"jacobian mode must be one of ['auto', 'loop', 'batched', 'measure'], got {mode!r}")
    if mode == "auto" and outputs.device.type == "cpu":
        mode = "loop"
    if mode in ("auto", "measure"):
        key = (str(outputs.device), outputs.shape[0], _numel(inputs), outputs.dtype)
        if key not in _AUTO_CHOICE:
            return _measure(outputs, inputs, retain_graph, key)
        mode = _AUTO_CHOICE[key]  # type: ignore[assignment]
    if mode == "batched":
        return _jacobian_batched(outputs, inputs, retain_graph)
    return _jacobian_loop(outputs, inputs, retain_graph)


def _jacobian_loop(outputs: Tensor, inputs: Sequence[Tensor], retain_graph: bool) -> Tensor:
    T = outputs.shape[0]
    J = torch.empty(T, _numel(inputs), dtype=outputs.dtype, device=outputs.device)
    for t in range(T):
        gs = torch.autograd.grad(
            outputs[t], inputs, retain_graph=retain_graph or t < T - 1,
            allow_unused=True, materialize_grads=True,
        )
        torch.cat([g.reshape(-1) for g in gs], out=J[t])
    return J


def _jacobian_batched(outputs: Tensor, inputs: Sequence[Tensor], retain_graph: bool) -> Tensor:
    T = outputs.shape[0]
    eye = torch.eye(T, dtype=outputs.dtype, device=outputs.device)
    gs = torch.autograd.grad(
        outputs, inputs, grad_outputs=eye, is_grads_batched=True,
        retain_graph=retain_graph, allow_unused=True, materialize_grads=True,
    )
    return torch.cat([g.reshape(T, -1) for g in gs], dim=1)


def _measure(outputs: Tensor, inputs: Sequence[Tensor], retain_graph: bool, key: tuple) -> Tensor:
    """Time the loop and the batched pass once each (synchronising the device, so the time
    is the work's, not the launch's) and cache the faster; returns the loop's Jacobian."""
    def timed(fn, keep):
        _sync(outputs.device)
        t0 = time.perf_counter()
        J = fn(outputs, inputs, keep)
        _sync(outputs.device)
        return J, time.perf_counter() - t0

    _, t_batched = timed(_jacobian_batched, True)
    J, t_loop = timed(_jacobian_loop, retain_graph)
    _AUTO_CHOICE[key] = "batched" if t_batched < t_loop else "loop"
    return J


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _write_grads(params: Sequence[Tensor], flat: Tensor) -> None:
    """Set ``p.grad`` from a flat vector (views, no copy); overwrites existing grads."""
    for p, g in zip(params, torch.split(flat, [p.numel() for p in params])):
        p.grad = g.view_as(p).to(p.dtype)


def _set_grads(params: Sequence[Tensor], grads: Sequence[Tensor | None], W: int) -> None:
    """Set ``p.grad``; under torch.distributed mean-all-reduce them in one flat collective.
    Single-process, the autograd results are used as they are (no flat copy)."""
    if W > 1:
        flat = _flat_grads(params, grads)
        all_reduce_mean_(flat)
        _write_grads(params, flat)
        return
    for p, g in zip(params, grads):
        p.grad = torch.zeros_like(p) if g is None else g


def _flat_grads(params: Sequence[Tensor], grads: Iterable[Tensor | None]) -> Tensor:
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for p, g in zip(params, grads)
        ]
    )


def _diagnostics(K: Tensor) -> tuple[Tensor, Tensor]:
    K = K.detach().to(torch.float64)
    norms = K.diagonal().clamp_min(0).sqrt()
    denom = torch.outer(norms, norms).clamp_min(1e-30)
    return norms.float(), (K / denom).float()


def _clip_(params: Sequence[Tensor], max_norm: float | None, info: dict[str, float]) -> None:
    if max_norm is not None:
        total = torch.nn.utils.clip_grad_norm_(params, max_norm)
        info["shared_grad_norm_before_clip"] = float(total)


# ---------------------------------------------------------------------------------------
# the engine
# ---------------------------------------------------------------------------------------


def backward(
    method: Method,
    losses: Tensor,
    shared_params: Iterable[Tensor],
    task_params: Iterable[Tensor] = (),
    *,
    rep: Tensor | None = None,
    level: Level = "auto",
    head_update: str | None = None,
    jacobian_mode: JacobianMode = "auto",
    context: StepContext | None = None,
    diagnostics: bool = False,
    scaler: LossScaler | None = None,
) -> StepResult:
    """Compute and write the gradients of one multi-task step for ``method``.

    ``losses``: Tensor[T], each the mini-batch mean loss of a task (differentiable).
    ``shared_params``: parameters shared by all tasks (they get the method's direction).
    ``task_params``: every other trainable parameter of the model (heads, task attention);
    the method's own learnable parameters are added automatically.
    ``rep``: the shared representation (encoder output), needed for ``level='rep'``;
    ``level='auto'`` uses the method's ``default_level``.
    ``diagnostics``: also return per-task gradient norms and pairwise cosines (a T×T×P
    Gramian on the param path; T extra backward passes on the loss path; free at rep level).
    ``scaler``: fp16 loss scaling (:class:`methods.precision.LossScaler`): every backward
    pass is scaled, the method sees unscaled gradients, an overflow skips the step (every
    gradient left ``None``, so ``optimizer.step()`` changes nothing; ``StepResult.skipped``)
    and the scaler is updated here, once per call.
    """
    T = method.num_tasks
    if losses.dim() != 1 or losses.shape[0] != T:
        raise ValueError(f"losses must have shape ({T},) for {method.name}, got {tuple(losses.shape)}")
    shared = [p for p in shared_params if p.requires_grad]
    if not shared:
        raise ValueError("shared_params is empty: pass the model's shared parameters")
    shared_ids = {id(p) for p in shared}
    heads = [p for p in task_params if p.requires_grad and id(p) not in shared_ids]
    seen = {id(p) for p in heads}
    # The method's own parameters (UW's and IMTL-L's s) always get their own loss's gradient:
    # weighting them by (possibly negative) task weights would change what they learn.
    own_params = [p for p in method.parameters() if p.requires_grad and id(p) not in seen]
    rule = validate_head_update(method, head_update)
    lvl = resolve_level(method, effective_level(method, level), rep is not None)  # type: ignore[arg-type]
    W = world_size()

    if W > 1:
        losses = _globalise(losses)
    if method.requires_positive_losses():
        check_positive_losses(method.name, losses.detach())
    transformed = method.prepare_losses(losses)
    if not torch.isfinite(transformed.detach()).all():
        bad = [t for t in range(T) if not math.isfinite(float(transformed.detach()[t]))]
        raise FloatingPointError(f"non-finite (transformed) loss for task(s) {bad}")

    step = _Step(method, losses.detach(), transformed, shared, _Others(heads + own_params,
                 _numel(heads)), rule, context, W, jacobian_mode, scaler)
    if not method.needs_grads():
        return step.loss_path(diagnostics)
    if lvl == "rep":
        assert rep is not None
        return step.rep_path(rep)
    return step.param_path(diagnostics)


def after_step(method: Method, losses: Tensor) -> None:
    """Hand the same batch's post-step losses to ``method.after_step`` (FAMO), averaged over
    ranks under torch.distributed so that every rank's method state stays identical."""
    if not method.uses_after_step:
        return
    losses = losses.detach().clone()
    if world_size() > 1:
        all_reduce_mean_(losses)
    method.after_step(losses)


@dataclass
class _Step:
    """One engine call: what every path needs, and the loss-scaling bookkeeping."""

    method: Method
    losses: Tensor  # detached raw losses, for the result
    transformed: Tensor
    shared: list[Tensor]
    others: _Others
    rule: str
    context: StepContext | None
    W: int
    mode: JacobianMode
    scaler: LossScaler | None
    batched: float | None = None  # the measured Jacobian choice (auto on an accelerator)

    @property
    def scale(self) -> float:
        return self.scaler.scale if self.scaler is not None else 1.0

    def scaled(self, t: Tensor) -> Tensor:
        """What is back-propagated: ``t`` times the loss scale (unchanged without one)."""
        return t if self.scaler is None else t * self.scale

    def overflow(self, *tensors: Tensor) -> bool:
        """Whether any (unscaled) gradient is inf/NaN, agreed by every rank; updates the
        scaler (only called when there is one)."""
        assert self.scaler is not None
        bad = torch.zeros((), device=tensors[0].device)
        for t in tensors:
            bad = torch.maximum(bad, (~torch.isfinite(t)).any().to(bad.dtype))
        if self.W > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        found = bool(bad)
        self.scaler.update(found)
        return found

    def skip(self, path: str) -> StepResult:
        """An overflowed fp16 step: no gradient anywhere, so the optimiser leaves it out."""
        for p in self.shared + self.others.params:
            p.grad = None
        T = self.method.num_tasks
        info = {"skipped": 1.0, "loss_scale": self.scaler.scale if self.scaler else 1.0}
        return StepResult(path, self.losses, torch.zeros(T, device=self.losses.device),
                          info=info, skipped=True)

    def jacobian(self, inputs: list[Tensor], retain_graph: bool = False) -> Tensor:
        """Per-task gradients of the (scaled) transformed losses; remembers a measured
        loop-or-batched choice so that the step's diagnostics show it."""
        out = self.scaled(self.transformed)
        J = jacobian(out, inputs, mode=self.mode, retain_graph=retain_graph)
        key = (str(out.device), out.shape[0], _numel(inputs), out.dtype)
        measured = self.mode == "measure" or (self.mode == "auto" and out.device.type != "cpu")
        if measured and key in _AUTO_CHOICE:
            self.batched = float(_AUTO_CHOICE[key] == "batched")
        return J

    def finish(self, path, w, info, norms=None, cos=None) -> StepResult:
        _clip_(self.shared, self.method.max_grad_norm(), info)
        if self.batched is not None:
            info["jacobian_batched"] = self.batched
        if self.scaler is not None:
            info["loss_scale"] = self.scaler.scale
        return StepResult(path, self.losses, w.detach(), norms, cos, info)

    def loss_path(self, diagnostics: bool) -> StepResult:
        m, tl, shared, others = self.method, self.transformed, self.shared, self.others
        agg = m.aggregate(None, tl.detach(), self.context)
        w = agg.weights.detach().to(tl.dtype)
        info = dict(agg.info)
        norms = cos = None
        if diagnostics:
            # Gradient paths get these for free; here they cost T extra backward passes.
            J = jacobian(tl, shared, retain_graph=True)
            if self.W > 1:
                all_reduce_mean_(J)
            norms, cos = _diagnostics(J @ J.T)
        params = shared + others.params
        n_w = _numel(shared) + (others.n_heads if self.rule == "weighted" else 0)
        if bool((w == 1).all()):
            n_w = _numel(params)  # own and weighted coincide: one backward pass
        split = _split_index(params, n_w)
        gs = list(torch.autograd.grad(self.scaled((w * tl).sum()), params[:split],
                                      retain_graph=split < len(params), allow_unused=True))
        if split < len(params):
            gs += torch.autograd.grad(self.scaled(tl.sum()), params[split:], allow_unused=True)
        _set_grads(params, gs, self.W)
        if self.scaler is not None:
            grads = [p.grad.div_(self.scale) for p in params if p.grad is not None]
            if self.overflow(*grads):
                return self.skip("loss")
        return self.finish("loss", w, info, norms, cos)

    def param_path(self, diagnostics: bool) -> StepResult:
        shared, others = self.shared, self.others
        n_sh = _numel(shared)
        J = self.jacobian(shared + others.params)
        if self.W > 1:
            all_reduce_mean_(J)  # one flat collective: every rank now holds the global Jacobian
        if self.scaler is not None and self.overflow(J.div_(self.scale)):
            return self.skip("param")  # before the method: its state does not advance
        G = J[:, :n_sh]
        agg = self.method.aggregate(G, self.transformed.detach(), _with_slices(self.context, shared))
        w = agg.weights.detach().to(J.dtype)
        direction = agg.direction if agg.direction is not None else w @ G
        _write_grads(shared, direction.detach())
        if others.params:
            _write_grads(others.params, others.combine(J[:, n_sh:], w, self.rule))
        # The Gramian costs a T×T×P product: only on the steps the caller logs.
        norms, cos = _diagnostics(G @ G.T) if diagnostics else (None, None)
        return self.finish("param", w, dict(agg.info), norms, cos)

    def rep_path(self, rep: Tensor) -> StepResult:
        m, others, W = self.method, self.others, self.W
        if W > 1 and not m.gramian_only:
            raise ValueError(
                f"{m.name} at rep level is not exact under torch.distributed (its weights need "
                "more than the Gramian); use level='param'"
            )
        n_rep = rep.numel()
        R_all = self.jacobian([rep] + others.params, retain_graph=True)
        if self.scaler is not None and self.overflow(R_all.div_(self.scale)):
            return self.skip("rep")  # before the method: its state does not advance
        R = R_all[:, :n_rep]
        if m.gramian_only:
            K = R @ R.T
            if W > 1:
                dist.all_reduce(K, op=dist.ReduceOp.SUM)
                K = K / (W * W)  # global loss is the mean over ranks: ∇_z scales by 1/W
            w, info = m.weights_from_gramian(K, self.transformed.detach())
            w = w.detach().to(R.dtype)
            d_rep = w @ R
        else:
            agg = m.aggregate(R, self.transformed.detach(), self.context)
            w = agg.weights.detach().to(R.dtype)
            d_rep = agg.direction if agg.direction is not None else w @ R
            info = dict(agg.info)
            K = R @ R.T
        gs = list(torch.autograd.grad(rep, self.shared, grad_outputs=self.scaled(d_rep).view_as(rep),
                                      allow_unused=True))
        if self.scaler is not None:  # the encoder pass was scaled again: unscale, check
            gs = [g if g is None else g / self.scale for g in gs]
        if others.params:
            head = others.combine(R_all[:, n_rep:], w, self.rule)
            sizes = [p.numel() for p in others.params]
            gs += [g.view_as(p).to(p.dtype) for p, g in zip(others.params, torch.split(head, sizes))]
        _set_grads(self.shared + others.params, gs, W)
        if self.scaler is not None:
            # the scaler was updated for the head passes; an encoder overflow still skips
            bad = [p.grad for p in self.shared if p.grad is not None]
            if bad and not all(bool(torch.isfinite(g).all()) for g in bad):
                self.scaler.update(True)
                return self.skip("rep")
        norms, cos = _diagnostics(K)
        return self.finish("rep", w, info, norms, cos)


@dataclass
class _Others:
    """Non-shared parameters: the heads (first ``n_heads`` entries of the flat vector follow
    the head rule) then the method's own parameters (always their own gradient)."""

    params: list[Tensor]
    n_heads: int

    def combine(self, H: Tensor, w: Tensor, rule: str) -> Tensor:
        """Gradients from the T×H per-task gradient block ``H``."""
        own = H.sum(0)
        if rule == "own":
            return own
        return torch.cat([w @ H[:, : self.n_heads], own[self.n_heads :]])


def _split_index(params: Sequence[Tensor], n: int) -> int:
    """Number of leading parameters whose sizes add up to ``n``."""
    total = 0
    for i, p in enumerate(params):
        if total >= n:
            return i
        total += p.numel()
    return len(params)


def _with_slices(context: StepContext | None, shared: Sequence[Tensor]) -> StepContext:
    """The step context with the shared parameters' slices filled in: a copy, so the
    caller's context is never modified."""
    ctx = context if context is not None else StepContext()
    if ctx.param_slices:
        return ctx
    slices, off = [], 0
    for i, p in enumerate(shared):
        slices.append((str(i), off, p.shape))
        off += p.numel()
    return dataclasses.replace(ctx, param_slices=slices)
