"""MLflow: one MLflow run per mtlx run, found again by its ``mtlx.run_id`` tag.

Default store: ``sqlite:///<out>/trackers/mlflow.db`` (artifacts under
``<out>/trackers/mlflow/artifacts``), readable by ``mlflow ui --backend-store-uri`` with the same
URI; why not the file store: docs/trackers.md §2. The run's name is the mtlx run id; its params
are the resolved run configuration (``train.lr``, ``hparams.c`` ...), its tags the run's
identity, provenance and final status; metrics: the points of
:mod:`orchestrator.trackers.base`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.config import RunConfig
from orchestrator.results.schemas import PROVENANCE_COLUMNS
from orchestrator.trackers.base import Point, PointTracker, flat, run_config

#: the tag that maps an MLflow run to its mtlx run
RUN_TAG = "mtlx.run_id"
#: mtlx statuses → MLflow's run statuses
STATUS = {"finished": "FINISHED", "interrupted": "KILLED"}
#: MLflow's limits per ``log_batch`` call and per param value
_BATCH_METRICS, _BATCH_PARAMS, _PARAM_CHARS = 1000, 100, 6000


def resolve(opts: dict[str, Any], out: str, benchmark: str) -> dict[str, Any]:
    uri = opts.get("tracking_uri")
    default = uri is None
    if default:
        uri = f"sqlite:///{Path(out) / 'trackers' / 'mlflow.db'}"
    artifacts = str(Path(out) / "trackers" / "mlflow" / "artifacts") if default else None
    return {"tracking_uri": uri, "experiment": opts.get("experiment") or benchmark,
            "artifact_location": artifacts}


def _client(opts: Mapping[str, Any]) -> Any:
    from mlflow.tracking import MlflowClient

    uri = opts["tracking_uri"]
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: Any, opts: Mapping[str, Any]) -> str:
    exp = client.get_experiment_by_name(opts["experiment"])
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(opts["experiment"],
                                    artifact_location=opts.get("artifact_location"))


def prepare(opts: Mapping[str, Any]) -> None:
    """Create the store (its tables) and the experiment once, in the driver, so concurrent
    runs never race to create them."""
    _experiment_id(_client(opts), opts)


def _runs_of(client: Any, experiment_id: str, run_id: str) -> list[Any]:
    return client.search_runs([experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{run_id}'")


def open_run(cfg: RunConfig, opts: Mapping[str, Any], run_info: Mapping[str, Any],
             resumed: bool) -> MlflowTracker:
    client = _client(opts)
    eid = _experiment_id(client, opts)
    found = _runs_of(client, eid, cfg.run_id)
    if resumed and found:
        run = found[0]
        client.update_run(run.info.run_id, status="RUNNING")
        logged = {(key, m.step) for key in run.data.metrics
                  for m in client.get_metric_history(run.info.run_id, key)}
        return MlflowTracker(client, run.info.run_id, logged)
    for old in found:  # a fresh start (no checkpoint, or --rerun) replaces the earlier run
        client.delete_run(old.info.run_id)
    tags = {RUN_TAG: cfg.run_id, "mtlx.benchmark": cfg.benchmark, "mtlx.method": cfg.method,
            "mtlx.seed": str(cfg.seed)}
    tags.update({f"mtlx.{k}": str(getattr(cfg, k)) for k in ("stl_task", "trial_id", "search_id")
                 if getattr(cfg, k) is not None})
    tags.update({f"mtlx.{c}": str(run_info[c]) for c, _ in PROVENANCE_COLUMNS
                 if run_info.get(c) is not None})
    if run_info.get("git_commit"):
        tags["mlflow.source.git.commit"] = str(run_info["git_commit"])
    run = client.create_run(eid, tags=tags, run_name=cfg.run_id)
    t = MlflowTracker(client, run.info.run_id)
    t.log_params(flat(run_config(cfg)))
    return t


class MlflowTracker(PointTracker):
    name = "mlflow"

    def __init__(self, client: Any, mlflow_run_id: str, logged: Any = ()) -> None:
        super().__init__(logged)
        self.client, self.id = client, mlflow_run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, (v if isinstance(v, str) else json.dumps(v))[:_PARAM_CHARS])
                 for k, v in params.items()]
        for i in range(0, len(items), _BATCH_PARAMS):
            self.client.log_batch(self.id, params=items[i:i + _BATCH_PARAMS])

    def write(self, pts: Sequence[Point], reported: bool) -> None:
        from mlflow.entities import Metric

        ms = int(time.time() * 1000)
        items = [Metric(k, v, ms, s) for k, s, v in pts]
        for i in range(0, len(items), _BATCH_METRICS):
            self.client.log_batch(self.id, metrics=items[i:i + _BATCH_METRICS])

    def close(self, status: str, run_info: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        tags = {"mtlx.status": status}
        for key in ("epochs_done", "steps_done", "wall_time_s", "error"):
            if run_info.get(key) is not None:
                tags[f"mtlx.{key}"] = str(run_info[key])[:5000]
        self.client.log_batch(self.id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(self.id, STATUS.get(status, "FAILED"))
