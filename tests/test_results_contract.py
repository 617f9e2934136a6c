"""The results contract: a results directory is plain Parquet that the readers users use read
alike. pandas, polars and DuckDB give the same rows as mtlx's own reader
(``orchestrator.results.read_table``) for metrics, runs and diagnostics, and for the
searches' trials and summary tables; the README's three one-liners are taken from README.md
and run here, so they cannot drift.

The directory comes from real tiny runs (tests/report_results.py)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pytest

from orchestrator.results import read_table
from tests.report_results import results_dir

#: the results fixture runs a search on the session Ray (~1 min on 2 cores, once per session)
pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

README = Path(__file__).resolve().parent.parent / "README.md"
TABLES = ("metrics", "runs", "diagnostics")


def _norm(v):
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return None
    return v


def _rows(df) -> list[tuple]:
    """Rows as sorted tuples of Python values (None for missing), from any of the readers."""
    if isinstance(df, pl.DataFrame):
        rows = df.rows()
    else:
        rows = list(zip(*(df[c].tolist() for c in df.columns)))
    return sorted((tuple(_norm(v) for v in r) for r in rows), key=repr)


def _columns(df) -> list[str]:
    return list(df.columns)


def readme_one_liners() -> list[str]:
    """The code lines of the README's "Reading results" block: pandas, polars, DuckDB."""
    text = README.read_text()
    m = re.search(r"## Reading results\n(.*?)```python\n(.*?)```", text, re.S)
    assert m, "README.md needs a '## Reading results' section with a ```python block"
    lines = [x for x in m.group(2).splitlines() if x.strip() and not x.startswith("#")]
    return [x for x in lines if "df =" in x]


@pytest.fixture(scope="module")
def results(ray_session, tmp_path_factory):
    return results_dir(tmp_path_factory.getbasetemp())


def test_readme_shows_one_line_per_reader():
    lines = readme_one_liners()
    assert len(lines) == 3
    for reader, line in zip(("pandas", "polars", "duckdb"), lines):
        assert f"import {reader}" in line and "results/metrics" in line, line


@pytest.mark.parametrize("table", TABLES)
def test_readme_one_liners_give_the_same_rows(results, table, monkeypatch):
    """Each README line, run as written in the directory holding ``results/`` (with the
    table's name in place of ``metrics`` for the other tables)."""
    monkeypatch.chdir(results.parent)
    ours = read_table(results, table)
    assert len(ours) > 0
    got = []
    for line in readme_one_liners():
        ns: dict = {}
        exec(line.replace("results/metrics", f"results/{table}"), ns)
        got.append(ns["df"])
    for df in got:
        assert _columns(df) == list(ours.columns)
        assert _rows(df) == _rows(ours)


def test_every_reader_sees_every_run_and_run_status(results):
    runs = pl.read_parquet(str(results / "runs" / "*.parquet"))
    via_duck = duckdb.sql(f"select method, count(*) n from read_parquet("
                          f"'{results}/runs/*.parquet') where status = 'finished' "
                          "group by method order by method").fetchall()
    via_pandas = pd.read_parquet(results / "runs").query("status == 'finished'")
    assert via_duck == sorted(via_pandas.groupby("method").size().items())
    assert set(runs["benchmark"]) == {"multi_digits", "mt1"}
    assert runs.height == len(via_pandas)  # every run finished


@pytest.mark.parametrize("name", ["trials", "summary"])
def test_search_tables_read_alike(results, name):
    """``searches/<id>/{trials,summary}.parquet``: one file per search."""
    files = sorted((results / "searches").glob(f"*/{name}.parquet"))
    assert len(files) == 1
    pattern = str(results / "searches" / "*" / f"{name}.parquet")
    by_pandas = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    by_polars = pl.read_parquet(pattern)
    by_duck = duckdb.sql(f"select * from read_parquet('{pattern}', union_by_name=true)").df()
    assert len(by_pandas) == (3 if name == "trials" else 1)
    for df in (by_polars, by_duck):
        assert _columns(df) == _columns(by_pandas)
        assert _rows(df) == _rows(by_pandas)
    if name == "trials":  # the trials are runs of the runs table
        runs = pd.read_parquet(results / "runs")
        assert set(by_pandas.run_id) <= set(runs.run_id)
