"""``mtlx reproduce`` and ``mtlx report RESULTS --against TABLE_ID``.

::

    mtlx reproduce --list
    mtlx reproduce TABLE_ID [--data-root PATH] [--seeds 0,1,2] [--out DIR] [--ray-address A]
                   [--workers W] [--smoke] [--format markdown|csv] [--plots DIR] [key=value ...]
    mtlx report RESULTS --against TABLE_ID [--format markdown|csv] [--plots DIR]

``reproduce`` expands the table into its grid, validates every run (names, options, data
root) before anything trains, runs the grid with ``mtlx run``'s launcher into ``--out``
(finished runs are skipped and unfinished ones resume, so rerunning the command continues a
partial reproduction), then prints the comparison and writes it to
``<out>/reproduce/<TABLE_ID>.{md,csv,png}``. ``--smoke`` runs every configuration for one
epoch of two steps to prove the pipeline before a real launch: on the user's data, or, without
``--data-root``, on a fixture of the benchmark's published layout (``envs.fixtures``) written
under ``<out>/reproduce/fixtures/``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.reproduce.grid import (
    GridError,
    expand,
    experiments,
    launcher,
    plan_runs,
    run_grid,
    smoke_fixture,
)
from orchestrator.reproduce.tables import STL, TableError, get_table, load_all


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``reproduce`` on the ``mtlx`` subparsers."""
    p = subparsers.add_parser(
        "reproduce", help="run a published table's grid and compare with the paper",
        description="Run a published table's grid (methods x seeds x protocol) and print "
                    "published vs reproduced side by side. --list shows the tables.")
    p.add_argument("table", nargs="?", metavar="TABLE_ID", help="a table id (--list) or file")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides applied to every run (as for mtlx run)")
    p.add_argument("--list", action="store_true", help="list the published tables")
    p.add_argument("--data-root", dest="data_root", help="dataset root (published layout)")
    p.add_argument("--seeds", help="comma-separated seeds (default: as many as the paper)")
    p.add_argument("--out", default="results", help="results directory (default: results)")
    p.add_argument("--ray-address", dest="ray_address", help="connect to a Ray cluster")
    p.add_argument("--workers", type=int, help="as for mtlx run (0: in this process)")
    p.add_argument("--smoke", action="store_true",
                   help="one epoch of 2 steps per run: prove the pipeline, not the numbers")
    p.add_argument("--format", default="markdown", choices=("markdown", "csv"))
    p.add_argument("--plots", metavar="DIR", help="also write the plot into DIR")
    return p


def add_against(report_parser: argparse.ArgumentParser) -> None:
    """Add ``--against TABLE_ID`` to ``mtlx report``."""
    report_parser.add_argument("--against", metavar="TABLE_ID",
                               help="compare the results with a published table "
                                    "(mtlx reproduce --list)")


def main(args: argparse.Namespace, extra: Sequence[str] = ()) -> int:
    """Run ``mtlx reproduce``. ``extra``: ``key=value`` overrides that argparse left over
    (``parse_known_args``: overrides may follow the flags, as for ``mtlx run``)."""
    from orchestrator.config import ConfigError

    bad = [a for a in extra if "=" not in a or a.startswith("-")]
    if bad:
        print(f"mtlx: error: unrecognized arguments: {' '.join(bad)}", file=sys.stderr)
        return 2
    args = argparse.Namespace(**{**vars(args), "overrides": [*(args.overrides or []), *extra]})
    try:
        if args.list:
            print(list_text(), end="")
            return 0
        if not args.table:
            raise GridError("give a TABLE_ID (mtlx reproduce --list shows them)")
        return _reproduce(args)
    except (TableError, GridError, ConfigError) as e:
        print(f"mtlx: error: {e}", file=sys.stderr)
        return 2


def _seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise GridError(f"--seeds must be comma-separated integers, got {text!r}") from None


def _reproduce(args: argparse.Namespace) -> int:
    table = get_table(args.table)
    grid = expand(table, _seeds(args.seeds))
    data_root, overrides = args.data_root, list(args.overrides)
    if args.smoke and data_root is None:  # prove the pipeline on a fixture of the layout
        fixture = smoke_fixture(table.benchmark, _fixtures_dir(args.out))
        if fixture is not None:
            data_root, extra = fixture
            overrides = extra + overrides
            print(f"smoke: no --data-root given; using a {table.benchmark} fixture in "
                  f"{data_root}", file=sys.stderr)
    exps = experiments(grid, out=args.out, data_root=data_root, ray_address=args.ray_address,
                       workers=args.workers, smoke=args.smoke, overrides=overrides)
    row_runs = plan_runs(grid, exps)  # validates everything before any run starts
    n = len({r for ids in row_runs.values() for r in ids})
    print(f"reproduce {table.id}: {len(grid.cells)} configurations × {len(grid.seeds)} seed(s) "
          f"= {n} runs in {len(exps)} experiment(s)"
          + (f"; {len(grid.blocked)} row(s) not expressible yet" if grid.blocked else "")
          + (" [smoke]" if args.smoke else ""), file=sys.stderr)
    from orchestrator.run.progress import overall

    with overall(n, f"reproduce {table.id}"):  # one [k/n] and ETA over every experiment
        outcomes = run_grid(grid, exps)
    launcher().describe(outcomes)  # "runs: 6 finished, ..." as mtlx run prints it
    text = write_outputs(table, args.out, row_runs, args.format, args.plots)
    print(text, end="")
    return 0 if all(o.status in ("finished", "skipped") for o in outcomes) else 1


def _fixtures_dir(out: str) -> str:
    """Where ``--smoke`` writes its dataset fixture: under a local ``--out``, else (an object
    store: benchmarks read local files) in the temporary directory."""
    from orchestrator.results.storage import is_local

    if is_local(out):
        return str(Path(out) / "reproduce" / "fixtures")
    return str(Path(tempfile.gettempdir()) / "mtlx-reproduce-fixtures")


def write_outputs(table: Any, results: str, row_runs: dict[str, list[str]] | None,
                  fmt: str, plots: str | None) -> str:
    """Compare, write ``<results>/reproduce/<id>.{md,csv,png}``, return the chosen format."""
    from orchestrator.reproduce.compare import compare
    from orchestrator.reproduce.render import csv_text, markdown, plot
    from orchestrator.results.storage import open_storage

    cmp = compare(table, results, row_runs)
    md, csv = markdown(cmp), csv_text(cmp)
    store = open_storage(results)  # a directory or a URI: written through the storage layer
    store.write_bytes(f"reproduce/{table.id}.md", md.encode())
    store.write_bytes(f"reproduce/{table.id}.csv", csv.encode())
    with tempfile.TemporaryDirectory() as tmp:  # matplotlib writes a local file
        png = plot(cmp, Path(tmp) / f"{table.id}.png")
        store.write_bytes(f"reproduce/{png.name}", png.read_bytes())
    if plots:
        plot(cmp, Path(plots) / png.name)
    print(f"wrote {store.show('reproduce')}/{table.id}.md, .csv, .png", file=sys.stderr)
    return md if fmt == "markdown" else csv


def report_against(results: str, table_id: str, fmt: str = "markdown",
                   plots: str | None = None) -> int:
    """``mtlx report RESULTS --against TABLE_ID``: the same side-by-side view from the store
    alone (rows are matched to runs by method and the options the table sets)."""
    from orchestrator.config import ConfigError

    try:
        table = get_table(table_id)
        if table.needs is not None:
            raise GridError(f"table {table.id!r} is not expressible in mtlx yet: needs {table.needs}")
        _check_matches(table, results)
        text = write_outputs(table, results, None, fmt, plots)
    except (TableError, GridError) as e:
        print(f"mtlx: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print(text, end="")
    return 0


def _check_matches(table: Any, results: str) -> None:
    from orchestrator.reproduce.compare import match_rows, read_results

    runs, _ = read_results(results)
    if not match_rows(table, runs)[0]:
        present = sorted({str(b) for b in runs.get("benchmark", [])})
        raise GridError(f"no finished run in {results!r} matches a row of {table.id!r} "
                        f"(benchmark {table.benchmark}); benchmarks there: {present or 'none'}; "
                        f"fix: run the grid with `mtlx reproduce {table.id}` or `mtlx run`")


def list_text() -> str:
    """``mtlx reproduce --list``: every table with its benchmark, methods and cost."""
    lines = ["| table | benchmark | rows (runnable / not yet) | methods | expected cost | title |",
             "|---|---|---|---|---|---|"]
    for t in load_all():
        ok = sum(r.expressible for r in t.rows)
        names = []
        for r in t.rows:  # mtlx names of what can run; the rest is counted as 'not yet'
            if r.expressible and r.method not in names:
                names.append(r.method)
        cost = t.cost or "unknown"
        lines.append(f"| {t.id} | {t.benchmark or '—'} | {len(t.rows)} ({ok} / {len(t.rows) - ok}) "
                     f"| {', '.join(names) or '—'} | {cost} | {t.title} |")
        if t.needs:
            lines.append(f"|  | | not expressible yet: needs {t.needs} | | | |")
    lines += ["", f"'{STL}' = single-task runs; cost 'unknown' = no measured epoch time for "
              "that protocol in mtlx yet."]
    return "\n".join(lines) + "\n"
