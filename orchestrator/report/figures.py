"""Paper-style figures for the HTML report, as inline ``data:image/png;base64`` URIs.

The numbers come from the report's own computations (:mod:`.plots` curve means,
:mod:`.rl` success curves, the search tables of :mod:`orchestrator.tune`); this module only
draws them. Every figure of one report takes its colours from one :class:`Palette`, built
once from every method group the report shows, so a method has the same colour in every
figure; single-task runs (``stl``) are always black. Axes carry labels with units where the
quantity has one (fractions, degrees, epochs, optimizer steps), and every multi-line panel
has a legend.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from orchestrator.config import STL

#: units of the metrics the benchmarks define (``envs``); others are shown by name only
UNITS = {
    "accuracy": "fraction", "acc": "fraction", "pixel_acc": "fraction", "miou": "fraction",
    "f1": "fraction", "success": "fraction", "mean_success": "fraction",
    "within_11.25": "fraction", "within_22.5": "fraction", "within_30": "fraction",
    "mean": "degrees", "median": "degrees",
}  # fmt: skip

#: qualitative colours (colour-blind-safe Okabe-Ito first, then tab10's)
#: (ordered so that neighbours differ in hue and lightness; no yellow: unreadable on white)
COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#8c564b",
           "#7f7f7f", "#bcbd22", "#17becf", "#9467bd", "#2ca02c", "#d62728", "#1f3a93"]


class Palette:
    """label → colour, fixed for one report: labels sorted, ``stl`` black, the rest in
    :data:`COLOURS` order (cycling with a dashed line style past the 14th)."""

    def __init__(self, labels: Iterable[str]) -> None:
        names = sorted({str(x) for x in labels} - {STL})
        self._index = {name: i for i, name in enumerate(names)}

    def colour(self, label: str) -> str:
        if label == STL:
            return "#000000"
        i = self._index.get(label)
        if i is None:  # not announced: a stable slot after the known ones
            i = len(self._index) + sum(map(ord, label))
        return COLOURS[i % len(COLOURS)]

    def style(self, label: str) -> dict[str, Any]:
        i = self._index.get(label, 0)
        return {"color": self.colour(label), "ls": "-" if i < len(COLOURS) else "--"}


def axis_label(metric: str) -> str:
    unit = UNITS.get(metric)
    return f"{metric} ({unit})" if unit else metric


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 7,
        "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
        "grid.alpha": 0.3, "lines.linewidth": 1.4, "legend.frameon": False,
    })  # fmt: skip
    return plt


def data_uri(plt: Any, fig: Any) -> str:
    """``fig`` as a PNG data URI (closed afterwards)."""
    buf = io.BytesIO()  # tight: the legend and suptitle outside the panels are kept
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight", pad_inches=0.08)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _grid(plt: Any, n: int, cols: int = 3, w: float = 3.4, h: float = 2.6) -> tuple[Any, list]:
    cols = min(cols, max(1, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _legend(fig: Any, axes: Sequence[Any], title: str = "method") -> None:
    """One legend for the whole figure, right of the panels (labels deduplicated)."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="center left", title=title,
                   bbox_to_anchor=(1.0, 0.5), fontsize=8, title_fontsize=8)


# ---------------------------------------------------------------------------------------
# supervised benchmarks
# ---------------------------------------------------------------------------------------


def learning_curves(curves: pd.DataFrame, palette: Palette, title: str) -> str | None:
    """Panels (split, task, metric) of mean ± std over seeds against epochs.
    ``curves``: :func:`orchestrator.report.plots.learning_curves`."""
    from orchestrator.report.plots import panels_of

    if curves.empty:
        return None
    plt = _plt()
    panels = panels_of(curves)
    fig, axes = _grid(plt, len(panels))
    for ax, (split, task, metric) in zip(axes, panels):
        sel = curves[(curves.split == split) & (curves.task == task) & (curves.metric == metric)]
        for label, c in sorted(sel.groupby("label"), key=lambda kv: kv[0]):
            x, m, s = c.epoch + 1, c["mean"], c["std"].fillna(0.0)
            ax.plot(x, m, marker="o", ms=3, label=label, **palette.style(label))
            ax.fill_between(x, m - s, m + s, alpha=0.15, color=palette.colour(label), lw=0)
        ax.set_title(f"{task} · {split}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss" if split == "train" else axis_label(metric))
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    fig.tight_layout()
    _legend(fig, axes)
    return data_uri(plt, fig)


def diagnostic(d: pd.DataFrame, quantity: str, palette: Palette, title: str,
               xlabel: str = "optimizer step") -> str | None:
    """One panel per task (weights, gradient norms) or task pair (cosines): every method's
    mean over seeds against the step, in the method's colour."""
    d = d[d.quantity == quantity]
    if d.empty:
        return None
    if quantity == "cosine":
        d = d.assign(key=d.task + " · " + d.other_task)
    else:
        d = d.assign(key=d.task)
    keys = list(dict.fromkeys(d.key))
    if len(keys) > 12:  # many tasks / pairs: the mean over them, one panel
        d = d.groupby(["label", "run_id", "step"]).value.mean().reset_index()
        d = d.assign(key=f"mean over {len(keys)} {'pairs' if quantity == 'cosine' else 'tasks'}")
        keys = [d.key.iloc[0]]
    ylabel = {"weight": "task weight", "grad_norm": "gradient norm (L2)",
              "cosine": "cosine similarity"}.get(quantity, quantity)
    plt = _plt()
    fig, axes = _grid(plt, len(keys))
    for ax, key in zip(axes, keys):
        sel = d[d.key == key]
        for label, g in sorted(sel.groupby("label"), key=lambda kv: kv[0]):
            s = g.groupby("step").value.mean()
            ax.plot(s.index, s.values, label=label, **palette.style(label))
        if quantity == "cosine":
            ax.axhline(0.0, color="0.5", lw=0.8, ls=":")
        ax.set_title(key)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    fig.suptitle(title)
    fig.tight_layout()
    _legend(fig, axes)
    return data_uri(plt, fig)


# ---------------------------------------------------------------------------------------
# RL, searches, reproductions
# ---------------------------------------------------------------------------------------


def success_curves(curves: pd.DataFrame, palette: Palette, title: str) -> str | None:
    """MT10/MT1 success (mean ± SEM over seeds) against loop steps: the mean over tasks
    first, then each task (``curves``: :func:`orchestrator.report.rl.curves`)."""
    if curves.empty:
        return None
    plt = _plt()
    tasks = [""] + [t for t in dict.fromkeys(curves.task) if t != ""]
    fig, axes = _grid(plt, len(tasks), cols=4, w=3.0, h=2.4)
    for ax, task in zip(axes, tasks):
        for label, g in curves[curves.task == task].groupby("label"):
            sem = g["sem"].fillna(0.0)
            ax.plot(g.step, g["mean"], marker="o", ms=2, label=label, **palette.style(label))
            ax.fill_between(g.step, g["mean"] - sem, g["mean"] + sem, alpha=0.15,
                            color=palette.colour(label), lw=0)
        ax.set_title("mean over tasks" if task == "" else task.removesuffix("-v3"))
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("success rate (fraction)")
    fig.suptitle(title)
    fig.tight_layout()
    _legend(fig, axes)
    return data_uri(plt, fig)


def search(trials: pd.DataFrame, summary: dict[str, Any], importance: dict[str, float],
           palette: Palette) -> str:
    """A search: each trial's objective (by status) with the running best, the default
    configuration's objective, and the Optuna importances."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2 if importance else 1, figsize=(9 if importance else 5, 3.2),
                             squeeze=False)
    ax = axes[0][0]
    t = trials.sort_values("trial_index")
    colour = palette.colour(str(summary["method"]))
    for status, marker in (("finished", "o"), ("stopped", "x"), ("failed", "s"),
                           ("nonfinite", "s")):
        sel = t[t.status == status]
        if len(sel):
            ax.scatter(sel.trial_index, sel.objective, marker=marker, color=colour,
                       label=f"trial ({status})", zorder=3)
    obj = t.objective.where(t.status == "finished")
    best = (obj.cummin() if summary["mode"] == "min" else obj.cummax()).ffill()
    ax.step(t.trial_index, best, where="post", color="k", label="best so far")
    if summary.get("default_objective") is not None:
        ax.axhline(summary["default_objective"], ls="--", color="0.5", label="default config")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("trial (order started)")
    unit = " (%)" if "delta" in str(summary["metric"]) else ""
    ax.set_ylabel(f"{summary['metric']}{unit}, validation")
    ax.set_title(f"{summary['method']} on {summary['benchmark']} ({summary['mode']}imised)")
    ax.legend()
    if importance:
        ax2 = axes[0][1]
        names = list(importance)[::-1]
        ax2.barh([n.removeprefix("train.") for n in names], [importance[n] for n in names],
                 color=colour)
        ax2.set_xlabel("importance (Optuna fANOVA, fraction of variance)")
        ax2.set_title("hyperparameter importance")
    fig.tight_layout()
    return data_uri(plt, fig)


def png_file(path: Any) -> str:
    """A PNG written by another report module (e.g. the reproduction plot) as a data URI."""
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")
