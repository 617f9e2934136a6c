"""``mtlx reproduce``: published tables as data → run grids → side-by-side verdicts.

* :mod:`orchestrator.reproduce.tables` — the table files (``tables/*.yaml``) and their loader;
* :mod:`orchestrator.reproduce.grid` — a table → the exact grid of runs (rows × seeds, plus
  the reference runs its Δ needs), and the rows mtlx cannot express yet;
* :mod:`orchestrator.reproduce.compare` — published vs reproduced from a results directory:
  per metric, Δm/Δp, Kendall τ, verdicts, Markdown/CSV/plot;
* :mod:`orchestrator.reproduce.cli` — ``mtlx reproduce`` and ``mtlx report --against``.

The table format is described in ``docs/reproduce.md §Table format``, the verdict rule in
``docs/reproduce.md §The comparison and the verdict rule``; Δm/Δp in ``docs/delta_m.md``.
"""

from orchestrator.reproduce.tables import Table, TableError, get_table, load_all, load_table

__all__ = ["Table", "TableError", "get_table", "load_all", "load_table"]
