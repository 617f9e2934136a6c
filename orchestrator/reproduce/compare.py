"""Published vs reproduced, from a results directory alone.

For every row and metric: the printed value, the reproduced mean ± sample std over seeds
(each run's ``split="reported"`` numbers, converted to the printed units with the column's
``scale``), the difference, the difference in units of the seed std and in % of the printed
value, and a verdict; for the table's Δ (Δm or Δp): the printed value, the value recomputed
from the printed metrics, and the reproduced per-seed Δ's mean ± std; the Kendall τ between
the published and reproduced Δ order of the rows.

The verdict rule (``docs/reproduce.md §The comparison and the verdict rule``): with σ the seed
standard deviation of the reproduction — or the paper's own spread as a std (SEM × √seeds)
when it prints a larger one — and r half a unit of the last printed digit,

    within noise   if |reproduced mean − published| ≤ 2σ + r
    better / worse otherwise, by the metric's direction
    n/a            with fewer than 2 reproduced seeds (no σ), or nothing printed

A row's verdict is its Δ verdict when the paper prints Δ; otherwise the metrics': within noise
if all are, better/worse if every metric outside the noise points the same way, else mixed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.reproduce.tables import (
    DELTA_KINDS,
    STL,
    Column,
    Row,
    Table,
    Value,
    column_values,
    spread_as_std,
)

K_SIGMA = 2.0
RULE = ("within noise if |reproduced − published| ≤ 2σ + r, σ = the reproduction's seed std "
        "(or the paper's printed spread as a std, if larger), r = half a unit of the last "
        "printed digit; otherwise better/worse by the metric's direction; n/a with < 2 seeds")


# ---------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b (ties in either ranking handled), as ``scipy.stats.kendalltau``:
    (C − D) / √((n0 − n1)(n0 − n2)) over all pairs; NaN if a ranking is constant."""
    if len(x) != len(y):
        raise ValueError(f"kendall_tau: {len(x)} vs {len(y)} values")
    conc = disc = tx = ty = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            a, b = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            if a == 0 and b == 0:
                continue
            if a == 0:
                tx += 1
            elif b == 0:
                ty += 1
            elif a == b:
                conc += 1
            else:
                disc += 1
    denom = math.sqrt((conc + disc + tx) * (conc + disc + ty))
    return (conc - disc) / denom if denom > 0 else math.nan


@dataclass
class Cmp:
    """One published-vs-reproduced comparison (a metric of a row, or its Δ)."""

    published: Value
    values: list[float]  # reproduced, per seed, in printed units
    higher_is_better: bool
    decimals: int | None
    paper_std: float | None = None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None

    @property
    def std(self) -> float | None:
        return float(np.std(self.values, ddof=1)) if self.n >= 2 else None

    @property
    def diff(self) -> float | None:
        if self.mean is None or self.published.value is None:
            return None
        return self.mean - self.published.value

    @property
    def sigma(self) -> float | None:
        if self.std is None:
            return None
        return max(self.std, self.paper_std or 0.0)

    @property
    def z(self) -> float | None:
        """The difference in units of the reproduction's seed std."""
        if self.diff is None or not self.std:
            return None
        return self.diff / self.std

    @property
    def pct(self) -> float | None:
        if self.diff is None or not self.published.value:
            return None
        return 100.0 * self.diff / abs(self.published.value)

    @property
    def verdict(self) -> str:
        if self.diff is None or self.sigma is None:
            return "n/a"
        r = 0.5 * 10.0 ** (-self.decimals) if self.decimals is not None else 0.0
        if abs(self.diff) <= K_SIGMA * self.sigma + r:
            return "within noise"
        return "better" if (self.diff > 0) == self.higher_is_better else "worse"


def row_verdict(delta: Cmp | None, metrics: Sequence[Cmp]) -> str:
    if delta is not None and delta.published.value is not None:
        return delta.verdict
    vs = [m.verdict for m in metrics if m.verdict != "n/a"]
    if not vs:
        return "n/a"
    out = {v for v in vs if v != "within noise"}
    if not out:
        return "within noise"
    return out.pop() if len(out) == 1 else "mixed"


# ---------------------------------------------------------------------------------------
# reading the results directory
# ---------------------------------------------------------------------------------------


def read_results(root: str | Path, notes: list[str] | None = None
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, reported metric rows) of a results directory, read through the results
    store's reader (the one place that knows the layout); files it cannot read are skipped
    and named in ``notes``."""
    import inspect

    from orchestrator.reproduce.grid import import_first
    from orchestrator.results.storage import open_storage

    store = import_first("orchestrator.results.store", "orchestrator.results")
    if open_storage(root).kind("runs") != "dir":  # a directory or a URI (s3://...)
        raise ValueError(f"{str(root)!r} is not an mtlx results directory (no runs/ inside); "
                         "fix: pass the --out directory of `mtlx run` or `mtlx reproduce`")
    problems: list[Any] = []
    extra = {"problems": problems} if "problems" in inspect.signature(store.read_table).parameters else {}
    runs = store.read_table(root, "runs", **extra)
    metrics = store.read_table(root, "metrics", **extra)
    if notes is not None:
        notes += [f"skipped an unreadable results file: {p.path} ({p.reason}); rerun that run "
                  "with --rerun" for p in problems]
    rep = metrics[metrics.split == "reported"][["run_id", "task", "metric", "value"]]
    return runs, rep


def _json(text: Any) -> dict[str, Any]:
    if text is None or (isinstance(text, float) and math.isnan(text)) or text == "":
        return {}
    return json.loads(text) if isinstance(text, str) else dict(text)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def match_rows(table: Table, runs: pd.DataFrame) -> tuple[dict[str, list[str]], list[str]]:
    """{row id: run ids} of the finished runs that reproduce each row, and notes.

    A run matches a row when benchmark and method agree and so does every hyperparameter,
    benchmark option and training option that the table sets anywhere (unset ones compare
    with their defaults); options the table never mentions (epochs, a smoke run's width) are
    not compared — :func:`compare` notes the protocol the matched runs used. When several
    configurations match a row, the one with the most seeds is used."""
    from orchestrator.reproduce.grid import runnable_rows

    rows, _, _ = runnable_rows(table)
    ok = runs[(runs.benchmark == table.benchmark) & (runs.status == "finished")]
    if "search_id" in ok.columns:
        ok = ok[ok.search_id.fillna("").astype(str) == ""]
    bench_keys = set(table.experiment.get("bench_options") or {}) | {
        k for r in table.rows for k in r.bench_options}
    train_keys = set(table.experiment.get("train") or {}) | {k for r in table.rows for k in r.train}
    out: dict[str, list[str]] = {}
    notes = []
    for row in rows:
        groups: dict[tuple, list[str]] = {}
        for run in ok[ok.method == row.method].itertuples():
            if _matches(table, row, run, bench_keys, train_keys):
                groups.setdefault(_setting(run), []).append(run.run_id)
        if not groups:
            continue
        best = max(groups.values(), key=len)
        out[row.id] = _one_per_seed(ok, best)
        if len(out[row.id]) < len(best):
            notes.append(f"row {row.id}: several runs of one seed with the same setting (run "
                         "ids differ, e.g. made by different mtlx versions); the latest is used")
        if len(groups) > 1:
            notes.append(f"row {row.id}: {len(groups) - 1} other configuration(s) in the "
                         "results also match it; the one with the most runs is used")
    return out, notes


def _one_per_seed(runs: pd.DataFrame, ids: list[str]) -> list[str]:
    """The most recently finished run of each (seed, stl task) among ``ids``."""
    sub = runs[runs.run_id.isin(ids)].copy()
    sub["_task"] = sub["stl_task"].fillna("") if "stl_task" in sub.columns else ""
    if "finished_at" in sub.columns:
        sub = sub.sort_values("finished_at", na_position="first")
    return list(sub.drop_duplicates(["seed", "_task"], keep="last").run_id)


#: runs-table columns that define a run's setting apart from its seed and STL task (the
#: config hash also covers the task, which would split one stl row into one group per task)
SETTING = ("hparams", "bench_options", "model_options", "trainer_options", "epochs", "steps",
           "batch_size", "optimizer", "lr", "weight_decay", "lr_schedule", "selection",
           "average_last", "max_steps_per_epoch", "max_eval_batches", "level", "head_update")


def _setting(run: Any) -> tuple:
    return tuple(str(getattr(run, c, None)) for c in SETTING)


def _matches(table: Table, row: Row, run: Any, bench_keys: set, train_keys: set) -> bool:
    import envs

    if row.method != STL:
        import methods

        defaults = methods.hparam_fields(row.method)
        hp = _json(run.hparams)
        keys = {k for r in table.rows if r.method == row.method for k in r.hparams}
        for k in keys:
            want = row.hparams.get(k, defaults.get(k))
            if not _same(hp.get(k, defaults.get(k)), want):
                return False
    opts = _json(run.bench_options)
    class_defaults = dict(getattr(envs.get_class(table.benchmark), "options", {}) or {})
    base = dict(table.experiment.get("bench_options") or {})
    for k in bench_keys:
        want = row.bench_options.get(k, base.get(k, class_defaults.get(k)))
        if not _same(opts.get(k, class_defaults.get(k)), want):
            return False
    base_train = dict(table.experiment.get("train") or {})
    for k in train_keys:
        want = row.train.get(k, base_train.get(k))
        have = getattr(run, k, None)
        if want is not None and not _same(have, want):
            return False
    return True


# ---------------------------------------------------------------------------------------
# the comparison
# ---------------------------------------------------------------------------------------


@dataclass
class RowResult:
    row: Row
    metrics: list[Cmp]
    delta: Cmp | None
    delta_printed_values: float | None  # Δ recomputed from the printed metric values
    seeds: list[int]
    verdict: str


@dataclass
class Comparison:
    table: Table
    rows: list[RowResult]
    tau: float | None
    tau_n: int
    tau_basis: str
    notes: list[str] = field(default_factory=list)


def _delta_fn(kind: str):
    from envs.metrics import delta_m, delta_p

    if kind == "delta_m":
        return delta_m
    if kind == "delta_p":
        return delta_p
    return lambda r, ref, spec: -delta_m(r, ref, spec)


def _per_seed(table: Table, run_ids: Sequence[str], runs: pd.DataFrame,
              rep: pd.DataFrame) -> dict[int, dict[str, dict[str, float]]]:
    """{seed: {task: {metric: value in printed units}}} of a row's runs (stl runs of one
    seed combine their tasks); only seeds with every column are kept."""
    scale = {(c.task, c.metric): c.scale for c in table.columns}
    meta = runs.set_index("run_id")
    out: dict[int, dict[str, dict[str, float]]] = {}
    for r in rep[rep.run_id.isin(run_ids)].itertuples():
        if (r.task, r.metric) in scale:
            seed = int(meta.loc[r.run_id, "seed"])
            out.setdefault(seed, {}).setdefault(r.task, {})[r.metric] = (
                float(r.value) * scale[(r.task, r.metric)])
    return {s: v for s, v in sorted(out.items())
            if all(c.metric in v.get(c.task, {}) for c in table.columns)}


def compare(table: Table, root: str | Path, row_runs: Mapping[str, Sequence[str]] | None = None
            ) -> Comparison:
    """The side-by-side comparison of ``table`` with the results under ``root``; rows are
    found by :func:`match_rows` unless ``row_runs`` ({row id: run ids}) is given."""
    from orchestrator.reproduce.grid import runnable_rows

    notes: list[str] = []
    runs, rep = read_results(root, notes)
    if row_runs is None:
        row_runs, matched = match_rows(table, runs)
        notes += matched
    notes += _protocol_notes(runs, [i for ids in row_runs.values() for i in ids])
    _, blocked, _ = runnable_rows(table)
    printed = column_values(table, table.rows)
    seeds = {rid: _per_seed(table, ids, runs, rep) for rid, ids in row_runs.items()}
    ref_values = _reference(table, seeds, notes)
    fn = _delta_fn(table.delta_kind) if table.delta_kind not in (None, "paper") else None
    results = []
    for row in table.rows:
        if row in blocked:
            continue
        per = seeds.get(row.id, {})
        cmps = []
        for i, c in enumerate(table.columns):
            pub = printed[row.id][i] if printed[row.id] else Value(None)
            dec = row.decimals[i] if row.decimals else c.decimals
            paper_std = (pub.spread if row.per_seed is not None
                         else spread_as_std(pub, table.spread, len(table.seeds)))
            cmps.append(Cmp(pub, [v[c.task][c.metric] for v in per.values()],
                            c.higher_is_better, dec, paper_std))
        delta, recomputed = None, None
        if table.delta_kind is not None and row.id != table.reference:
            vals = _deltas(fn, list(per.values()), ref_values, table, notes) if fn else []
            hib = bool(table.delta_higher_is_better)
            delta = Cmp(row.delta, vals, hib, table.delta_decimals,
                        spread_as_std(row.delta, table.spread, len(table.seeds)))
            ref_printed = table.printed(table.row(table.reference)) if table.reference else None
            mine = table.printed(row)
            if fn and mine and ref_printed:
                recomputed = fn(mine, ref_printed, table.spec)
        results.append(RowResult(row, cmps, delta, recomputed, sorted(per),
                                 row_verdict(delta, cmps)))
    tau, n, basis = _tau(results)
    return Comparison(table, results, tau, n, basis, notes)


def _protocol_notes(runs: pd.DataFrame, ids: Sequence[str]) -> list[str]:
    """What the compared runs were trained with (a smoke run's numbers mean nothing)."""
    used = runs[runs.run_id.isin(ids)]
    if used.empty:
        return []
    parts = []
    for col in ("epochs", "batch_size", "lr", "max_steps_per_epoch"):
        if col in used.columns:
            vals = sorted({str(v) for v in used[col] if v is not None and not pd.isna(v)})
            if vals:
                parts.append(f"{col} {'/'.join(vals)}")
    out = [f"compared runs: {len(used)}, trained with " + ", ".join(parts)] if parts else []
    if "max_steps_per_epoch" in used.columns and used.max_steps_per_epoch.notna().any():
        out.append("steps per epoch were capped (a smoke run): the numbers prove the pipeline, "
                   "not the paper")
    return out


def _deltas(fn: Any, per_seed: list, ref: Any, table: Table, notes: list[str]) -> list[float]:
    """Per-seed Δ against ``ref``; none (with a note) when the reference cannot divide — a
    smoke run's reference may score exactly 0."""
    if not ref:
        return []
    try:
        return [fn(v, ref, table.spec) for v in per_seed]
    except ValueError as e:
        note = f"no reproduced Δ: {e}"
        if note not in notes:
            notes.append(note)
        return []


def _reference(table: Table, seeds: Mapping[str, Mapping[int, Any]], notes: list[str]
               ) -> dict[str, dict[str, float]] | None:
    """The Δ reference in printed units: the reproduced reference row (mean over its seeds)
    when the paper trained it, else its printed values."""
    if table.reference is None:
        return None
    ref = table.row(table.reference)
    if table.reference_runs:
        per = list(seeds.get(ref.id, {}).values())
        if not per:
            notes.append(f"no finished runs of the reference row {ref.id!r} yet: no reproduced Δ")
            return None
        from envs.metrics import average_results

        return average_results(per)
    values = table.printed(ref)
    if values is None:
        notes.append(f"the reference row {ref.id!r} has no printed values: no reproduced Δ")
    return values


def _tau(results: Sequence[RowResult]) -> tuple[float | None, int, str]:
    """Kendall τ of published vs reproduced Δ over the rows that have both (the printed Δ
    column, or, where the paper prints none, Δ recomputed from its printed values)."""
    for basis, get in (("printed Δ", lambda r: r.delta.published.value),
                       ("Δ recomputed from the printed values", lambda r: r.delta_printed_values)):
        pairs = [(get(r), r.delta.mean) for r in results
                 if r.delta is not None and get(r) is not None and r.delta.mean is not None]
        if len(pairs) >= 2:
            return kendall_tau([p for p, _ in pairs], [q for _, q in pairs]), len(pairs), basis
    return None, 0, ""


def delta_name(table: Table) -> str:
    return {"delta_m": "Δm%", "delta_p": "Δp%", "delta_m_improvement": "−Δm%",
            "paper": "Δ (paper)"}.get(table.delta_kind or "", "Δ")


def describe_delta(table: Table) -> str:
    return DELTA_KINDS[table.delta_kind][0] if table.delta_kind else "no Δ column"


def column_label(c: Column) -> str:
    return c.key + (f" (×{c.scale:g})" if c.scale != 1 else "")
