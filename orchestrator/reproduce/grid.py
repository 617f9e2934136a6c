"""A published table → the exact grid of runs that reproduces it.

Each expressible row is one (method, hyperparameters, benchmark options, training options)
configuration, run once per seed. The reference row of the table's Δ is run too when the
paper trained it itself (``delta.reference_runs: true``; an ``stl`` reference then means one
single-task model per task and seed); otherwise the comparison uses its printed values.
Rows that need an option mtlx lacks are listed, never run and never dropped.

``mtlx run`` takes one :class:`~orchestrator.config.ExperimentConfig` per invocation, with
one hyperparameter set per method. The grid therefore becomes several experiments: rows are
grouped by their benchmark and training options, and within a group split into "waves" in
which every method occurs once (a sensitivity table over CAGrad's c is one wave per c).
Identical configurations in one table are run once and serve every row that names them.
"""

from __future__ import annotations

import copy
import importlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.reproduce.tables import STL, Row, Table

#: What ``--smoke`` sets: one epoch of a couple of steps, a short evaluation.
SMOKE = {"train.epochs": 1, "train.max_steps_per_epoch": 2, "train.max_eval_batches": 2,
         "train.average_last": 1}


#: --smoke without --data-root: the fixture writer (envs.fixtures) of each benchmark that
#: needs data, its arguments, and the benchmark options a few-item dataset needs
FIXTURES = {
    "nyuv2": ("envs.fixtures.dense", "write_nyuv2", {}, {}),
    "cityscapes": ("envs.fixtures.dense", "write_cityscapes", {}, {}),
    "office31": ("envs.fixtures.files", "write_office", {"dataset": "office31"}, {}),
    "office_home": ("envs.fixtures.files", "write_office", {"dataset": "office_home"}, {}),
    "celeba": ("envs.fixtures.files", "write_celeba", {}, {}),
    "qm9": ("envs.fixtures.files", "write_qm9", {}, {"test_size": 4, "val_size": 4}),
}  # fmt: skip


def smoke_fixture(benchmark: str, where: str) -> tuple[str, list[str]] | None:
    """(data root, overrides) of a fixture for ``benchmark`` written under ``where`` (once),
    or None if the benchmark needs no data (multi_digits, toy) or has no fixture writer."""
    if benchmark not in FIXTURES:
        return None
    module, fn, kwargs, options = FIXTURES[benchmark]
    from pathlib import Path

    root = Path(where) / benchmark
    if not root.is_dir():
        getattr(importlib.import_module(module), fn)(root, **kwargs)
    return str(root), [f"bench_options.{k}={v}" for k, v in options.items()]


class GridError(ValueError):
    """The table cannot be turned into runs (the message says why and what would fix it)."""


def import_first(*names: str) -> Any:
    """The first importable module of ``names`` (the orchestrator's layout is moving)."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            continue
    raise ImportError(f"none of {names} is importable")


def launcher() -> Any:
    return import_first("orchestrator.run.launch", "orchestrator.launch")


def planner() -> Any:
    return import_first("orchestrator.run.plan", "orchestrator.validate")


@dataclass(frozen=True)
class Cell:
    """One planned configuration (all seeds of it run under one experiment)."""

    rows: tuple[str, ...]  # the table rows this configuration reproduces
    method: str
    hparams: tuple[tuple[str, Any], ...]
    bench_options: str  # canonical JSON
    train: str  # canonical JSON

    @property
    def key(self) -> tuple:
        return (self.method, self.hparams, self.bench_options, self.train)


@dataclass
class Grid:
    table: Table
    seeds: list[int]
    cells: list[Cell]
    waves: list[list[Cell]]
    blocked: list[Row]  # rows not expressible yet (with Row.blocker)
    printed_only: list[Row] = field(default_factory=list)  # reference rows compared as printed

    def runs(self) -> list[tuple[str, str, dict[str, Any], int]]:
        """(row ids, method, hparams, seed) of every run of the grid, stl per task aside."""
        return [("+".join(c.rows), c.method, dict(c.hparams), s) for c in self.cells
                for s in self.seeds]


def _canon(x: Mapping[str, Any]) -> str:
    return json.dumps(x, sort_keys=True, default=str)


def runnable_rows(table: Table) -> tuple[list[Row], list[Row], list[Row]]:
    """(rows to run, rows not expressible yet, stl rows compared as printed)."""
    run, blocked, printed = [], [], []
    for r in table.rows:
        if not r.expressible:
            blocked.append(r)
        elif r.method == STL and not (table.reference_runs and r.id == table.reference):
            printed.append(r)
        else:
            run.append(r)
    return run, blocked, printed


def expand(table: Table, seeds: Sequence[int] | None = None) -> Grid:
    """The grid of ``table`` (``seeds`` default: the table's own)."""
    if table.needs is not None:
        raise GridError(f"table {table.id!r} is not expressible in mtlx yet: needs "
                        f"{table.needs}")
    rows, blocked, printed = runnable_rows(table)
    if not rows:
        raise GridError(f"table {table.id!r} has no row mtlx can run yet; not expressible: "
                        + "; ".join(f"{r.id}: {r.blocker}" for r in blocked))
    base_bench = dict(table.experiment.get("bench_options") or {})
    base_train = dict(table.experiment.get("train") or {})
    cells: dict[tuple, Cell] = {}
    for r in rows:
        c = Cell((r.id,), r.method, tuple(sorted(r.hparams.items())),
                 _canon({**base_bench, **r.bench_options}), _canon({**base_train, **r.train}))
        if c.key in cells:  # the same configuration under two row names: run it once
            old = cells[c.key]
            c = Cell(old.rows + (r.id,), *c.key)
        cells[c.key] = c
    return Grid(table, list(table.seeds if seeds is None else seeds), list(cells.values()),
                _waves(list(cells.values())), blocked, printed)


def _waves(cells: list[Cell]) -> list[list[Cell]]:
    """Split the cells into experiments: same options, each method at most once."""
    waves: list[list[Cell]] = []
    for c in cells:
        for w in waves:
            same = (w[0].bench_options, w[0].train) == (c.bench_options, c.train)
            if same and all(o.method != c.method for o in w):
                w.append(c)
                break
        else:
            waves.append([c])
    return waves


def experiments(grid: Grid, *, out: str, data_root: str | None = None,
                ray_address: str | None = None, workers: int | None = None,
                smoke: bool = False, overrides: Sequence[str] = ()) -> list[Any]:
    """One validated-to-be ExperimentConfig per wave (``key=value`` overrides applied last)."""
    from orchestrator.config import apply_overrides, experiment_from_dict

    exps = []
    for wave in grid.waves:
        data = copy.deepcopy({k: v for k, v in grid.table.experiment.items()
                              if k not in ("bench_options", "train", "hparams")})
        data.update(
            methods=[c.method for c in wave], seeds=list(grid.seeds), out=out,
            hparams={c.method: dict(c.hparams) for c in wave if c.hparams},
            bench_options=json.loads(wave[0].bench_options), train=json.loads(wave[0].train),
        )
        for key, value in (("data_root", data_root), ("ray_address", ray_address),
                           ("workers", workers)):
            if value is not None:
                data[key] = value
        extra = [f"{k}={v}" for k, v in SMOKE.items()] if smoke else []
        exps.append(experiment_from_dict(apply_overrides(data, extra + list(overrides))))
    return exps


def plan_runs(grid: Grid, exps: Sequence[Any]) -> dict[str, list[str]]:
    """{row id: run ids} — validates every experiment (names, options, data) first."""
    expand_exp = planner().expand
    by_row: dict[str, list[str]] = {}
    for wave, exp in zip(grid.waves, exps):
        cell_of = {c.method: c for c in wave}
        for run in expand_exp(exp):
            for row_id in cell_of[run.method].rows:
                by_row.setdefault(row_id, []).append(run.run_id)
    return by_row


def run_grid(grid: Grid, exps: Sequence[Any]) -> list[Any]:
    """Run every experiment through ``mtlx run``'s launcher (finished runs are skipped,
    unfinished ones resume). One Ray session serves all waves."""
    launch = launcher()
    started = False
    if any(e.workers != 0 for e in exps):
        started = launch.init_ray(exps[0].ray_address, exps[0].verbose)
    outcomes = []
    try:
        for exp in exps:
            outcomes += launch.run_experiment(exp)
    finally:
        if started:
            import ray

            ray.shutdown()
    return outcomes
