"""Shared metric code: Δm / Δp summaries and sum-based metric accumulators.

Summaries (docs/delta_m.md §1, §2)
-----------------------------------
:func:`delta_m` — the Nash-MTL / CAGrad / FAMO / IMGrad convention (lower is better)::

    Δm% = 100 · (1/S) Σ_{all S metrics} (−1)^δ (M − M_stl) / M_stl,   δ = 1 if higher is better

S counts *metrics*, not tasks (NYUv2 9, Cityscapes 4, QM9 11, CelebA 40), exactly as
``delta_fn`` in nash-mtl ``experiments/nyuv2/utils.py`` and CAGrad ``nyuv2/plot.py``.

:func:`delta_p` — LibMTL's ``count_improvement`` (``LibMTL/utils.py``; higher is better)::

    Δp% = 100 · (1/T) Σ_tasks (1/M_t) Σ_{metrics of t} (−1)^w (B − N) / B,   w = 1 if higher better

i.e. averaged within each task first (DB-MTL / Rep-MTL's Δp_task). LibMTL returns a fraction;
here it is ×100, as the papers print it. For the same numbers Δp is *not* −Δm: CAGrad's
NYUv2 row is Δm = +0.20 but Δp = +4.33.

Pitfalls handled or documented here:

* exactly the metrics listed in the ``{task: [Metric]}`` description enter the mean; extra
  keys in ``results`` are ignored, missing ones are a ``ValueError``;
* units: results and references must use the same units (nash-mtl's BASE holds mIoU and
  "within t°" as fractions, the papers print percentages, QM9 energies are meV). The ratio
  is unit-free only when both sides agree; nothing here can detect a mismatch;
* which numbers go in (last-10-epoch mean, best-validation epoch) is the caller's choice;
  :func:`average_results` averages metric dicts first (CAGrad ``plot.py`` averages metrics
  over seeds, then applies Δm — different from averaging per-seed Δm);
* published Δm columns are computed from unrounded metrics: recomputing from a table's
  rounded values agrees only within the propagated rounding (:func:`rounding_bound`; ≈0.02
  on NYUv2, ≈0.11 on Cityscapes, where AbsErr 0.0129 carries ±0.4 %). Every NYUv2 and
  Cityscapes row of the shipped tables (docs/reproduce.md §Table format) is within it except
  Nash-MTL Tab. 2's IMTL-G on NYUv2 (printed −0.76, its values give −0.60; IMGrad reprints
  −0.59).

Accumulators
------------
Small classes with ``update(...)`` / ``compute()`` whose states are sums (counts, error sums,
confusion matrices, histograms), so that metrics are pooled over the whole split and states
from several workers combine exactly with :meth:`Accumulator.all_reduce_` (or
:meth:`Accumulator.merge_`). States live on the device of the first ``update``, in
int64/float64.

* :class:`ConfusionMatrix` — segmentation mIoU and pixel accuracy from one confusion matrix
  over the split (MTAN's Nov-2020 "new formula", LibMTL ``SegMetric``); labels < 0 are void.
* :class:`DepthErrors` — absolute and relative depth error over valid pixels (gt ≠ 0).
* :class:`NormalErrors` — surface-normal angle error: mean, median, % within 11.25/22.5/30°.
* :class:`Accuracy`, :class:`BinaryF1` (CelebA, per attribute), :class:`MeanAbsoluteError`.

Depth and normals take ``reduction="pooled"`` (default: every valid pixel weighs the same) or
``"batch_mean"``: the metric of each batch, averaged over batches with equal weight. The latter
is what mtan ``im2im_pred/utils.py`` (``depth_error``/``normal_error`` accumulated
``/ test_batch``), CAGrad and nash-mtl do, with test batch size 2, and so what their published
STL references were measured with; it depends on the batch size and makes the "median" a mean
of per-batch medians. LibMTL (``examples/nyu/utils.py``) pools: its ``NormalMetric``
concatenates all errors, and its ``DepthMetric`` weights each batch mean by
``pred.size(0)`` *after* ``masked_select`` — the number of valid pixels — which is exactly the
pooled value (the valid-pixel count, not the batch size:
docs/benchmarks.md §Dense-prediction metrics).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from envs.base import Metric

Results = Mapping[str, Mapping[str, float]]
MetricSpec = Mapping[str, Sequence[Metric]]

# ---------------------------------------------------------------------------------------
# Δm and Δp
# ---------------------------------------------------------------------------------------


def _relative_terms(
    results: Results, reference: Results, metrics: MetricSpec
) -> dict[str, list[float]]:
    """{task: [(−1)^δ (M − M_ref)/M_ref for each metric]} (Δm sign: positive = worse)."""
    if not metrics:
        raise ValueError("metrics is empty: pass the benchmark's {task: [Metric, ...]}")
    out: dict[str, list[float]] = {}
    for task, ms in metrics.items():
        if not ms:
            raise ValueError(f"task {task!r} lists no metrics")
        for where, table in (("results", results), ("reference", reference)):
            if task not in table:
                raise ValueError(
                    f"task {task!r} missing from {where}; it has tasks {sorted(table)}"
                )
        terms = []
        for m in ms:
            for where, table in (("results", results), ("reference", reference)):
                if m.name not in table[task]:
                    raise ValueError(
                        f"metric {task}/{m.name} missing from {where}; it has {sorted(table[task])}"
                    )
            base = float(reference[task][m.name])
            if not math.isfinite(base) or base == 0.0:
                raise ValueError(
                    f"reference {task}/{m.name} = {base!r}: a relative difference needs a "
                    "finite, non-zero single-task reference"
                )
            value = float(results[task][m.name])  # NaN (a diverged run) propagates
            sign = -1.0 if m.higher_is_better else 1.0
            terms.append(sign * (value - base) / base)
        out[task] = terms
    return out


def delta_m(results: Results, reference: Results, metrics: MetricSpec) -> float:
    """Δm% (metric-level, lower is better; Nash-MTL/CAGrad/FAMO convention).

    ``results`` and ``reference``: {task: {metric: value}} in the same units;
    ``metrics``: {task: [Metric]} — exactly these metrics are averaged."""
    terms = _relative_terms(results, reference, metrics)
    flat = [t for ts in terms.values() for t in ts]
    return 100.0 * sum(flat) / len(flat)


def delta_p(results: Results, reference: Results, metrics: MetricSpec) -> float:
    """Δp% (task-level, higher is better; LibMTL ``count_improvement`` ×100)."""
    terms = _relative_terms(results, reference, metrics)
    per_task = [-sum(ts) / len(ts) for ts in terms.values()]
    return 100.0 * sum(per_task) / len(per_task)


def average_results(runs: Sequence[Results]) -> dict[str, dict[str, float]]:
    """Mean of several {task: {metric: value}} dicts (epochs or seeds), key by key.

    Every dict must have the same tasks and metrics."""
    if not runs:
        raise ValueError("average_results needs at least one result dict")
    keys = {(t, m) for t, ms in runs[0].items() for m in ms}
    for i, r in enumerate(runs[1:], 1):
        other = {(t, m) for t, ms in r.items() for m in ms}
        if other != keys:
            diff = sorted(keys ^ other)
            raise ValueError(f"result dict {i} has different task/metric keys: {diff}")
    out: dict[str, dict[str, float]] = {}
    for t, m in sorted(keys):
        out.setdefault(t, {})[m] = sum(float(r[t][m]) for r in runs) / len(runs)
    return out


def rounding_bound(
    results: Results, reference: Results, metrics: MetricSpec, decimals: Results
) -> float:
    """Worst-case change of Δm (in %) when ``results`` are printed rounded.

    ``decimals``: {task: {metric: number of printed decimals}}. A value printed with d
    decimals is within 0.5·10^−d of the true one, which moves (M − B)/B by at most
    0.5·10^−d / |B|. The reference is taken as exact (the reference code's BASE arrays hold
    the very numbers the papers print). The same bound holds for Δp."""
    _relative_terms(results, reference, metrics)  # validates keys
    S = sum(len(ms) for ms in metrics.values())
    total = 0.0
    for task, ms in metrics.items():
        for m in ms:
            total += 0.5 * 10.0 ** (-decimals[task][m.name]) / abs(float(reference[task][m.name]))
    return 100.0 * total / S


# ---------------------------------------------------------------------------------------
# accumulators
# ---------------------------------------------------------------------------------------


class Accumulator:
    """Base of the sum-based metric accumulators.

    Subclasses list their states in ``_init_states()`` ({name: zero tensor}); every state is
    a sum over samples (or over batches), so :meth:`merge_` and :meth:`all_reduce_` are
    exact."""

    def __init__(self) -> None:
        self.reset()

    def _init_states(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget everything accumulated."""
        self._states = self._init_states()

    def states(self) -> dict[str, Tensor]:
        """The state tensors (sums), e.g. for checkpointing."""
        return dict(self._states)

    def _on(self, device: torch.device) -> dict[str, Tensor]:
        first = next(iter(self._states.values()))
        if first.device != device:
            self._states = {k: v.to(device) for k, v in self._states.items()}
        return self._states

    def merge_(self, other: Accumulator) -> Accumulator:
        """Add another accumulator's states (same type and configuration) into this one."""
        if type(other) is not type(self):
            raise ValueError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        for k, v in self._states.items():
            o = other._states[k]
            if o.shape != v.shape:
                raise ValueError(f"state {k!r} shapes differ: {tuple(v.shape)} vs {tuple(o.shape)}")
            v.add_(o.to(v.device))
        return self

    def all_reduce_(self) -> Accumulator:
        """Sum the states over torch.distributed ranks (a no-op without a process group)."""
        if dist.is_available() and dist.is_initialized():
            for v in self._states.values():
                dist.all_reduce(v, op=dist.ReduceOp.SUM)
        return self

    def compute(self) -> Any:
        raise NotImplementedError


def _check_same_shape(what: str, pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"{what}: prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}"
        )


def _class_predictions(what: str, pred: Tensor, target: Tensor, num_classes: int | None) -> Tensor:
    """Labels from ``pred``: class scores with the class axis at dim 1 (one more dim than
    the target) are arg-maxed; integer labels of the target's shape are used as they are."""
    if pred.dim() == target.dim() + 1:
        if num_classes is not None and pred.shape[1] != num_classes:
            raise ValueError(f"{what}: scores have {pred.shape[1]} classes, expected {num_classes}")
        labels = pred.argmax(1)
    else:
        if pred.is_floating_point():
            raise ValueError(
                f"{what}: got floating-point predictions of the target's shape "
                f"{tuple(pred.shape)}; pass class scores [N, C, ...] or integer labels"
            )
        labels = pred
    _check_same_shape(what, labels, target)
    return labels.long()


class ConfusionMatrix(Accumulator):
    """Segmentation confusion matrix pooled over a split → mIoU and pixel accuracy.

    ``update(pred, target)``: ``pred`` class scores [B, C, H, W] (arg-maxed over dim 1) or
    labels [B, H, W]; ``target`` labels [B, H, W] with values in 0…C−1, or < 0 for void
    (NYUv2/Cityscapes −1), which is excluded everywhere. A target label ≥ C raises (usually a
    wrong ``num_classes``, e.g. Cityscapes ``label_19`` read with 7 classes) — the references
    silently drop such pixels.

    ``compute()`` → ``{"miou", "pixel_acc"}`` as fractions (×100 for the papers' tables).
    IoU_c = TP/(TP + FP + FN) from the matrix; mIoU averages the classes that occur in the
    targets or predictions. The references (mtan ``ConfMatrix``, LibMTL ``SegMetric``) take a
    plain mean, which is NaN when a class never occurs; on the full test sets every class
    occurs and the two agree."""

    def __init__(self, num_classes: int) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.num_classes = num_classes
        super().__init__()

    def _init_states(self) -> dict[str, Tensor]:
        C = self.num_classes
        return {"matrix": torch.zeros(C, C, dtype=torch.int64)}  # rows: target, cols: pred

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        C = self.num_classes
        labels = _class_predictions("ConfusionMatrix", pred, target, C)
        target = target.long()
        valid = target >= 0
        t, p = target[valid], labels[valid]
        if t.numel() and int(t.max()) >= C:
            raise ValueError(
                f"ConfusionMatrix: target label {int(t.max())} >= num_classes={C}; void pixels "
                "must be negative (−1)"
            )
        if p.numel() and (int(p.min()) < 0 or int(p.max()) >= C):
            raise ValueError(f"ConfusionMatrix: predicted labels must be in [0, {C - 1}]")
        st = self._on(target.device)
        st["matrix"] += torch.bincount(t * C + p, minlength=C * C).view(C, C)

    def iou(self) -> Tensor:
        """Per-class IoU (float64; NaN for classes absent from targets and predictions)."""
        h = self._states["matrix"].double().cpu()
        tp = h.diagonal()
        union = h.sum(0) + h.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))

    def compute(self) -> dict[str, float]:
        h = self._states["matrix"].double().cpu()
        total = h.sum()
        if total == 0:
            raise ValueError("ConfusionMatrix.compute(): no valid pixels were accumulated")
        iou = self.iou()
        return {
            "miou": float(iou[~iou.isnan()].mean()),
            "pixel_acc": float(h.diagonal().sum() / total),
        }


_REDUCTIONS = ("pooled", "batch_mean")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(_REDUCTIONS)}, got {reduction!r}")


def _valid_pixels(target: Tensor) -> Tensor:
    """[B, H, W] mask of pixels whose ground truth is not all-zero across channels."""
    if target.dim() == 4:
        return (target != 0).any(1)
    if target.dim() == 3:
        return target != 0
    raise ValueError(f"expected a [B, C, H, W] or [B, H, W] target, got {tuple(target.shape)}")


class DepthErrors(Accumulator):
    """Absolute error |p − g| and relative error |p − g| / |g| over valid pixels (g ≠ 0).

    ``update(pred, target)``: same shapes, [B, 1, H, W] or [B, H, W]. NYUv2 depth is in
    metres, Cityscapes (MTAN release) holds inverse depth; 0 = missing in both.
    ``compute()`` → ``{"abs_err", "rel_err"}``. ``reduction``: see the module docstring;
    with ``"batch_mean"`` a batch without valid pixels is skipped (the references would
    produce NaN)."""

    def __init__(self, reduction: str = "pooled") -> None:
        _check_reduction(reduction)
        self.reduction = reduction
        super().__init__()

    def _init_states(self) -> dict[str, Tensor]:
        # pooled: error sums over pixels and the pixel count; batch_mean: sums of per-batch
        # means and the batch count.
        return {
            "sums": torch.zeros(2, dtype=torch.float64),
            "count": torch.zeros((), dtype=torch.int64),
        }

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        _check_same_shape("DepthErrors", pred, target)
        valid = _valid_pixels(target)
        if target.dim() == 4:
            if target.shape[1] != 1:
                raise ValueError(f"DepthErrors: expected one depth channel, got {target.shape[1]}")
            pred, target = pred[:, 0], target[:, 0]
        p, g = pred[valid].double(), target[valid].double()
        err = (p - g).abs()
        sums = torch.stack([err.sum(), (err / g.abs()).sum()])
        n = valid.sum()
        st = self._on(target.device)
        if self.reduction == "pooled":
            st["sums"] += sums
            st["count"] += n
        elif int(n) > 0:
            st["sums"] += sums / n
            st["count"] += 1

    def compute(self) -> dict[str, float]:
        n = int(self._states["count"])
        if n == 0:
            raise ValueError("DepthErrors.compute(): no valid pixels were accumulated")
        s = self._states["sums"].cpu() / n
        return {"abs_err": float(s[0]), "rel_err": float(s[1])}


#: angle thresholds (degrees) of the "within t°" normal metrics
NORMAL_THRESHOLDS = (11.25, 22.5, 30.0)


class NormalErrors(Accumulator):
    """Angle between predicted and true surface normals over valid pixels, in degrees.

    ``update(pred, target)``: [B, 3, H, W] each. The prediction is L2-normalised per pixel
    (the reference models already output unit normals; LibMTL's metric normalises too); the
    ground truth is unit length with the zero vector meaning missing. (mtan/LibMTL test
    ``channel-sum != 0``, which differs only for a valid normal whose components sum to
    exactly zero.) Angles are computed in float64.

    ``compute()`` → ``{"mean", "median", "within_11.25", "within_22.5", "within_30"}`` —
    angles in degrees, the "within" values as fractions of valid pixels (strict ``<``, as
    the references).

    ``reduction="pooled"`` keeps exact sums for the mean and the threshold counts and a
    histogram of angles with ``bin_width`` degrees (default 0.001°) for the median, which is
    read off with linear interpolation inside a bin and averages the two middle ranks for an
    even count (``np.median``'s rule): exact up to ``bin_width``. ``"batch_mean"`` averages
    each batch's exact mean/median/fractions over batches (mtan, CAGrad, nash-mtl)."""

    def __init__(self, reduction: str = "pooled", bin_width: float = 1e-3) -> None:
        _check_reduction(reduction)
        if not (isinstance(bin_width, (int, float)) and 0 < bin_width <= 1):
            raise ValueError(f"bin_width must be in (0, 1] degrees, got {bin_width!r}")
        self.reduction = reduction
        self.bin_width = float(bin_width)
        self.num_bins = int(math.ceil(180.0 / self.bin_width))
        super().__init__()

    def _init_states(self) -> dict[str, Tensor]:
        k = len(NORMAL_THRESHOLDS)
        if self.reduction == "pooled":
            return {
                "angle_sum": torch.zeros((), dtype=torch.float64),
                "within": torch.zeros(k, dtype=torch.int64),
                "count": torch.zeros((), dtype=torch.int64),
                "hist": torch.zeros(self.num_bins, dtype=torch.int64),
            }
        # per-batch [mean, median, within...] summed over batches, and the batch count
        return {
            "sums": torch.zeros(2 + k, dtype=torch.float64),
            "count": torch.zeros((), dtype=torch.int64),
        }

    @staticmethod
    def angles(pred: Tensor, target: Tensor) -> Tensor:
        """Angles (degrees, float64, 1-D) at the valid pixels of a [B, 3, H, W] pair."""
        _check_same_shape("NormalErrors", pred, target)
        if target.dim() != 4 or target.shape[1] != 3:
            raise ValueError(f"NormalErrors: expected [B, 3, H, W], got {tuple(target.shape)}")
        valid = _valid_pixels(target)
        p = pred.double().permute(0, 2, 3, 1)[valid]
        g = target.double().permute(0, 2, 3, 1)[valid]
        p = p / p.norm(dim=1, keepdim=True).clamp_min(1e-12)
        cos = (p * g).sum(1).clamp(-1.0, 1.0)
        return torch.rad2deg(torch.acos(cos))

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        a = self.angles(pred, target)
        thr = torch.tensor(NORMAL_THRESHOLDS, dtype=a.dtype, device=a.device)
        below = (a.unsqueeze(1) < thr).sum(0)
        st = self._on(target.device)
        if self.reduction == "pooled":
            st["angle_sum"] += a.sum()
            st["within"] += below
            st["count"] += a.numel()
            idx = (a / self.bin_width).long().clamp_(0, self.num_bins - 1)
            st["hist"] += torch.bincount(idx, minlength=self.num_bins)
        elif a.numel() > 0:
            n = a.numel()
            stats = torch.cat([torch.stack([a.mean(), _median(a)]), below.double() / n])
            st["sums"] += stats
            st["count"] += 1

    def _hist_rank(self, hist: Tensor, cum: Tensor, k: int) -> float:
        """Value of the k-th smallest angle (0-based), interpolated inside its bin."""
        b = int(torch.searchsorted(cum, torch.tensor(k, dtype=cum.dtype), right=True))
        before = int(cum[b - 1]) if b > 0 else 0
        inside = int(hist[b])
        return (b + (k - before + 0.5) / inside) * self.bin_width

    def compute(self) -> dict[str, float]:
        names = [f"within_{t:g}" for t in NORMAL_THRESHOLDS]
        st = {k: v.cpu() for k, v in self._states.items()}
        n = int(st["count"])
        if n == 0:
            raise ValueError("NormalErrors.compute(): no valid pixels were accumulated")
        if self.reduction == "batch_mean":
            s = (st["sums"] / n).tolist()
            return {"mean": s[0], "median": s[1], **dict(zip(names, s[2:]))}
        hist = st["hist"]
        cum = hist.cumsum(0)
        if n % 2:
            median = self._hist_rank(hist, cum, n // 2)
        else:
            median = 0.5 * (
                self._hist_rank(hist, cum, n // 2 - 1) + self._hist_rank(hist, cum, n // 2)
            )
        within = (st["within"].double() / n).tolist()
        return {"mean": float(st["angle_sum"]) / n, "median": median, **dict(zip(names, within))}


def _median(x: Tensor) -> Tensor:
    """``np.median`` of a 1-D tensor (mean of the two middle values for an even count)."""
    s = x.sort().values
    n = s.numel()
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


class Accuracy(Accumulator):
    """Classification accuracy (fraction correct) pooled over a split.

    ``update(pred, target)``: ``pred`` logits/scores [N, C] (arg-maxed over dim 1) or labels
    [N]; ``target`` labels [N]."""

    def _init_states(self) -> dict[str, Tensor]:
        return {
            "correct": torch.zeros((), dtype=torch.int64),
            "count": torch.zeros((), dtype=torch.int64),
        }

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        labels = _class_predictions("Accuracy", pred, target, None)
        st = self._on(target.device)
        st["correct"] += (labels == target.long()).sum()
        st["count"] += target.numel()

    def compute(self) -> float:
        n = int(self._states["count"])
        if n == 0:
            raise ValueError("Accuracy.compute(): no samples were accumulated")
        return int(self._states["correct"]) / n


class BinaryF1(Accumulator):
    """F1 of binary labels from TP/FP/FN pooled over a split (FAMO ``CelebaMetrics``).

    ``update(pred, target)``: ``pred`` probabilities (or logits with ``from_logits=True``),
    positive when ``> threshold`` (strict, as FAMO's ``gt(0.5)``); ``target`` in {0, 1}.
    Shapes [N] (``num_labels=None``) or [N, K] (``num_labels=K``, one F1 per column, e.g.
    CelebA's 40 attributes). F1 = 2TP / (2TP + FP + FN); when TP + FP + FN = 0 (no positive
    labels and none predicted) it is 0, as FAMO's ε-guarded formula and sklearn's default
    ``zero_division`` give. ``compute()`` → float, or a list of K floats."""

    def __init__(
        self, num_labels: int | None = None, threshold: float = 0.5, from_logits: bool = False
    ) -> None:
        if num_labels is not None and (
            isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1
        ):
            raise ValueError(f"num_labels must be None or a positive integer, got {num_labels!r}")
        if not from_logits and not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold on probabilities must be in (0, 1), got {threshold!r}")
        self.num_labels = num_labels
        self.threshold = float(threshold)
        self.from_logits = from_logits
        super().__init__()

    def _init_states(self) -> dict[str, Tensor]:
        k = 1 if self.num_labels is None else self.num_labels
        return {name: torch.zeros(k, dtype=torch.int64) for name in ("tp", "fp", "fn")}

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        _check_same_shape("BinaryF1", pred, target)
        want = 1 if self.num_labels is None else 2
        if pred.dim() != want or (want == 2 and pred.shape[1] != self.num_labels):
            exp = "[N]" if want == 1 else f"[N, {self.num_labels}]"
            raise ValueError(f"BinaryF1: expected shape {exp}, got {tuple(pred.shape)}")
        if not ((target == 0) | (target == 1)).all():
            raise ValueError("BinaryF1: targets must be 0 or 1 (CelebA's ±1 must be mapped first)")
        prob = torch.sigmoid(pred) if self.from_logits else pred
        p = (prob > self.threshold).reshape(pred.shape[0], -1)
        t = target.bool().reshape(pred.shape[0], -1)
        st = self._on(target.device)
        st["tp"] += (p & t).sum(0)
        st["fp"] += (p & ~t).sum(0)
        st["fn"] += (~p & t).sum(0)

    def compute(self) -> float | list[float]:
        tp, fp, fn = (self._states[k].double().cpu() for k in ("tp", "fp", "fn"))
        denom = 2 * tp + fp + fn
        f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))
        return float(f1[0]) if self.num_labels is None else f1.tolist()


class MeanAbsoluteError(Accumulator):
    """Mean absolute error pooled over samples, optionally per target column.

    ``update(pred, target)``: shapes [N] (``num_targets=None``) or [N, K]. ``scale`` (a float
    or K floats) multiplies the errors before averaging: QM9's target std de-normalisation
    and eV→meV (×1000) conversions. ``compute()`` → float, or a list of K floats."""

    def __init__(
        self, num_targets: int | None = None, scale: float | Sequence[float] = 1.0
    ) -> None:
        if num_targets is not None and (
            isinstance(num_targets, bool) or not isinstance(num_targets, int) or num_targets < 1
        ):
            raise ValueError(f"num_targets must be None or a positive integer, got {num_targets!r}")
        k = 1 if num_targets is None else num_targets
        s = torch.as_tensor(scale, dtype=torch.float64).reshape(-1)
        if s.numel() == 1:
            s = s.expand(k).clone()
        if s.numel() != k or not torch.isfinite(s).all():
            raise ValueError(f"scale must be a finite float or {k} finite floats, got {scale!r}")
        self.num_targets = num_targets
        self.scale = s
        super().__init__()

    def _init_states(self) -> dict[str, Tensor]:
        k = 1 if self.num_targets is None else self.num_targets
        return {
            "abs_sum": torch.zeros(k, dtype=torch.float64),
            "count": torch.zeros((), dtype=torch.int64),
        }

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        _check_same_shape("MeanAbsoluteError", pred, target)
        want = 1 if self.num_targets is None else 2
        if pred.dim() != want or (want == 2 and pred.shape[1] != self.num_targets):
            exp = "[N]" if want == 1 else f"[N, {self.num_targets}]"
            raise ValueError(f"MeanAbsoluteError: expected shape {exp}, got {tuple(pred.shape)}")
        err = (pred.double() - target.double()).abs().reshape(pred.shape[0], -1)
        st = self._on(target.device)
        st["abs_sum"] += err.sum(0)
        st["count"] += pred.shape[0]

    def compute(self) -> float | list[float]:
        n = int(self._states["count"])
        if n == 0:
            raise ValueError("MeanAbsoluteError.compute(): no samples were accumulated")
        mae = self._states["abs_sum"].cpu() * self.scale / n
        return float(mae[0]) if self.num_targets is None else mae.tolist()
