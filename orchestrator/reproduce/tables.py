"""Published tables as data: the YAML format, the loader and its validation.

One file per table under ``orchestrator/reproduce/tables/`` (the format:
``docs/reproduce.md §Table format``). :func:`load_table` parses a file into a :class:`Table`
and checks it against the live registries before anything runs:

* the benchmark exists (``envs.available()``) and every column names one of its metrics
  (tables whose benchmark or metrics mtlx lacks say so in ``needs`` and are loaded with
  their own column directions, listed by ``mtlx reproduce --list`` as not expressible);
* every method is an mtlx method (``methods.available()``, or ``stl``) and its
  hyperparameters are accepted by ``methods.create`` — except on rows that declare
  ``needs`` (an option, method or network mtlx does not have yet): such a row is kept,
  never run, and reported as "not expressible yet"; once ``methods.create`` accepts its
  hyperparameters the listing says so, and dropping ``needs`` puts it in the grid;
* every row has one value per column (number, ``null`` = not printed, ``"v ± s"``), or
  ``per_seed`` lists of that length; the Δ reference row exists.

Every error is a :class:`TableError` naming the file and the row. Values are stored in the
units the paper prints; ``scale`` per column converts: printed = scale × mtlx value (mIoU
printed 38.30 is 0.3830 in mtlx, so scale 100).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

STL = "stl"  # the pseudo-method of single-task runs (as in `mtlx run --methods stl`)
DELTA_KINDS = {
    # kind: (description, higher is better)
    "delta_m": ("Δm% = mean over metrics of the signed relative change (lower is better)", False),
    "delta_p": ("Δp% = task-level mean of the signed relative change (higher is better)", True),
    "delta_m_improvement": ("−Δm%: metric-level mean improvement (higher is better)", True),
    # printed as the paper defines it, never recomputed (the definition is not one of ours)
    "paper": ("the paper's own Δ (not recomputed)", None),
}
SPREADS = ("std", "sem", "unstated")
_PM = re.compile(r"^\s*([-+−]?[0-9.]+(?:e[-+]?\d+)?)\s*(?:±|\+-|\+/-)\s*([0-9.]+(?:e[-+]?\d+)?)\s*$")
_TOP_KEYS = {
    "id", "title", "paper", "table", "benchmark", "config", "experiment", "seeds", "spread",
    "selection", "columns", "delta", "rows", "notes", "needs", "cost", "expected",
}
_ROW_KEYS = {
    "id", "method", "hparams", "bench_options", "train", "values", "per_seed", "delta",
    "source", "misprint", "needs", "note", "decimals",
}


class TableError(ValueError):
    """A malformed published table; the message names the file and the row."""


@dataclass(frozen=True)
class Value:
    """One printed number (``None`` = not printed) with its printed spread, if any."""

    value: float | None
    spread: float | None = None

    def __str__(self) -> str:
        if self.value is None:
            return "—"
        return f"{self.value:g}" + (f" ± {self.spread:.3g}" if self.spread is not None else "")


@dataclass(frozen=True)
class Column:
    task: str
    metric: str
    higher_is_better: bool
    scale: float = 1.0  # printed = scale × mtlx value
    decimals: int | None = None  # printed decimals (rounding allowance of the verdict)

    @property
    def key(self) -> str:
        return f"{self.task}/{self.metric}"


@dataclass
class Row:
    id: str
    method: str
    hparams: dict[str, Any] = field(default_factory=dict)
    bench_options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    values: list[Value] = field(default_factory=list)
    per_seed: list[list[float]] | None = None
    delta: Value = Value(None)
    source: str | None = None
    misprint: str | None = None
    needs: str | None = None
    note: str | None = None
    decimals: list[int] | None = None  # per-column printed decimals where this row differs
    expressible: bool = True  # False: `needs` is still unmet in this install
    blocker: str | None = None  # why not, as methods.create or the table says

    @property
    def label(self) -> str:
        hp = ", ".join(f"{k}={v}" for k, v in sorted(self.hparams.items()))
        return f"{self.method}({hp})" if hp else self.method


@dataclass
class Table:
    id: str
    path: Path
    title: str
    paper: dict[str, Any]
    table: str
    benchmark: str | None
    experiment: dict[str, Any]
    seeds: list[int]
    spread: str
    selection: str
    columns: list[Column]
    delta_kind: str | None
    reference: str | None  # row id the Δ is computed against
    reference_runs: bool  # True: the reproduction trains the reference row itself
    delta_decimals: int | None
    delta_higher_is_better: bool | None
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    needs: str | None = None  # the whole table is not expressible in mtlx yet
    config: str | None = None
    cost: str | None = None
    expected: str | None = None

    def row(self, row_id: str) -> Row:
        for r in self.rows:
            if r.id == row_id:
                return r
        raise KeyError(f"table {self.id!r} has no row {row_id!r}; rows: {[r.id for r in self.rows]}")

    @property
    def spec(self) -> dict[str, list[Any]]:
        """{task: [envs.base.Metric]} of the columns (what Δm/Δp average over)."""
        from envs.base import Metric

        out: dict[str, list[Any]] = {}
        for c in self.columns:
            out.setdefault(c.task, []).append(Metric(c.metric, c.higher_is_better))
        return out

    def printed(self, row: Row) -> dict[str, dict[str, float]] | None:
        """The row's printed values as {task: {metric: value}} (None if any is missing)."""
        vals = row.values
        if row.per_seed is not None:
            vals = [Value(sum(col) / len(col)) for col in zip(*row.per_seed)]
        if not vals or any(v.value is None for v in vals):
            return None
        out: dict[str, dict[str, float]] = {}
        for c, v in zip(self.columns, vals):
            out.setdefault(c.task, {})[c.metric] = float(v.value)  # type: ignore[arg-type]
        return out


# ---------------------------------------------------------------------------------------
# discovery
# ---------------------------------------------------------------------------------------


def tables_dir() -> Path:
    """The folder of the shipped tables (inside the installed package)."""
    return Path(str(resources.files("orchestrator.reproduce") / "tables"))


def table_paths() -> dict[str, Path]:
    """{table id: file} of every shipped table; the id is the file name without ``.yaml``."""
    return {p.stem: p for p in sorted(tables_dir().glob("*.yaml"))}


def load_all() -> list[Table]:
    return [load_table(p) for p in table_paths().values()]


def get_table(table_id: str) -> Table:
    """The shipped table ``table_id`` (or a path to a table file)."""
    paths = table_paths()
    if table_id in paths:
        return load_table(paths[table_id])
    if table_id.endswith((".yaml", ".yml")) and Path(table_id).is_file():
        return load_table(table_id)
    import difflib

    close = difflib.get_close_matches(table_id, list(paths), n=3, cutoff=0.4)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise TableError(f"no published table {table_id!r}{hint}; `mtlx reproduce --list` lists "
                     f"them, or pass the path of a table file")


# ---------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------


def load_table(path: str | Path) -> Table:
    """Parse and validate one table file; :class:`TableError` names file and row."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise TableError(f"{path}: cannot read the table: {e}") from None
    if not isinstance(data, Mapping):
        raise TableError(f"{path}: a table file must hold a mapping at the top level")
    return _Parser(path, data).table()


class _Parser:
    def __init__(self, path: Path, data: Mapping[str, Any]) -> None:
        self.path, self.data = path, data

    def fail(self, msg: str, row: str | None = None) -> TableError:
        where = f"{self.path.name}" + (f", row {row!r}" if row is not None else "")
        return TableError(f"{where}: {msg}")

    def need(self, key: str) -> Any:
        if key not in self.data:
            raise self.fail(f"missing required key {key!r}")
        return self.data[key]

    def table(self) -> Table:
        d = self.data
        unknown = sorted(set(d) - _TOP_KEYS)
        if unknown:
            raise self.fail(f"unknown key(s) {unknown}; valid: {sorted(_TOP_KEYS)}")
        tid = str(self.need("id"))
        if tid != self.path.stem:
            raise self.fail(f"id {tid!r} must equal the file name {self.path.stem!r}")
        needs = d.get("needs")
        bench = d.get("benchmark")
        columns = self.columns(bench, needs)
        delta = self.delta()
        spread = str(d.get("spread", "unstated"))
        if spread not in SPREADS:
            raise self.fail(f"spread must be one of {list(SPREADS)}, got {spread!r}")
        seeds = d.get("seeds", 3)
        if not (isinstance(seeds, int) and seeds > 0) and not (
                isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)):
            raise self.fail(f"seeds must be a positive count or a list of integers, got {seeds!r}")
        seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
        if not isinstance(self.need("paper"), Mapping):
            raise self.fail("paper must be a mapping (title, authors, url)")
        t = Table(
            id=tid, path=self.path, title=str(self.need("title")), paper=dict(self.need("paper")),
            table=str(self.need("table")), benchmark=bench,
            experiment=dict(d.get("experiment") or {}), seeds=seeds, spread=spread,
            selection=str(self.need("selection")), columns=columns,
            delta_kind=delta[0], reference=delta[1], reference_runs=delta[2],
            delta_decimals=delta[3], delta_higher_is_better=delta[4], rows=[], notes=[str(n) for n in d.get("notes") or []],
            needs=needs, config=d.get("config"), cost=d.get("cost"), expected=d.get("expected"),
        )
        if bench is not None:
            t.experiment.setdefault("benchmark", bench)
            if t.experiment["benchmark"] != bench:
                raise self.fail("experiment.benchmark differs from benchmark")
        rows = self.need("rows")
        if not isinstance(rows, list) or not rows:
            raise self.fail("rows must be a non-empty list")
        seen: set[str] = set()
        for i, r in enumerate(rows):
            row = self.row(r, i, t)
            if row.id in seen:
                raise self.fail("duplicate row id", row.id)
            seen.add(row.id)
            t.rows.append(row)
        if t.reference is not None and t.reference not in seen:
            raise self.fail(f"delta.reference {t.reference!r} is not a row id; rows: {sorted(seen)}")
        return t

    def columns(self, bench: str | None, needs: str | None) -> list[Column]:
        cols = self.need("columns")
        if not isinstance(cols, list) or (not cols and needs is None):
            raise self.fail("columns must be a non-empty list")
        spec = None
        if bench is not None:
            import envs

            if bench not in envs.available():
                raise self.fail(f"unknown benchmark {bench!r}; valid: {envs.available()}")
            spec = benchmark_metrics(bench)
        elif needs is None:
            raise self.fail("benchmark is required unless the table says what it `needs`")
        out = []
        for c in cols:
            if not isinstance(c, Mapping) or "/" not in str(c.get("key", "")):
                raise self.fail(f"column {c!r} must be a mapping with key: task/metric")
            task, metric = str(c["key"]).split("/", 1)
            hib = c.get("higher_is_better")
            if spec is not None and needs is None:
                if task not in spec or metric not in spec[task]:
                    valid = [f"{t}/{m}" for t, ms in spec.items() for m in ms]
                    raise self.fail(f"unknown metric {task}/{metric} of benchmark {bench!r}; "
                                    f"valid: {valid}")
                known = spec[task][metric]
                if hib is not None and known is not None and bool(hib) != known:
                    raise self.fail(f"column {task}/{metric}: higher_is_better contradicts the "
                                    "benchmark's metric direction")
                hib = known if known is not None else hib
            if hib is None:
                raise self.fail(f"column {task}/{metric}: give higher_is_better (the benchmark "
                                "does not declare this metric's direction)")
            out.append(Column(task, metric, bool(hib), float(c.get("scale", 1.0)),
                              None if c.get("decimals") is None else int(c["decimals"])))
        return out

    def delta(self) -> tuple[str | None, str | None, bool, int | None, bool | None]:
        d = self.data.get("delta")
        if d is None:
            return None, None, False, None, None
        if not isinstance(d, Mapping) or d.get("kind") not in DELTA_KINDS:
            raise self.fail(f"delta must be a mapping with kind in {list(DELTA_KINDS)}")
        hib = DELTA_KINDS[d["kind"]][1]
        if hib is None:
            if "higher_is_better" not in d:
                raise self.fail("delta.kind 'paper' needs delta.higher_is_better")
            hib = bool(d["higher_is_better"])
        return (d["kind"], d.get("reference"), bool(d.get("reference_runs", False)),
                None if d.get("decimals") is None else int(d["decimals"]), hib)

    def row(self, r: Any, i: int, t: Table) -> Row:
        if not isinstance(r, Mapping) or "id" not in r:
            raise self.fail(f"row #{i + 1} must be a mapping with an id")
        rid = str(r["id"])
        unknown = sorted(set(r) - _ROW_KEYS)
        if unknown:
            raise self.fail(f"unknown key(s) {unknown}; valid: {sorted(_ROW_KEYS)}", rid)
        if "method" not in r:
            raise self.fail("missing method (an mtlx method name, or stl)", rid)
        row = Row(id=rid, method=str(r["method"]), hparams=dict(r.get("hparams") or {}),
                  bench_options=dict(r.get("bench_options") or {}), train=dict(r.get("train") or {}),
                  source=r.get("source"), misprint=r.get("misprint"), needs=r.get("needs"),
                  note=r.get("note"))
        n = len(t.columns)
        if "values" in r and "per_seed" in r:
            raise self.fail("give values or per_seed, not both", rid)
        if "per_seed" in r:
            ps = r["per_seed"]
            if not isinstance(ps, list) or not ps or any(not isinstance(s, list) for s in ps):
                raise self.fail("per_seed must be a list of value lists (one per seed)", rid)
            for s in ps:
                if len(s) != n:
                    raise self.fail(f"per_seed has {len(s)} values for {n} columns", rid)
            row.per_seed = [[self.number(v, rid) for v in s] for s in ps]
        else:
            vals = r.get("values")
            if vals is None:
                vals = [None] * n
            if not isinstance(vals, list) or len(vals) != n:
                got = len(vals) if isinstance(vals, list) else type(vals).__name__
                raise self.fail(f"{got} values for {n} columns "
                                f"({', '.join(c.key for c in t.columns)})", rid)
            row.values = [self.value(v, rid) for v in vals]
        if r.get("decimals") is not None:
            dec = r["decimals"]
            if not isinstance(dec, list) or len(dec) != n:
                raise self.fail(f"decimals must list {n} integers, one per column", rid)
            row.decimals = [int(x) for x in dec]
        row.delta = self.value(r.get("delta"), rid)
        self.check_method(row, t)
        return row

    def number(self, v: Any, rid: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.fail(f"per-seed value {v!r} is not a finite number", rid)
        return float(v)

    def value(self, v: Any, rid: str) -> Value:
        if v is None:
            return Value(None)
        if isinstance(v, bool):
            raise self.fail(f"value {v!r} is not a number", rid)
        if isinstance(v, (int, float)):
            return Value(float(v))
        m = _PM.match(str(v))
        if m:
            return Value(float(m.group(1).replace("−", "-")), float(m.group(2)))
        try:
            return Value(float(str(v).replace("−", "-")))
        except ValueError:
            raise self.fail(f"value {v!r} is not a number or 'value ± spread'", rid) from None

    def check_method(self, row: Row, t: Table) -> None:
        """Names must exist and hyperparameters pass ``methods.create`` — unless the row (or
        the table) declares what it ``needs``: then it is kept, marked not expressible."""
        import methods

        known = row.method == STL or row.method in methods.available()
        blocker = t.needs or row.needs
        if blocker is not None:
            row.expressible, row.blocker = False, blocker
            # a row waiting for a hyperparameter that has since been added: say so (rows
            # waiting for a network, metric or method variant carry no such hparams)
            if known and row.method != STL and row.hparams and t.needs is None:
                try:  # never run it silently: the table must drop its `needs` first
                    methods.create(row.method, max(2, len(t.spec)), **row.hparams)
                    row.blocker += (" — methods.create now accepts this row's hyperparameters: "
                                    "remove its `needs` to run it")
                except (ValueError, TypeError):
                    pass
            return
        if not known:
            raise self.fail(f"unknown method {row.method!r}; valid: stl, "
                            f"{', '.join(methods.available())}", row.id)
        if row.method == STL:
            if row.hparams:
                raise self.fail("stl rows take no hparams", row.id)
            return
        try:
            methods.create(row.method, max(2, len(t.spec)), **row.hparams)
        except (ValueError, TypeError) as e:
            raise self.fail(f"methods.create rejects {row.label}: {e} (if mtlx lacks this "
                            "option, say so in the row's `needs`)", row.id) from None


def benchmark_metrics(name: str) -> dict[str, dict[str, bool | None]]:
    """{task: {metric: higher_is_better}} a benchmark declares without data: its class's
    ``metrics``, or, for benchmarks whose tasks come from their data files (Office), the
    task/metric names of its published single-task reference (directions then unknown)."""
    import envs

    cls = envs.get_class(name)
    spec = {t: {m.name: m.higher_is_better for m in ms} for t, ms in (cls.metrics or {}).items()}
    if not spec and isinstance(getattr(cls, "stl_reference", None), Mapping):
        spec = {t: dict.fromkeys(ms) for t, ms in cls.stl_reference.items()}
    return spec


def spread_as_std(value: Value, kind: str, n: int) -> float | None:
    """A printed spread as a seed standard deviation (SEM × √n; unstated taken as std)."""
    if value.spread is None:
        return None
    return value.spread * math.sqrt(n) if kind == "sem" else value.spread


def column_values(t: Table, rows: Sequence[Row]) -> dict[str, list[Value]]:
    """{row id: printed values per column} (per-seed rows: their mean ± sample std)."""
    out = {}
    for r in rows:
        if r.per_seed is None:
            out[r.id] = list(r.values)
            continue
        vals = []
        for col in zip(*r.per_seed):
            mean = sum(col) / len(col)
            sd = (math.sqrt(sum((x - mean) ** 2 for x in col) / (len(col) - 1))
                  if len(col) > 1 else None)
            vals.append(Value(mean, sd))
        out[r.id] = vals
    return out
