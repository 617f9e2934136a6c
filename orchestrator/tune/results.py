"""A search's results from Tune's trials: the trials table, the summary, ``best.yaml``."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator.config import (
    ConfigError,
    StorageConfig,
    experiment_from_dict,
)
from orchestrator.results.provenance import now
from orchestrator.results.storage import Storage, open_storage
from orchestrator.results.store import unreadable_reason
from orchestrator.run.ray_compat import trial_number
from orchestrator.tune.objective import OBJECTIVE, TIME_ATTR
from orchestrator.tune.search import Search
from orchestrator.tune.space import split_params

#: the search summary table (one row per search; ``<out>/searches/<id>/summary.parquet``)
SUMMARY_COLUMNS = (
    ("search_id", "string"), ("benchmark", "string"), ("method", "string"),
    ("metric", "string"), ("mode", "string"), ("scheduler", "string"), ("trials", "int64"),
    ("trials_finished", "int64"), ("trials_stopped", "int64"), ("trials_failed", "int64"),
    ("complete", "bool"), ("best_trial_id", "string"), ("best_run_id", "string"),
    ("best_objective", "float64"), ("best_params", "string"), ("default_trial_id", "string"),
    ("default_objective", "float64"), ("space", "string"), ("seed", "int64"),
    ("epochs", "int64"), ("workers_per_trial", "int64"), ("held_out", "string"),
    ("best_config", "string"), ("wall_time_s", "float64"), ("finished_at", "string"),
    ("base_config", "string"),
)  # fmt: skip


def _summary_schema():
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(),
             "bool": pa.bool_()}
    return pa.schema([(n, types[t]) for n, t in SUMMARY_COLUMNS])


@dataclass
class SearchOutcome:
    """What a search left (also readable later from its files)."""

    search_id: str
    dir: Path | str  # a URI for an object-store --out
    complete: bool
    trials: Any  # pandas DataFrame, one row per trial
    summary: dict[str, Any]
    best_yaml: Path | str | None
    storage: StorageConfig | None = None  # how to reach ``dir``

    def best_yaml_text(self) -> str:
        return open_storage(self.dir, self.storage).read_bytes("best.yaml").decode()


def trial_name(trial: Any) -> str:
    """``t0000`` for the first trial created, ... (Tune's counter; kept on restore)."""
    n = trial_number(trial)
    return f"t{n - 1:04d}" if n is not None else str(trial.trial_id)


def collect(search: Search, trials: Sequence[Any], wall_time_s: float) -> SearchOutcome:
    """Write the trials table, the summary and ``best.yaml`` from Tune's trials; mark
    ASHA-stopped runs ``stopped`` in the runs table."""
    import pandas as pd

    from orchestrator.results import ResultsStore

    store = ResultsStore(search.base.out, search.base.storage)
    keys = [p.key for p in search.params]
    rows = [_trial_row(search, store, keys, t) for t in sorted(trials, key=trial_name)]
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=["search_id", "trial_id", "objective", "status"])
    for k in keys:  # a choice of mixed types is stored as text
        col = f"hp.{k}"
        if col in df and len({type(v) for v in df[col].dropna()}) > 1:
            df[col] = df[col].map(lambda v: None if missing(v) else str(v))
    complete = len(df) == search.settings.trials and df.status.isin(
        ["finished", "stopped", "failed", "nonfinite", "diverged"]).all()
    best = best_trial(df, search.mode)
    default = df[df.is_default] if "is_default" in df else df.iloc[0:0]
    best_yaml = None
    if best is not None:
        best_yaml = write_best_yaml(search, best, default)
    prev = load_summary(search.dir, search.base.storage) or {}
    summary = {
        "search_id": search.search_id, "benchmark": search.base.benchmark,
        "method": search.method, "metric": search.metric, "mode": search.mode,
        "scheduler": search.settings.scheduler, "trials": search.settings.trials,
        "trials_finished": int((df.status == "finished").sum()),
        "trials_stopped": int((df.status == "stopped").sum()),
        "trials_failed": int(df.status.isin(["failed", "nonfinite", "diverged"]).sum()),
        "complete": bool(complete),
        "best_trial_id": None if best is None else best["trial_id"],
        "best_run_id": None if best is None else best["run_id"],
        "best_objective": None if best is None else float(best["objective"]),
        "best_params": None if best is None else best["params"],
        "default_trial_id": default.trial_id.iloc[0] if len(default) else None,
        "default_objective": float(default.objective.iloc[0]) if len(default) else None,
        "space": json.dumps({p.key: p.to_json() for p in search.params}, default=str),
        "seed": search.settings.seed, "epochs": search.epochs,
        "workers_per_trial": search.settings.workers_per_trial,
        "held_out": json.dumps(search.held_out),
        "best_config": str(best_yaml) if best_yaml else None,
        "wall_time_s": float(prev.get("wall_time_s") or 0.0) + wall_time_s,
        "finished_at": now(), "base_config": json.dumps(search.base.to_dict(), sort_keys=True),
    }  # fmt: skip
    _write_tables(search.storage, df, summary)
    return SearchOutcome(search.search_id, search.dir, bool(complete), df, summary, best_yaml,
                         search.base.storage)


def _trial_row(search: Search, store: Any, keys: Sequence[str], t: Any) -> dict[str, Any]:
    """One trial's row of the trials table; marks an ASHA-stopped run ``stopped``."""
    name = trial_name(t)
    params = {k: t.config[k] for k in keys if k in t.config and not missing(t.config[k])}
    run = search.trial_run(params, name)
    run_row = store.read_run(run.run_id) or {}
    last = t.last_result or {}
    epochs_done = last.get(TIME_ATTR, run_row.get("epochs_done"))
    run_status = run_row.get("status")
    if t.status == "ERROR":
        status = run_status if run_status in ("nonfinite", "diverged") else "failed"
    elif t.status == "TERMINATED":
        status = "finished" if run_status == "finished" else "stopped"
    else:
        status = "interrupted" if run_row else "pending"
    if status == "stopped" and run_status not in ("finished", "nonfinite", "diverged", "stopped"):
        store.write_run({**run_row, "status": "stopped",
                         "error": f"stopped by ASHA after {epochs_done} of "
                                  f"{search.epochs} {search.unit} (search "
                                  f"{search.search_id})"})
    obj = last.get(OBJECTIVE)
    return {
        "search_id": search.search_id, "trial_id": name, "trial_index": _index(name),
        "run_id": run.run_id, "benchmark": search.base.benchmark, "method": search.method,
        "seed": search.base.seed, "status": status,
        "is_default": search.default_point is not None and name == "t0000",
        "metric": search.metric, "mode": search.mode,
        "objective": float(obj) if obj is not None else math.nan,
        "epochs_done": int(epochs_done) if epochs_done is not None else 0,
        "wall_time_s": run_row.get("wall_time_s"), "error": run_row.get("error"),
        "params": json.dumps(params, sort_keys=True, default=str),
        **{f"hp.{k}": params.get(k) for k in keys},
    }  # fmt: skip


def missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _index(name: str) -> int:
    return int(name[1:]) if name[1:].isdigit() else -1


def best_trial(df: Any, mode: str) -> dict[str, Any] | None:
    """The best objective among trials that trained every epoch (``finished``), else among
    all with an objective; ties → the earliest trial."""
    if df.empty:
        return None
    ok = df[df.objective.map(lambda v: v is not None and math.isfinite(v))]
    pool = ok[ok.status == "finished"] if (ok.status == "finished").any() else ok
    if pool.empty:
        return None
    pool = pool.sort_values("trial_index", kind="stable")
    i = pool.objective.idxmin() if mode == "min" else pool.objective.idxmax()
    return pool.loc[i].to_dict()


def _write_tables(d: Storage, trials: Any, summary: Mapping[str, Any]) -> None:
    import pyarrow as pa

    from orchestrator.results.store import parquet_bytes

    d.write_bytes("trials.parquet",
                  parquet_bytes(pa.Table.from_pandas(trials, preserve_index=False)))
    schema = _summary_schema()
    d.write_bytes("summary.parquet", parquet_bytes(
        pa.table({n: [summary.get(n)] for n in schema.names}, schema=schema)))


def _read(search_dir: Path | str, name: str, storage: StorageConfig | None) -> bytes | None:
    try:
        return open_storage(search_dir, storage).read_bytes(name)
    except FileNotFoundError:
        return None


def _parquet(search_dir: Path | str, name: str, storage: StorageConfig | None):
    """The search table ``name`` as a pyarrow Table; None if it is missing or does not read
    (truncated, zero bytes, not Parquet), which is said on stderr with the fix: the next
    ``mtlx tune --resume`` of the search writes its tables again."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = _read(search_dir, name, storage)
    if data is None:
        return None
    try:
        return pq.read_table(pa.BufferReader(data))
    except (OSError, pa.ArrowException) as e:
        print(f"mtlx: skipped unreadable {search_dir}/{name}: {unreadable_reason(e)}; "
              "fix: mtlx tune --resume with the same settings rewrites it (--fresh starts "
              "the search over)", file=sys.stderr)
        return None


def load_summary(search_dir: Path | str, storage: StorageConfig | None = None
                 ) -> dict[str, Any] | None:
    table = _parquet(search_dir, "summary.parquet", storage)
    rows = [] if table is None else table.to_pylist()
    return rows[0] if rows else None


def load_trials(search_dir: Path | str, storage: StorageConfig | None = None):
    table = _parquet(search_dir, "trials.parquet", storage)
    return None if table is None else table.to_pandas()


def outcome_from_files(search: Search) -> SearchOutcome:
    summary = load_summary(search.dir, search.base.storage) or {}
    best = summary.get("best_config")
    if best and "://" not in best:
        best = Path(best)
    return SearchOutcome(search.search_id, search.dir, bool(summary.get("complete")),
                         load_trials(search.dir, search.base.storage), summary, best or None,
                         search.base.storage)


def best_config(search: Search, best: Mapping[str, Any]) -> dict[str, Any]:
    """The ``mtlx run`` config of the best trial: the user's experiment (full train split,
    the user's own bench options) with the trial's hyperparameters."""
    from orchestrator.config import TrainConfig

    params = json.loads(best["params"])
    run = search.trial_run(params, best["trial_id"])
    exp = search.exp
    user_train = {k: v for k, v in dataclasses.asdict(exp.train).items()
                  if v is not None and v != getattr(TrainConfig(), k)}
    _, sampled_train = split_params(params)
    data: dict[str, Any] = {"benchmark": exp.benchmark, "methods": [search.method],
                            "seeds": list(exp.seeds)}
    if exp.data_root:
        data["data_root"] = exp.data_root
    for key in ("bench_options", "model_options", "trainer_options"):
        if getattr(exp, key):
            data[key] = dict(getattr(exp, key))
    data["hparams"] = {search.method: {k: v for k, v in run.hparams.items() if v is not None}}
    train = {**user_train, **search.fixed_train, **sampled_train}
    if train:
        data["train"] = train
    if exp.plugins:
        data["plugins"] = list(exp.plugins)
    if run.workers > 1:  # W > 1 is in the run id (W ranks sum in another order)
        data["workers"] = run.workers
    if run.gpus_per_worker > 0:
        data["gpus_per_worker"] = run.gpus_per_worker
    return json.loads(json.dumps(data, default=str))


def write_best_yaml(search: Search, best: Mapping[str, Any], default: Any) -> Path | str:
    data = best_config(search, best)
    lines = [
        f"# Best configuration of search {search.search_id} (mtlx tune, "
        f"{search.settings.trials} trials):",
        f"# trial {best['trial_id']}, {search.metric} = {best['objective']:.6g} on the "
        f"{'evaluation episodes' if search.kind == 'rl' else 'validation split'} "
        f"({search.mode}imised; run {best['run_id']}).",
    ]
    if len(default):
        d = default.iloc[0]
        lines.append(f"# default configuration (trial {d.trial_id}): {search.metric} = "
                     f"{d.objective:.6g}" + ("" if d.status == "finished" else f" ({d.status})"))
    if search.held_out:
        lines.append(f"# trials held out {search.held_out} of train as validation; this "
                     "config trains on the full train split.")
    path = search.storage.at("best.yaml")
    lines.append(f"# run: mtlx run {run_hint(path)}")
    text = "\n".join(lines) + "\n" + yaml.safe_dump(data, sort_keys=False)
    experiment_from_dict(yaml.safe_load(text))  # what `mtlx run` will do: must load
    search.storage.write_bytes("best.yaml", text.encode())
    return path


def run_hint(best_yaml: Path | str) -> str:
    """How to run a ``best.yaml``: itself if local; a local copy of an object (``mtlx run``
    reads a local YAML file)."""
    if isinstance(best_yaml, Path):
        return str(best_yaml)
    return f"best.yaml (a local copy of {best_yaml}, e.g. `aws s3 cp {best_yaml} .`)"


def find_searches(root: str | Path, search_id: str | None = None,
                  storage: StorageConfig | None = None) -> list[Path | str]:
    """The searches under ``root`` (a directory or a URI) that have a summary."""
    s = open_storage(root, storage)
    names = [n for n in s.children("searches")
             if s.kind(f"searches/{n}/summary.parquet") == "file"]
    if search_id is not None:
        names = [n for n in names if n == search_id]
        if not names:
            raise ConfigError(f"no search {search_id!r} in {s.show('searches')}")
    return [s.at(f"searches/{n}") for n in names]
