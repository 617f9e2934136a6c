"""Reports from a results directory alone (nothing needs the benchmark code or the runs).

* :mod:`.tables` — ranked method tables (mean ± std over seeds, Δm%, Δp%), :class:`Results`,
  :func:`report_text`;
* :mod:`.rl` — RL benchmarks' success tables and curves (MT10, MT1);
* :mod:`.plots` — learning curves, task weights, gradient norms and cosines;
  :func:`plot_all`;
* :mod:`.html` — ``mtlx report --html``: one self-contained page of all of the above (and
  the searches and comparisons the CLI hands in), drawn by :mod:`.figures`.

Layers: reports read :mod:`orchestrator.results` only.
"""

from orchestrator.report.plots import plot, plot_all
from orchestrator.report.tables import Results, Table, render, report_text, summarize

__all__ = ["Results", "Table", "plot", "plot_all", "render", "report_text", "summarize"]
