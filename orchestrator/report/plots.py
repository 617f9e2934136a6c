"""PNG plots from a results directory: learning curves, task weights, gradient norms and
cosines (:func:`plot`), and every family's plots (:func:`plot_all`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from orchestrator.config import STL
from orchestrator.report import rl
from orchestrator.report.common import grid, group_label, save_png
from orchestrator.report.tables import MAX_METRIC_COLUMNS, Results, metrics_spec


def plot_all(res: Results, out_dir: str | Path, benchmark: str | None = None,
             run_ids: Sequence[str] | None = None) -> list[Path]:
    """Every plot of ``res``: :func:`plot` for Δm benchmarks, the families' own otherwise."""
    files, claimed = [], set()
    names = rl.rl_benchmarks(res, benchmark)  # RL families have their own plots
    claimed.update(names)
    for b in names:
        files += rl.plot(res, out_dir, b)
    for b in ([benchmark] if benchmark else sorted(set(res.runs.benchmark))):
        if b not in claimed:
            files += plot(res, out_dir, b, run_ids)
    return files


# ---------------------------------------------------------------------------------------


def _labels(runs: pd.DataFrame) -> dict[str, str]:
    """run_id → method-group label (as in the table)."""
    counts = runs[runs.method != STL].groupby("method").config_hash.nunique()
    out = {}
    for r in runs.itertuples():
        out[r.run_id] = group_label(r.method, r.hparams, counts.get(r.method, 1) > 1)
    return out


def _mean_curve(df: pd.DataFrame, x: str) -> pd.DataFrame:
    g = df.groupby(x).value
    return pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1)}).reset_index()


def _runs(res: Results, b: str, run_ids: Sequence[str] | None) -> pd.DataFrame:
    runs = res.runs[(res.runs.benchmark == b) & (res.runs.method != STL)]
    return runs if run_ids is None else runs[runs.run_id.isin(run_ids)]


def learning_curves(res: Results, b: str, run_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Benchmark ``b``'s learning curves, mean and std over each group's seeds per epoch:
    the train loss of every task, then every (task, metric) on val (or test when there is
    no val split); at most ``2 * MAX_METRIC_COLUMNS`` panels. Columns: split, task, metric
    (the panel), label (the method group, as in the table), epoch, mean, std."""
    runs = _runs(res, b, run_ids)
    labels = _labels(runs)
    m = res.metrics[res.metrics.run_id.isin(runs.run_id)]
    m = m.assign(label=m.run_id.map(labels))
    spec = metrics_spec(runs)
    split = "val" if (m.split == "val").any() else "test"
    panels = [("train", t, "loss") for t in spec]
    panels += [(split, t, mm.name) for t, ms in spec.items() for mm in ms]
    parts = []
    for sp, task, metric in panels[: 2 * MAX_METRIC_COLUMNS]:
        sel = m[(m.split == sp) & (m.task == task) & (m.metric == metric)]
        for label, g in sel.groupby("label"):
            c = _mean_curve(g, "epoch")
            parts.append(c.assign(split=sp, task=task, metric=metric, label=label))
    cols = ["split", "task", "metric", "label", "epoch", "mean", "std"]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def panels_of(curves: pd.DataFrame) -> list[tuple[str, str, str]]:
    """The (split, task, metric) panels of :func:`learning_curves`, in order."""
    return list(dict.fromkeys(zip(curves.split, curves.task, curves.metric)))


def labelled_diagnostics(res: Results, b: str,
                         run_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Benchmark ``b``'s diagnostics rows with the method-group ``label`` of their run."""
    runs = _runs(res, b, run_ids)
    d = res.diagnostics[res.diagnostics.run_id.isin(runs.run_id)]
    return d.assign(label=d.run_id.map(_labels(runs)))


def plot(res: Results, out_dir: str | Path, benchmark: str | None = None,
         run_ids: Sequence[str] | None = None) -> list[Path]:
    """Write PNG plots per benchmark into ``out_dir``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for b in ([benchmark] if benchmark else sorted(set(res.runs.benchmark))):
        curves = learning_curves(res, b, run_ids)
        d = labelled_diagnostics(res, b, run_ids)
        # 1. learning curves: every (task, metric) on val (or test) and the train loss
        panels = panels_of(curves)
        if panels:
            fig, axes = grid(plt, len(panels))
            for ax, (sp, task, metric) in zip(axes, panels):
                sel = curves[(curves.split == sp) & (curves.task == task)
                             & (curves.metric == metric)]
                for label, c in sorted(sel.groupby("label"), key=lambda kv: kv[0]):
                    ax.plot(c.epoch + 1, c["mean"], marker="o", ms=3, label=label)
                    ax.fill_between(c.epoch + 1, c["mean"] - c["std"].fillna(0),
                                    c["mean"] + c["std"].fillna(0), alpha=0.15)
                ax.set_title(f"{task} {metric} ({sp})", fontsize=9)
                ax.set_xlabel("epoch", fontsize=8)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes[0].legend(fontsize=7)
            written.append(save_png(plt, fig, out / f"{b}_curves.png"))
        # 2-4. diagnostics: weights, gradient norms, pairwise cosines, one panel per method
        for quantity, title, fname in (("weight", "task weights", "weights"),
                                       ("grad_norm", "per-task gradient norm", "grad_norms"),
                                       ("cosine", "pairwise gradient cosine", "cosines")):
            sel = d[d.quantity == quantity]
            if sel.empty:
                continue
            groups = sorted(sel.groupby("label"), key=lambda kv: kv[0])
            fig, axes = grid(plt, len(groups))
            for ax, (label, g) in zip(axes, groups):
                if quantity == "cosine":
                    g = g.assign(key=g.task + "·" + g.other_task)
                    if g.key.nunique() > 6:  # many tasks: the mean and the minimum over pairs
                        per = g.groupby(["run_id", "step"]).value
                        for stat in ("mean", "min"):
                            s = getattr(per, stat)().reset_index().groupby("step").value.mean()
                            ax.plot(s.index, s.values, label=f"{stat} over pairs")
                        g = g.iloc[0:0]
                else:
                    g = g.assign(key=g.task)
                for key, gg in g.groupby("key"):
                    c = _mean_curve(gg, "step")
                    ax.plot(c.step, c["mean"], label=key, lw=1)
                ax.set_title(label, fontsize=9)
                ax.set_xlabel("step", fontsize=8)
                if g.key.nunique() <= 10:
                    ax.legend(fontsize=6)
            fig.suptitle(f"{b}: {title}", fontsize=10)
            written.append(save_png(plt, fig, out / f"{b}_{fname}.png"))
    return written
