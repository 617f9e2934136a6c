"""Reports for reinforcement-learning benchmarks (MT10, MT1): success tables and curves.

Reads only the Parquet results (``orchestrator.results``) written by the RL trainer
(:mod:`orchestrator.trainers.rl`):
``split="reported"`` rows (``mean_success_final``, ``mean_success_best`` per run; per task
``success`` at the final evaluation) and ``split="eval"`` rows (``mean_success`` and per-task
``success`` at every evaluation).

Table, per method group (runs with the same method and config hash, i.e. differing only in
the seed; as :mod:`orchestrator.report.tables`): the final and the best-over-training mean success as
mean ± SEM over seeds (SEM = sample std / √n, the statistic CAGrad/Nash-MTL/FAMO report for
MT10; docs/metaworld.md §5), the fraction of seeds that learned — best mean
success ≥ ``learned_threshold`` (default 0.2: on MT10 at least two tasks solved at some
evaluation; Meta-World issue #352 reports seeds that learn nothing) — and each task's final
success averaged over seeds. Curves: mean success over seeds (± SEM) against loop steps, for
the mean and for every task, and each loss's task weights.

:func:`orchestrator.report.tables.report_text` and :func:`orchestrator.report.plots.plot_all`
call :func:`render` and :func:`plot` for the benchmarks :func:`rl_benchmarks` claims.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.report.common import group_label, save_png

LEARNED_THRESHOLD = 0.2


def rl_benchmarks(res: Any, benchmark: str | None = None) -> list[str]:
    """Benchmarks in ``res`` whose runs wrote RL evaluation rows (``mean_success``)."""
    m = res.metrics
    ids = set(m.run_id[(m.split == "eval") & (m.metric == "mean_success")])
    runs = res.runs[res.runs.run_id.isin(ids)]
    names = sorted(set(runs.benchmark))
    return [b for b in names if benchmark is None or b == benchmark]


def _sem(xs: Sequence[float]) -> float:
    a = np.asarray(xs, dtype=float)
    return float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else math.nan


def _finished(res: Any, b: str) -> pd.DataFrame:
    runs = res.runs[(res.runs.benchmark == b) & (res.runs.status == "finished")]
    counts = runs.groupby("method").config_hash.nunique()
    runs = runs.assign(label=[group_label(r.method, r.hparams, counts.get(r.method, 1) > 1)
                              for r in runs.itertuples()])
    return runs


def summarize(res: Any, benchmark: str, learned_threshold: float = LEARNED_THRESHOLD
              ) -> pd.DataFrame:
    """One row per method group of ``benchmark`` (finished runs), best final mean first."""
    runs = _finished(res, benchmark)
    rep = res.metrics[(res.metrics.split == "reported") & res.metrics.run_id.isin(runs.run_id)]
    tasks = json.loads(runs.tasks.dropna().iloc[0]) if runs.tasks.notna().any() else []
    rows = []
    for (label, chash), g in runs.groupby(["label", "config_hash"]):
        r = rep[rep.run_id.isin(g.run_id)]

        def per_run(metric: str, task: str = "", r: pd.DataFrame = r,
                    ids: pd.Series = g.run_id) -> list[float]:
            sel = r[(r.metric == metric) & (r.task == task)]
            return sel.groupby("run_id").value.first().reindex(ids).tolist()

        final, best = per_run("mean_success_final"), per_run("mean_success_best")
        if any(math.isnan(x) for x in final + best):
            continue  # a finished run without reported rows: nothing to show
        row: dict[str, Any] = {
            "method": label, "config_hash": chash, "seeds": len(g),
            "seed_list": ",".join(str(s) for s in sorted(g.seed)),
            "final_mean": float(np.mean(final)), "final_sem": _sem(final),
            "best_mean": float(np.mean(best)), "best_sem": _sem(best),
            "learned": int(sum(x >= learned_threshold for x in best)),
            "learned_fraction": float(np.mean([x >= learned_threshold for x in best])),
        }
        for t in tasks:
            row[f"{t}/success"] = float(np.nanmean(per_run("success", t)))
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values(["final_mean", "best_mean"], ascending=False, kind="stable")
        frame.insert(0, "rank", range(1, len(frame) + 1))
        frame = frame.reset_index(drop=True)
    return frame


def _pm(mean: float, sem: float) -> str:
    return f"{mean:.3f}" + ("" if not math.isfinite(sem) else f" ± {sem:.3f}")


def format_markdown(benchmark: str, frame: pd.DataFrame,
                    learned_threshold: float = LEARNED_THRESHOLD) -> str:
    tasks = [c[: -len("/success")] for c in frame.columns if c.endswith("/success")]
    head = ["rank", "method", "seeds", "final success ↑", "best success ↑", "learned"]
    head += [t.removesuffix("-v3") for t in tasks]
    lines = [
        f"### {benchmark}: success rate", "",
        "- mean ± SEM over seeds of the mean success over tasks: at the final evaluation and "
        "the best evaluation during training (CAGrad/Nash-MTL report the best, FAMO the final)",
        f"- learned: seeds whose best mean success is ≥ {learned_threshold}; task columns: "
        "final success averaged over seeds",
        "", "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if h == "method" else "---:" for h in head) + "|",
    ]
    for r in frame.to_dict("records"):
        cells = [str(r["rank"]), r["method"], str(r["seeds"]), _pm(r["final_mean"], r["final_sem"]),
                 _pm(r["best_mean"], r["best_sem"]), f"{r['learned']}/{r['seeds']}"]
        cells += [f"{r[f'{t}/success']:.2f}" for t in tasks]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render(res: Any, benchmark: str | None = None, fmt: str = "markdown",
           learned_threshold: float = LEARNED_THRESHOLD) -> str:
    """The RL tables of ``res`` (all RL benchmarks, or only ``benchmark``); "" if none."""
    out = []
    for b in rl_benchmarks(res, benchmark):
        frame = summarize(res, b, learned_threshold)
        if frame.empty:
            continue
        if fmt == "csv":
            out.append(frame.assign(benchmark=b).to_csv(index=False))
        else:
            out.append(format_markdown(b, frame, learned_threshold))
    return "\n".join(out)


def curves(res: Any, benchmark: str) -> pd.DataFrame:
    """Evaluation curves: label, task ("" = mean over tasks), step, mean, sem, seeds."""
    runs = _finished(res, benchmark)
    m = res.metrics
    ev = m[(m.split == "eval") & m.run_id.isin(runs.run_id)
           & m.metric.isin(["mean_success", "success"])]
    ev = ev.assign(label=ev.run_id.map(dict(zip(runs.run_id, runs.label))))
    g = ev.groupby(["label", "task", "step"]).value
    out = pd.DataFrame({"mean": g.mean(), "sem": g.std(ddof=1) / np.sqrt(g.count()),
                        "seeds": g.count()}).reset_index()
    return out.sort_values(["label", "task", "step"], kind="stable").reset_index(drop=True)


def plot(res: Any, out_dir: str | Path, benchmark: str | None = None) -> list[Path]:
    """Success curves (mean and per task) and per-loss task weights as PNGs; returns paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for b in rl_benchmarks(res, benchmark):
        c = curves(res, b)
        if c.empty:
            continue
        tasks = [""] + sorted(set(c.task) - {""}, key=lambda t: list(c.task).index(t))
        n = len(tasks)
        cols = min(4, n)
        rows = math.ceil(n / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
        flat = list(axes.ravel())
        for ax in flat[n:]:
            ax.set_visible(False)
        for ax, task in zip(flat, tasks):
            for label, g in c[c.task == task].groupby("label"):
                ax.plot(g.step, g["mean"], marker="o", ms=2, lw=1, label=label)
                sem = g["sem"].fillna(0)
                ax.fill_between(g.step, g["mean"] - sem, g["mean"] + sem, alpha=0.15)
            ax.set_title("mean over tasks" if task == "" else task, fontsize=9)
            ax.set_ylim(-0.05, 1.05)
            ax.set_xlabel("loop step", fontsize=8)
        flat[0].set_ylabel("success", fontsize=8)
        flat[0].legend(fontsize=7)
        written.append(save_png(plt, fig, out / f"{b}_success.png"))

        d = res.diagnostics
        runs = _finished(res, b)
        d = d[d.run_id.isin(runs.run_id) & d.quantity.str.endswith(".weight")]
        if not d.empty:
            d = d.assign(label=d.run_id.map(dict(zip(runs.run_id, runs.label))),
                         loss=d.quantity.str.split(".").str[0])
            panels = sorted(d.groupby(["label", "loss"]).groups)
            fig, axes = plt.subplots(len(panels), 1, figsize=(6, 2.2 * len(panels)),
                                     squeeze=False)
            for ax, (label, loss) in zip(axes[:, 0], panels):
                sel = d[(d.label == label) & (d.loss == loss)]
                for task, g in sel.groupby("task", sort=False):
                    s = g.groupby("step").value.mean()
                    ax.plot(s.index, s.values, lw=1, label=task.removesuffix("-v3"))
                ax.set_title(f"{label}: {loss} task weights", fontsize=9)
            axes[0, 0].legend(fontsize=6, ncol=5)
            written.append(save_png(plt, fig, out / f"{b}_sac_weights.png"))
    return written
