"""The results store: a Parquet dataset directory any Parquet reader can analyse.

Layout (``<out>`` is ``--out``, default ``results/``: a directory, or an object-store URI
such as ``s3://bucket/prefix`` reached through :mod:`orchestrator.results.storage`)::

    <out>/runs/<run_id>.parquet                 one row per run (rewritten by that run only)
    <out>/metrics/<run_id>/<part>.parquet       long-format metric rows, one file per
                                                (run, epoch/evaluation, split group)
    <out>/diagnostics/<run_id>/<part>.parquet   per-logged-step method diagnostics
    <out>/checkpoints/<run_id>/state.pt         last checkpoint (torch.save; resume)
    <out>/checkpoints/<run_id>/state.prev.pt    the one before (resume falls back to it)
    <out>/leases/<run_id>.json                  the run's one writer (while it runs)

Every file has a fixed schema (:mod:`orchestrator.results.schemas`), so
``pandas.read_parquet("<out>/metrics")``, ``polars.read_parquet("<out>/metrics/**/*.parquet")``
and DuckDB's ``read_parquet('<out>/metrics/**/*.parquet')`` read the whole table; writes are
atomic (:mod:`orchestrator.results.store`).

``metrics`` (:data:`METRIC_SCHEMA`): ``run_id, benchmark, method, seed, split, epoch, step,
task, metric, value, higher_is_better``. ``split`` is ``train`` (epoch means of the training
losses, ``metric="loss"``; run-level rows such as ``lr`` have ``task=""``), ``val``/``test``
(every metric of every task at each evaluation, plus the mean evaluation ``loss``) or
``reported`` — the numbers the protocol reports (selected on validation or averaged over the
last k evaluations; the runs row says which epochs) and that Δm/Δp are computed from.
``step`` is the number of optimiser steps taken when the row was written.

``diagnostics`` (:data:`DIAG_SCHEMA`): ``run_id, benchmark, method, seed, epoch, step,
quantity, task, other_task, value`` with ``quantity`` one of ``loss``, ``weight``,
``grad_norm``, ``cosine`` (``other_task`` set) or ``info.<key>`` (``task=""``), from the
engine's :class:`methods.StepResult` every ``train.diagnostics_every`` steps.

``runs`` (:data:`RUN_SCHEMA`): identity, status (``running``, ``finished``, ``failed``,
``nonfinite``, ``diverged``, ``interrupted``), the error message, every field of the
resolved config as a column (derived from the config dataclasses) and the whole config as JSON, reporting facts (``selection``,
``reported_epochs``, the single-task reference and the metric directions as JSON, so reports
need nothing but this directory), the benchmark's protocol record (``protocol``, JSON, with
its source), wall time and provenance (mtlx version and git commit, torch/ray/python
versions, hostname, device).

Layers: this package imports only :mod:`orchestrator.config`; everything else in the
orchestrator writes and reads results through it.
"""

from orchestrator.results.schemas import (
    DIAG_SCHEMA,
    METRIC_SCHEMA,
    RUN_SCHEMA,
    TABLES,
    dumps,
)
from orchestrator.results.storage import Storage, open_storage
from orchestrator.results.store import ResultsStore, Unreadable, read_table, write_atomic

__all__ = [
    "DIAG_SCHEMA",
    "METRIC_SCHEMA",
    "RUN_SCHEMA",
    "TABLES",
    "ResultsStore",
    "Storage",
    "Unreadable",
    "dumps",
    "open_storage",
    "read_table",
    "write_atomic",
]
