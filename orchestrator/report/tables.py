"""Reports from a results directory alone: ranked tables (mean ± std over seeds, Δm%, Δp%)
and PNG plots (learning curves, task weights, gradient norms and cosines).

Everything here reads the Parquet tables (``orchestrator.results``); nothing needs the
benchmark code or the runs' processes.

Which numbers: each finished run's ``split="reported"`` rows (its protocol's selection —
best validation score or the mean of the last k evaluations — made by the trainer). Runs are
grouped by (method, config hash), i.e. identical settings that differ only in the seed; a
group's row shows every metric as mean ± sample std over its seeds, and Δm%/Δp% computed per
seed then averaged (``envs.metrics.delta_m`` / ``delta_p``: docs/delta_m.md §1).

Benchmark families whose numbers need their own table are reported by their own module,
which claims its benchmarks from the data (:mod:`orchestrator.report.rl`: success rates,
mean ± SEM, fraction of seeds that learned); :func:`report_text` and
:func:`orchestrator.report.plots.plot_all` combine both.

The reference for Δm/Δp: ``stl`` runs of the same benchmark in the same results directory
when they cover every task (per task, the mean over their seeds), otherwise the benchmark's
published single-task reference recorded in the runs table, otherwise none (then the table
is ranked by the mean rank over metrics). Ranking: Δm ascending (lower is better).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from envs.base import Metric
from envs.metrics import delta_m, delta_p
from orchestrator.config import STL, StorageConfig
from orchestrator.report import rl
from orchestrator.report.common import group_label
from orchestrator.results import ResultsStore, Unreadable, read_table
from orchestrator.results.storage import Storage, open_storage

MAX_METRIC_COLUMNS = 12


@dataclass
class Results:
    runs: pd.DataFrame
    metrics: pd.DataFrame
    diagnostics: pd.DataFrame
    #: files skipped because they do not read (each says which file, why, and the fix)
    problems: list[Unreadable] = field(default_factory=list)

    @classmethod
    def load(cls, root: str | Path | Storage, *, include_trials: bool = False,
             storage: StorageConfig | None = None) -> Results:
        """The results under ``root`` (a directory or a URI such as ``s3://bucket/exp``,
        reached with ``storage``). Search trials (runs with a ``search_id``, written by
        ``mtlx tune``) are left out unless ``include_trials``: their sampled hyperparameters
        differ from run to run, so they do not belong in a method-vs-method table."""
        root = open_storage(root, storage)
        if root.kind("runs") != "dir":
            raise ValueError(f"{root.show()!r} is not an mtlx results directory (no runs/ "
                             "inside); fix: pass the --out location of `mtlx run`")
        problems: list[Unreadable] = []
        runs = read_table(root, "runs", problems)
        metrics = read_table(root, "metrics", problems)
        diags = read_table(root, "diagnostics", problems)
        if len(runs):  # `running` without a live writer: killed (SIGKILL, a lost node);
            store = ResultsStore(root)  # Tune trials have no lease (Tune tracks them)
            rows = runs[["run_id", "status", "search_id"]].to_dict("records")
            lost = [(pd.isna(r["search_id"]) or r["search_id"] == "") and store.is_lost(r)
                    for r in rows]
            runs.loc[lost, "status"] = "lost"
        if not include_trials and "search_id" in runs.columns and len(runs):
            trial = runs["search_id"].fillna("").astype(str) != ""
            keep = set(runs.loc[~trial, "run_id"])
            runs = runs[~trial]
            metrics = metrics[metrics["run_id"].isin(keep)] if len(metrics) else metrics
            diags = diags[diags["run_id"].isin(keep)] if len(diags) else diags
        return cls(runs, metrics, diags, problems)


@dataclass
class Table:
    """One benchmark's ranked summary."""

    benchmark: str
    frame: pd.DataFrame  # one row per method group, machine-readable (means, stds)
    metric_columns: list[tuple[str, str, bool | None]]  # (task, metric, higher_is_better)
    reference_source: str | None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------
# computing the tables
# ---------------------------------------------------------------------------------------


def metrics_spec(runs: pd.DataFrame) -> dict[str, list[Metric]]:
    """The full {task: [Metric]} of a benchmark, from its non-STL runs' metrics_spec."""
    spec: dict[str, list[Metric]] = {}
    for text in runs["metrics_spec"].dropna():
        for task, ms in json.loads(text).items():
            have = {m.name for m in spec.setdefault(task, [])}
            spec[task] += [Metric(n, bool(h)) for n, h in ms if n not in have]
    return spec


def _values(rows: pd.DataFrame) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for r in rows.itertuples():
        out.setdefault(r.task, {})[r.metric] = float(r.value)
    return out


def _stl_reference(stl_runs: pd.DataFrame, reported: pd.DataFrame,
                   spec: dict[str, list[Metric]]) -> tuple[dict | None, str | None]:
    if stl_runs.empty:
        return None, None
    rows = reported[reported.run_id.isin(stl_runs.run_id)]
    ref: dict[str, dict[str, float]] = {}
    for (task, metric), g in rows.groupby(["task", "metric"]):
        ref.setdefault(task, {})[metric] = float(g.value.mean())
    if not all(task in ref and all(m.name in ref[task] for m in ms) for task, ms in spec.items()):
        return None, None
    seeds = sorted(set(stl_runs.seed))
    return ref, f"stl runs in this results directory (seeds {', '.join(map(str, seeds))})"


def summarize(res: Results, benchmark: str | None = None,
              run_ids: Sequence[str] | None = None, exclude: Sequence[str] = ()) -> list[Table]:
    """One :class:`Table` per benchmark (or only ``benchmark``), optionally restricted to
    ``run_ids`` (STL runs of the benchmark are always used as the reference)."""
    tables = []
    names = sorted(set(res.runs.benchmark)) if benchmark is None else [benchmark]
    names = [b for b in names if b not in exclude]
    for b in names:
        runs = res.runs[res.runs.benchmark == b]
        if runs.empty:
            raise ValueError(f"no runs of benchmark {b!r} in these results; present: "
                             f"{sorted(set(res.runs.benchmark))}")
        tables.append(_summarize_one(res, b, runs, run_ids))
    return tables


def _summarize_one(res: Results, b: str, runs: pd.DataFrame,
                   run_ids: Sequence[str] | None) -> Table:
    notes = []
    finished = runs[runs.status == "finished"]
    stl_runs = finished[finished.method == STL]
    chosen = runs if run_ids is None else runs[runs.run_id.isin(run_ids) | (runs.method == STL)]
    unfinished = chosen[chosen.status != "finished"]
    for r in unfinished.itertuples():
        notes.append(f"not in the table: {r.run_id} ({r.status}"
                     + (f": {r.error}" if isinstance(r.error, str) and r.error else "") + ")")
    chosen = chosen[chosen.status == "finished"]
    reported = res.metrics[(res.metrics.split == "reported") & res.metrics.run_id.isin(runs.run_id)]
    spec = metrics_spec(finished[finished.method != STL]) or metrics_spec(finished)
    reference, source = _reference(finished, stl_runs, reported, spec, notes)
    groups = _groups(chosen, reported, spec, notes)
    columns = [(t, m.name, m.higher_is_better) for t, ms in spec.items() for m in ms]
    frame = _ranked(groups, columns, spec, reference)
    if reference is None:
        notes.append("no single-task reference (run `--methods stl` or use a benchmark with a "
                     "published one): ranked by mean rank over metrics, no Δm/Δp")
    sel = finished[finished.method != STL]
    if len(sel):
        notes.insert(0, f"reported numbers: selection={sel.selection.iloc[0]}, "
                        f"average_last={sel.average_last.iloc[0]}, "
                        f"epochs={sel.epochs.iloc[0]}")
    return Table(b, frame, columns, source, notes)


def _reference(finished: pd.DataFrame, stl_runs: pd.DataFrame, reported: pd.DataFrame,
               spec: dict[str, list[Metric]], notes: list[str]) -> tuple[dict | None, str | None]:
    """The Δm reference: STL runs here, else the published one in the runs table, else None."""
    reference, source = _stl_reference(stl_runs, reported, spec)
    if reference is None:
        pub = finished.stl_reference.dropna()
        if len(pub):
            reference = json.loads(pub.iloc[0])
            src = finished.stl_reference_source.dropna()
            source = "published single-task reference" + (f" ({src.iloc[0]})" if len(src) else "")
    if reference is not None:
        try:  # a reference that lacks some metric cannot be used
            delta_m(reference, reference, spec)
        except ValueError as e:
            notes.append(f"Δm/Δp not computed: {e}")
            reference, source = None, None
    return reference, source


def _groups(chosen: pd.DataFrame, reported: pd.DataFrame, spec: dict[str, list[Metric]],
            notes: list[str]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Finished runs with reported rows, by (method, config hash); STL runs of one seed
    combine into one "model per task" entry."""
    per_run = []
    for r in chosen.itertuples():
        vals = _values(reported[reported.run_id == r.run_id])
        if not vals:
            notes.append(f"not in the table: {r.run_id} (finished, but no reported rows)")
            continue
        per_run.append({"run": r, "values": vals})
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    stl_seeds: dict[int, dict[str, dict[str, float]]] = {}
    for pr in per_run:
        r = pr["run"]
        if r.method == STL:
            stl_seeds.setdefault(r.seed, {}).update(pr["values"])
        else:
            groups.setdefault((r.method, r.config_hash), []).append(
                {"seed": r.seed, "values": pr["values"], "hparams": r.hparams})
    for seed, vals in stl_seeds.items():
        if all(t in vals for t in spec):
            groups.setdefault((STL, ""), []).append({"seed": seed, "values": vals, "hparams": "{}"})
    return groups


def _ranked(groups: dict[tuple[str, str], list[dict[str, Any]]],
            columns: list[tuple[str, str, bool | None]], spec: dict[str, list[Metric]],
            reference: dict | None) -> pd.DataFrame:
    """One row per group (means ± stds, Δm/Δp), ranked by Δm or else by mean rank."""
    methods_count: dict[str, int] = {}
    for m, _ in groups:
        methods_count[m] = methods_count.get(m, 0) + 1
    rows = []
    for (method, chash), members in groups.items():
        row: dict[str, Any] = {
            "method": group_label(method, members[0]["hparams"], methods_count[method] > 1),
            "config_hash": chash, "hparams": members[0]["hparams"],
            "seeds": len(members), "seed_list": ",".join(str(x["seed"]) for x in members),
        }
        if reference is not None:
            dms, dps = [], []
            for x in members:
                try:
                    dms.append(delta_m(x["values"], reference, spec))
                    dps.append(delta_p(x["values"], reference, spec))
                except ValueError:
                    dms.append(math.nan)
                    dps.append(math.nan)
            row.update(_mean_std("delta_m", dms))
            row.update(_mean_std("delta_p", dps))
        for task, metric, _ in columns:
            xs = [x["values"].get(task, {}).get(metric, math.nan) for x in members]
            row.update(_mean_std(f"{task}/{metric}", xs))
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        if reference is not None:
            frame = frame.sort_values("delta_m_mean", na_position="last", kind="stable")
        else:  # mean rank over metrics (1 = best)
            ranks = []
            for task, metric, hib in columns:
                col = frame[f"{task}/{metric}_mean"]
                ranks.append(col.rank(ascending=not hib, na_option="bottom"))
            frame["mean_rank"] = pd.concat(ranks, axis=1).mean(axis=1) if ranks else 0.0
            frame = frame.sort_values("mean_rank", kind="stable")
        frame.insert(0, "rank", range(1, len(frame) + 1))
        frame = frame.reset_index(drop=True)
    return frame


def _mean_std(name: str, xs: Sequence[float]) -> dict[str, float]:
    a = np.asarray(xs, dtype=float)
    ok = a[np.isfinite(a)]
    mean = float(ok.mean()) if len(ok) == len(a) and len(a) else math.nan
    std = float(ok.std(ddof=1)) if len(ok) == len(a) and len(a) > 1 else math.nan
    return {f"{name}_mean": mean, f"{name}_std": std}


# ---------------------------------------------------------------------------------------
# formatting
# ---------------------------------------------------------------------------------------


def _pm(mean: float, std: float, digits: str) -> str:
    """``mean ± std`` (std with 2 significant digits for ``g`` formats)."""
    if not math.isfinite(mean):
        return "nan"
    s = format(mean, digits)
    if not math.isfinite(std):
        return s
    return f"{s} ± {format(std, '.2g' if digits.endswith('g') else digits)}"


def format_markdown(t: Table) -> str:
    f = t.frame
    cols = t.metric_columns
    aggregate = len(cols) > MAX_METRIC_COLUMNS
    header = ["rank", "method", "seeds"]
    has_delta = "delta_m_mean" in f.columns
    if has_delta:
        header += ["Δm% ↓", "Δp% ↑"]
    arrow = {True: " ↑", False: " ↓", None: ""}
    if aggregate:  # many tasks (CelebA): the mean of each metric over tasks
        names = sorted({m for _, m, _ in cols})
        header += [f"mean {m}{arrow[next(h for _, mm, h in cols if mm == m)]}" for m in names]
    else:
        header += [f"{task} {metric}{arrow[h]}" for task, metric, h in cols]
    lines = [f"### {t.benchmark}", ""]
    if t.reference_source:
        lines.append(f"Δm% (lower is better) and Δp% (higher is better) against the {t.reference_source}.")
    lines += [f"- {n}" for n in t.notes]
    lines += ["", "| " + " | ".join(header) + " |",
              "|" + "|".join("---:" if h not in ("method",) else "---" for h in header) + "|"]
    for r in f.itertuples(index=False):
        d = r._asdict()
        cells = [str(d["rank"]), str(d["method"]), str(d["seeds"])]
        if has_delta:
            cells += [_pm(d["delta_m_mean"], d["delta_m_std"], ".2f"),
                      _pm(d["delta_p_mean"], d["delta_p_std"], ".2f")]
        if aggregate:
            for m in names:
                xs = [f.loc[f.method == d["method"], f"{task}/{mm}_mean"].iloc[0]
                      for task, mm, _ in cols if mm == m]
                cells.append(format(float(np.mean(xs)), ".4g"))
        else:
            for task, metric, _ in cols:
                row = f[f.method == d["method"]].iloc[0]
                cells.append(_pm(row[f"{task}/{metric}_mean"], row[f"{task}/{metric}_std"], ".4g"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_csv(t: Table) -> str:
    f = t.frame.copy()
    f.insert(0, "benchmark", t.benchmark)
    f["reference"] = t.reference_source
    return f.to_csv(index=False)


def render(tables: Sequence[Table], fmt: str = "markdown") -> str:
    if fmt not in ("markdown", "csv"):
        raise ValueError(f"format must be one of ['markdown', 'csv'], got {fmt!r}")
    if fmt == "csv":
        return "".join(format_csv(t) for t in tables)
    return "\n".join(format_markdown(t) for t in tables)


def report_text(res: Results, benchmark: str | None = None, fmt: str = "markdown",
                run_ids: Sequence[str] | None = None) -> str:
    """Every table of ``res`` (or of ``benchmark``): Δm tables and the special families'."""
    if benchmark is not None and benchmark not in set(res.runs.benchmark):
        raise ValueError(f"no runs of benchmark {benchmark!r} in these results; present: "
                         f"{sorted(set(res.runs.benchmark))}")
    parts, claimed = [], set()
    names = rl.rl_benchmarks(res, benchmark)  # RL families have their own tables
    claimed.update(names)
    text = rl.render(res, benchmark, fmt) if names else ""
    if text:
        parts.append(text)
    rest = [b for b in ([benchmark] if benchmark else sorted(set(res.runs.benchmark)))
            if b not in claimed]
    if rest:
        tables = [t for b in rest for t in summarize(res, b, run_ids)]
        parts.insert(0, render(tables, fmt))
    return ("\n" if fmt == "markdown" else "").join(p if p.endswith("\n") else p + "\n"
                                                    for p in parts)
