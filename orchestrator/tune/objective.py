"""The trial objective: which validation number a trial reports (Δm, loss, a metric, RL
success), computed per evaluation and combined as the protocol selects the reported numbers."""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config import (
    ConfigError,
    RunConfig,
    StorageConfig,
)

OBJECTIVE = "objective"  # the key Tune, ASHA and Optuna optimise


TIME_ATTR = "epochs_done"  # ASHA's time axis (survives trial restarts, unlike iterations)


#: objectives of RL benchmarks (kind "rl"): the mean over tasks of the evaluation episodes'
#: success / return (maximised); ``val/<task>/<metric>`` is also accepted
RL_METRICS = ("val_success", "val_return")


@dataclass
class Objective:
    """The trial objective from each evaluation's report (docs/tune.md §2).

    Lives in the trial process (W = 1) or in the Train controller's report callback
    (W ≥ 2); ``values`` maps epoch → metric value, so a resumed trial can be preloaded from
    the Parquet rows its earlier attempt wrote."""

    metric: str
    mode: str
    selection: str
    average_last: int
    spec: dict[str, list[Any]]  # {task: [envs.Metric]}
    reference: dict[str, dict[str, float]] | None
    out: str
    run_id: str
    values: dict[int, float] = field(default_factory=dict)
    split: str = "val"  # the metric rows' split: "val", or "eval" for RL benchmarks
    storage: StorageConfig = field(default_factory=StorageConfig)  # how to reach ``out``

    def value(self, epoch: int, val: Mapping[str, Mapping[str, float]] | None) -> float | None:
        """The metric at one evaluation; ``val`` = {task: {metric: value}} (None: read the
        run's Parquet rows of that epoch)."""
        if self.metric == "val_loss" or val is None:
            val = epoch_values(self.out, self.run_id, epoch, self.split, self.storage)
        if not val:
            return None
        if self.metric in RL_METRICS:  # mean over tasks of the evaluation episodes
            name = self.metric.removeprefix("val_")
            got = [val[t][name] for t in self.spec if name in val.get(t, {})]
            return sum(got) / len(got) if len(got) == len(self.spec) else None
        if self.metric == "val_delta_m":
            from envs.metrics import delta_m

            return delta_m({t: val[t] for t in self.spec}, self.reference, self.spec)
        if self.metric == "val_loss":
            losses = [val[t]["loss"] for t in self.spec if "loss" in val.get(t, {})]
            return sum(losses) / len(losses) if losses else None
        _, task, name = self.metric.split("/", 2)
        return val.get(task, {}).get(name)

    def current(self) -> float | None:
        if not self.values:
            return None
        vals = [self.values[e] for e in sorted(self.values)]
        if self.selection == "best_val":
            return min(vals) if self.mode == "min" else max(vals)
        last = vals[-max(1, self.average_last):]
        return sum(last) / len(last)

    def update(self, report: Mapping[str, Any]) -> dict[str, Any]:
        """The report with ``objective`` (once there is one) and ``epochs_done`` added."""
        epoch = int(report["epoch"])
        val: dict[str, dict[str, float]] = {}
        for k, v in report.items():
            if k.startswith("val/") and k.count("/") == 2:
                _, task, name = k.split("/")
                val.setdefault(task, {})[name] = float(v)
        v = self.value(epoch, val or None)
        if v is not None and math.isfinite(v):
            self.values[epoch] = float(v)
        # Tune sees validation and training numbers only: nothing can be selected on test
        out = {k: v for k, v in report.items() if not k.startswith("test")}
        out.update({TIME_ATTR: epoch + 1, "run_id": self.run_id})
        cur = self.current()
        if cur is not None:
            out[OBJECTIVE] = cur
        return out

    def preload(self) -> int | None:
        """Feed the evaluations already in the Parquet data; returns the last epoch seen."""
        rows = run_metric_rows(self.out, self.run_id, self.storage)
        if rows is None:
            return None
        val = rows[rows.split == self.split]
        if self.split == "eval":  # the RL trainer's step-0 evaluation is never reported
            val = val[(val.step > 0) & (val.task != "")]
        for epoch in sorted(set(val.epoch)):
            v = self.value(int(epoch), _nested(val[val.epoch == epoch]))
            if v is not None and math.isfinite(v):
                self.values[int(epoch)] = float(v)
        return int(val.epoch.max()) if len(val) else None


def _nested(rows: Any) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for task, metric, value in zip(rows.task, rows.metric, rows.value):
        out.setdefault(task, {})[metric] = float(value)
    return out


def run_metric_rows(out: str | Path, run_id: str, storage: StorageConfig | None = None):
    """One run's metric rows (pandas) or None."""
    import pyarrow.dataset as ds

    from orchestrator.results import METRIC_SCHEMA
    from orchestrator.results.storage import open_storage

    s = open_storage(out, storage)
    files = [f for f in s.files(f"metrics/{run_id}", recursive=False)
             if f.endswith(".parquet") and not f.rpartition("/")[2].startswith(".")]
    if not files:
        return None
    paths, fs = s.dataset_source(files)
    return ds.dataset(paths, schema=METRIC_SCHEMA, format="parquet", filesystem=fs
                      ).to_table().to_pandas()


def epoch_values(out: str | Path, run_id: str, epoch: int, split: str = "val",
                 storage: StorageConfig | None = None) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} of the validation rows one evaluation wrote (incl. ``loss``;
    ``split="eval"``: an RL evaluation's per-task rows)."""
    rows = run_metric_rows(out, run_id, storage)
    if rows is None:
        return {}
    sel = rows[(rows.split == split) & (rows.epoch == epoch)]
    return _nested(sel[sel.task != ""] if split == "eval" else sel)


def metric_choices(bench: Any) -> tuple[list[str], str | None]:
    """(valid --metric values, why val_delta_m is unavailable or None)."""
    from envs.metrics import delta_m

    spec = dict(bench.metrics)
    if bench.kind == "rl":
        why = (f"{bench.name!r} is an RL benchmark: it is scored by evaluation episodes, not by "
               "a validation split's loss or Δm")
        return [*RL_METRICS, *(f"val/{t}/{m.name}" for t, ms in spec.items() for m in ms)], why
    names = []
    why = None
    ref = bench.stl_reference
    if ref is None:
        why = (f"benchmark {bench.name!r} has no single-task reference for these options "
               "(Δm needs one)")
    else:
        try:
            delta_m({t: dict(ref[t]) for t in spec}, ref, spec)
            names.append("val_delta_m")
        except (KeyError, ValueError) as e:
            why = f"the single-task reference of {bench.name!r} does not cover every metric ({e})"
    names.append("val_loss")
    names += [f"val/{t}/{m.name}" for t, ms in spec.items() for m in ms]
    return names, why


def resolve_metric(metric: str | None, bench: Any) -> tuple[str, str]:
    """(metric, mode), or ``ConfigError`` listing the valid metrics."""
    names, why = metric_choices(bench)
    rl = bench.kind == "rl"
    if metric is None:
        metric = RL_METRICS[0] if rl else "val_delta_m" if "val_delta_m" in names else "val_loss"
    if metric not in names:
        if metric == "val_delta_m" or (rl and metric == "val_loss"):
            msg = f"--metric {metric} is not available: {why}"
        elif metric in RL_METRICS:
            msg = (f"--metric {metric} is for RL benchmarks (mean evaluation {metric[4:]}); "
                   f"{bench.name!r} is supervised")
        elif metric.startswith("test"):
            msg = (f"--metric {metric!r} would select hyperparameters on the test split, "
                   "which mtlx never does")
        else:
            close = difflib.get_close_matches(metric, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            msg = f"unknown --metric {metric!r}{hint}"
        raise ConfigError(f"{msg}; valid metrics for {bench.name!r}: {', '.join(names)}")
    if metric.startswith("val/"):
        _, task, name = metric.split("/", 2)
        hib = next(m.higher_is_better for m in bench.metrics[task] if m.name == name)
        return metric, "max" if hib else "min"
    return metric, "max" if metric in RL_METRICS else "min"


def rl_evaluations(run: RunConfig) -> int:
    """How many evaluations an RL run makes (ASHA's ``max_t``): one every ``eval_every``
    loop steps, one at the end, plus the untrained one at step 0 (``eval_at_start``)."""
    from orchestrator.trainers.rl import sac_config

    scfg = sac_config(run)
    return -(-scfg.steps // scfg.eval_every) + int(scfg.eval_at_start)
