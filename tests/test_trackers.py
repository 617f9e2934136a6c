"""Experiment trackers (docs/trackers.md): what `mtlx run --tracker ...` logs is read back
through each tracker's own reader — MLflow's client on the local store, TensorBoard's event
accumulator, W&B's offline transaction log — and compared with the Parquet rows; a resumed run
continues the same tracker run without repeating steps; a `mtlx tune` trial logs like a run;
bad tracker input is a clear error before anything runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from orchestrator import cli
from orchestrator.config import experiment_from_dict
from orchestrator.results import read_table
from orchestrator.run.launch import run_experiment
from orchestrator.run.plan import expand
from orchestrator.trainers.base import RunContext

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")
pytest.importorskip("wandb")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing import event_accumulator as ea  # noqa: E402

from orchestrator.trackers import wandb as wandb_tracker  # noqa: E402

SMALL = {"n_train": 128, "n_val": 64, "n_test": 64}
TINY = ["train.max_steps_per_epoch=3", "train.diagnostics_every=1", "train.max_eval_batches=1",
        *[f"bench_options.{k}={v}" for k, v in SMALL.items()]]


@pytest.fixture(autouse=True, scope="module")
def _wandb_env(tmp_path_factory):
    """W&B offline and quiet, its caches and settings in a temporary directory."""
    home = tmp_path_factory.mktemp("wandb_home")
    with pytest.MonkeyPatch.context() as mp:
        for key in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_DIR"):
            mp.setenv(key, str(home))
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("WANDB_MODE", "offline")
        yield


def _uri(out: Path) -> str:
    return f"sqlite:///{out / 'trackers' / 'mlflow.db'}"


def parquet_points(out: Path, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """{key: sorted [(step, value)]} of one run's Parquet rows, keyed as docs/trackers.md §1
    says (written out here, independently of orchestrator.trackers.base)."""
    pts: dict[str, list[tuple[int, float]]] = defaultdict(list)
    m = read_table(out, "metrics")
    for r in m[m.run_id == run_id].itertuples():
        key = "/".join(p for p in (r.split, r.task, r.metric) if p)
        pts[key].append((int(r.step), float(r.value)))
    d = read_table(out, "diagnostics")
    for r in d[d.run_id == run_id].itertuples():
        other = r.other_task if isinstance(r.other_task, str) else ""  # NaN: none
        key = "/".join(p for p in ("diag", r.quantity, r.task, other) if p)
        pts[key].append((int(r.step), float(r.value)))
    return {k: sorted(v) for k, v in pts.items()}


def mlflow_runs(out: Path, experiment: str = "multi_digits", uri: str | None = None):
    client = MlflowClient(uri or _uri(out))
    exp = client.get_experiment_by_name(experiment)
    return client, {r.data.tags["mtlx.run_id"]: r for r in client.search_runs([exp.experiment_id])}


def mlflow_points(client, run) -> dict[str, list[tuple[int, float]]]:
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k))
            for k in run.data.metrics}


def tb_points(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = ea.EventAccumulator(str(run_dir), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
    acc.Reload()
    return {t: sorted((e.step, e.value) for e in acc.Scalars(t)) for t in acc.Tags()["scalars"]}


def wandb_points(wandb_dir: Path, run_id: str) -> dict[str, list[tuple[int, float]]]:
    pts: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row in wandb_tracker.history(wandb_dir, run_id):
        for k, v in row.items():
            if not k.startswith("_") and k != "mtlx/step":
                pts[k].append((int(row["mtlx/step"]), float(v)))
    return {k: sorted(v) for k, v in pts.items()}


def wandb_run(wandb_dir: Path, run_id: str) -> tuple[dict, dict]:
    """(config, summary) of a W&B offline run, from its transaction log's records."""
    config, summary = {}, {}
    for path in wandb_tracker.run_logs(wandb_dir, run_id):
        for r in wandb_tracker.read_records(path):
            kind = r.WhichOneof("record_type")
            items = (r.run.config.update if kind == "run" else r.config.update
                     if kind == "config" else r.summary.update if kind == "summary" else [])
            target = summary if kind == "summary" else config
            for i in items:
                target[i.key or "/".join(i.nested_key)] = json.loads(i.value_json)
    return config, summary


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:  # a string param is logged as it is
        return text


def float32(points):
    return {k: [(s, float(np.float32(v))) for s, v in pts] for k, pts in points.items()}


# ---------------------------------------------------------------------------------------
# mtlx run --tracker mlflow --tracker tensorboard --tracker wandb: read back, compare
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tracked(ray_session, tmp_path_factory):
    """The demo's way: each run in its own Ray task (--workers 1), both at once."""
    out = tmp_path_factory.mktemp("tracked")
    code = cli.main(["run", "--benchmark", "multi_digits", "--methods", "ew,cagrad", "--seeds",
                     "0", "--epochs", "2", "--workers", "1", "--out", str(out), "--no-report",
                     "--tracker", "mlflow", "--tracker", "tensorboard", "--tracker", "wandb",
                     "--tracker-option", "wandb.mode=offline", *TINY])
    assert code == 0
    runs = read_table(out, "runs").set_index("run_id")
    assert list(runs.status) == ["finished", "finished"]
    return out, runs


@pytest.mark.ray
def test_mlflow_store_holds_every_parquet_row_params_and_status(tracked):
    out, runs = tracked
    client, by_id = mlflow_runs(out)
    assert set(by_id) == set(runs.index)
    for run_id, row in runs.iterrows():
        r = by_id[run_id]
        assert r.info.run_name == run_id and r.info.status == "FINISHED"
        assert r.data.tags["mtlx.status"] == "finished"
        assert r.data.tags["mtlx.git_commit"] == str(row.git_commit)
        assert mlflow_points(client, r) == parquet_points(out, run_id)
        p = r.data.params
        assert (p["method"], int(p["seed"]), float(p["train.lr"])) == (row.method, row.seed,
                                                                       row.lr)
        hp = {k.removeprefix("hparams."): _value(v) for k, v in p.items()
              if k.startswith("hparams.")}
        assert hp == json.loads(row.hparams)
    cagrad = runs.index[runs.method == "cagrad"][0]
    assert float(by_id[cagrad].data.params["hparams.c"]) == 0.4  # cagrad's c is a param


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_mlflow_ui_serves_the_store(tracked):
    """`mlflow ui --backend-store-uri <the default store>` reads what mtlx wrote: the runs and
    a metric history, through the server's REST API."""
    out, runs = tracked
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", _uri(out), "--host",
         "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        deadline = time.monotonic() + 150
        while True:
            try:
                exp = _get(f"{api}/experiments/get-by-name?experiment_name=multi_digits")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "mlflow ui died"
                time.sleep(0.5)
        req = urllib.request.Request(
            f"{api}/runs/search", method="POST", headers={"Content-Type": "application/json"},
            data=json.dumps({"experiment_ids": [exp["experiment"]["experiment_id"]]}).encode())
        with urllib.request.urlopen(req, timeout=5) as r:
            found = json.loads(r.read())["runs"]
        names = {r["info"]["run_name"]: r["info"]["run_id"] for r in found}
        assert set(names) == set(runs.index)
        run_id = runs.index[0]
        hist = _get(f"{api}/metrics/get-history?run_id={names[run_id]}&metric_key=val/left/accuracy")
        got = sorted((int(m["step"]), m["value"]) for m in hist["metrics"])
        assert got == parquet_points(out, run_id)["val/left/accuracy"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers: a session we started
        proc.wait(timeout=30)


@pytest.mark.ray
def test_tensorboard_event_files_hold_every_parquet_row(tracked):
    out, runs = tracked
    for run_id in runs.index:
        run_dir = out / "trackers" / "tensorboard" / run_id
        assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
        # TensorBoard keeps scalars as float32
        assert tb_points(run_dir) == float32(parquet_points(out, run_id))
        acc = ea.EventAccumulator(str(run_dir), size_guidance={ea.TENSORS: 0})
        acc.Reload()
        text = acc.Tensors("mtlx/config/text_summary")[0].tensor_proto.string_val[0].decode()
        assert f'"method": "{runs.loc[run_id, "method"]}"' in text


@pytest.mark.ray
def test_wandb_offline_run_holds_every_parquet_row_config_and_summary(tracked):
    out, runs = tracked
    wdir = out / "trackers" / "wandb"
    reported = read_table(out, "metrics")
    for run_id, row in runs.iterrows():
        [log] = wandb_tracker.run_logs(wdir, run_id)
        assert log.parent.name.startswith("offline-run-") and log.parent.name.endswith(run_id)
        assert wandb_points(wdir, run_id) == parquet_points(out, run_id)
        config, summary = wandb_run(wdir, run_id)
        assert (config["method"], config["seed"], config["train"]["lr"]) == (row.method,
                                                                             row.seed, row.lr)
        assert summary["mtlx/status"] == "finished"
        mine = reported[(reported.run_id == run_id) & (reported.split == "reported")]
        assert len(mine) == 2
        for r in mine.itertuples():
            assert summary[f"reported/{r.task}/{r.metric}"] == r.value


@pytest.mark.ray
def test_trackers_change_neither_run_ids_nor_the_runs_table(tracked, tmp_path):
    out, runs = tracked
    plain = expand(experiment_from_dict(dict(
        benchmark="multi_digits", methods=["ew", "cagrad"], seeds=[0], workers=0,
        out=str(tmp_path), bench_options=SMALL,
        train={"epochs": 2, "max_steps_per_epoch": 3, "diagnostics_every": 1,
               "max_eval_batches": 1})))
    assert sorted(r.run_id for r in plain) == sorted(runs.index)
    assert "trackers" not in runs.columns


# ---------------------------------------------------------------------------------------
# resume continues the same tracker run; a fresh start replaces it
# ---------------------------------------------------------------------------------------


def _exp(out: Path, **kw):
    base = dict(benchmark="multi_digits", methods=["ew"], seeds=[0], workers=0, out=str(out),
                bench_options=SMALL, trackers=["mlflow", "tensorboard", "wandb"],
                tracker_options={"wandb": {"mode": "offline"}},
                train={"epochs": 3, "max_steps_per_epoch": 2, "diagnostics_every": 1,
                       "max_eval_batches": 1})
    return experiment_from_dict({**base, **kw})


def test_resumed_run_logs_into_the_same_tracker_runs_without_repeating_steps(tmp_path,
                                                                              monkeypatch):
    out = tmp_path / "res"
    save, calls = RunContext.save_checkpoint, []

    def fail_second_checkpoint(self, state):  # epoch 1's rows are written, its checkpoint not
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash before the epoch-1 checkpoint")
        save(self, state)

    monkeypatch.setattr(RunContext, "save_checkpoint", fail_second_checkpoint)
    [first] = run_experiment(_exp(out))
    assert first.status == "failed"
    client, by_id = mlflow_runs(out)
    before = by_id[first.run_id]
    assert before.info.status == "FAILED" and mlflow_points(client, before)
    monkeypatch.setattr(RunContext, "save_checkpoint", save)
    starts = []
    [second] = run_experiment(_exp(out), on_event=lambda e: starts.append(e)
                              if e["kind"] == "start" else None)
    assert second.status == "finished" and starts[0]["epoch"] == 1  # epoch 1 trained again
    expected = parquet_points(out, first.run_id)
    # epoch_time_s differs between the attempts: each tracker keeps the first value per step
    steps = {k: [s for s, _ in v] for k, v in expected.items()}

    def same(points, exact=expected):
        assert {k: [s for s, _ in v] for k, v in points.items()} == steps  # each step once
        assert {k: v for k, v in points.items() if k != "train/epoch_time_s"} == \
            {k: v for k, v in exact.items() if k != "train/epoch_time_s"}

    client, by_id = mlflow_runs(out)
    after = by_id[first.run_id]
    assert after.info.run_id == before.info.run_id and after.info.status == "FINISHED"
    same(mlflow_points(client, after))
    run_dir = out / "trackers" / "tensorboard" / first.run_id
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2
    same(tb_points(run_dir), float32(expected))
    wdir = out / "trackers" / "wandb"
    assert len(wandb_tracker.run_logs(wdir, first.run_id)) == 2  # two attempts, one W&B id
    same(wandb_points(wdir, first.run_id))

    exp = _exp(out, rerun=True)  # --rerun starts the run again: it replaces the tracker runs
    assert [o.status for o in run_experiment(exp)] == ["finished"]
    client, by_id = mlflow_runs(out)
    assert by_id[first.run_id].info.run_id != before.info.run_id and len(by_id) == 1
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    assert len(wandb_tracker.run_logs(wdir, first.run_id)) == 1
    assert mlflow_points(client, by_id[first.run_id]).keys() == expected.keys()


def test_a_tracker_failing_mid_run_is_dropped_and_training_goes_on(tmp_path, monkeypatch,
                                                                   capsys):
    from orchestrator.trackers.mlflow import MlflowTracker

    def down(self, pts, reported):
        raise ConnectionError("tracking server went away")

    monkeypatch.setattr(MlflowTracker, "write", down)
    [o] = run_experiment(_exp(tmp_path, trackers=["mlflow", "tensorboard"]))
    assert o.status == "finished"
    err = capsys.readouterr().err
    assert err.count("tracker mlflow failed (ConnectionError: tracking server went away)") == 1
    assert "the Parquet results are complete" in err
    run_dir = tmp_path / "trackers" / "tensorboard" / o.run_id
    assert tb_points(run_dir) == float32(parquet_points(tmp_path, o.run_id))  # the other goes on


# ---------------------------------------------------------------------------------------
# bad input: before anything runs
# ---------------------------------------------------------------------------------------


def _cli(tmp_path, *extra):
    return cli.main(["run", "--benchmark", "multi_digits", "--methods", "ew", "--seeds", "0",
                     "--epochs", "1", "--workers", "1", "--out", str(tmp_path / "res"),
                     "--no-report", *TINY, *extra])


def test_help_config_lists_the_tracker_options(capsys):
    assert cli.main(["run", "--help-config"]) == 0
    text = capsys.readouterr().out
    for key in ("trackers", "tracker_options.mlflow.tracking_uri",
                "tracker_options.tensorboard.log_dir", "tracker_options.wandb.mode"):
        assert f"  {key} = " in text, key


def test_a_tracker_that_is_not_installed_is_an_error_before_ray(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now fails
    assert _cli(tmp_path, "--tracker", "tensorboard", "--tracker", "mlflow") == 2
    err = capsys.readouterr().err
    assert "--tracker mlflow needs the 'mlflow' package" in err
    assert "pip install 'mtlx[mlflow]'" in err
    assert not (tmp_path / "res" / "runs").exists() and not (tmp_path / "res" / "ray").exists()


@pytest.mark.parametrize("extra, message", [
    (["--tracker", "mlfow"], "unknown tracker 'mlfow' (did you mean 'mlflow'?)"),
    (["--tracker", "wandb", "--tracker", "wandb"], "trackers lists a name twice"),
    (["--tracker", "wandb", "--tracker-option", "wandb.mode=offlin"],
     "tracker_options.wandb.mode must be one of ['online', 'offline', 'disabled']"),
    (["--tracker-option", "mlflow.tracking_url=x"],
     "unknown config key 'tracker_options.mlflow.tracking_url' (did you mean 'tracking_uri'?)"),
    (["--tracker-option", "tracking_uri=x"], "must look like TRACKER.KEY=VALUE"),
    (["--tracker", "mlflow", "--tracker-option", "mlflow.tracking_uri=bogus://nowhere"],
     "--tracker mlflow cannot use"),
    (["--tracker", "mlflow", "--tracker", "tensorboard", "--out", "s3://bucket/exp"],
     "is object storage, where the trackers cannot keep their files (SQLite, event files, W&B "
     "run files); fix: set tracker_options.mlflow.tracking_uri, "
     "tracker_options.tensorboard.log_dir"),
])
def test_bad_tracker_input_is_a_clear_error(extra, message, tmp_path, capsys):
    assert _cli(tmp_path, *extra) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "res" / "runs").exists()


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ray_train_run_logs_from_rank_0_only(ray_session, tmp_path):
    """W = 2 Ray Train workers both train; one tracker run, each step once, equal to Parquet."""
    [o] = run_experiment(_exp(tmp_path, workers=2, trackers=["mlflow", "tensorboard"],
                              train={"epochs": 1, "max_steps_per_epoch": 2,
                                     "diagnostics_every": 1, "max_eval_batches": 1}))
    assert o.status == "finished", o.error
    client, by_id = mlflow_runs(tmp_path)
    assert list(by_id) == [o.run_id] and by_id[o.run_id].info.status == "FINISHED"
    expected = parquet_points(tmp_path, o.run_id)
    assert mlflow_points(client, by_id[o.run_id]) == expected
    run_dir = tmp_path / "trackers" / "tensorboard" / o.run_id
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    assert tb_points(run_dir) == float32(expected)


# ---------------------------------------------------------------------------------------
# mtlx tune: every trial logs like a run
# ---------------------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tune_trials_log_to_mlflow(ray_session, tmp_path):
    from orchestrator.tune import main_tune, parse_tune_args

    out = tmp_path / "res"
    argv = ["--trials", "2", "--out", str(out), "--epochs", "1", "--scheduler", "none",
            "train.max_steps_per_epoch=3", "train.max_eval_batches=1", "--tracker", "mlflow",
            *[f"bench_options.{k}={v}" for k, v in SMALL.items()]]
    assert main_tune(parse_tune_args(argv)) == 0
    runs = read_table(out, "runs").set_index("run_id")
    assert len(runs) == 2 and set(runs.status) == {"finished"}
    client, by_id = mlflow_runs(out)
    assert set(by_id) == set(runs.index)
    for run_id, row in runs.iterrows():
        r = by_id[run_id]
        assert r.data.tags["mtlx.trial_id"] == row.trial_id
        assert r.data.tags["mtlx.search_id"] == row.search_id
        assert mlflow_points(client, r) == parquet_points(out, run_id)
        hp = json.loads(row.hparams)
        assert float(r.data.params["hparams.beta"]) == hp["beta"]


def test_an_rl_run_logs_its_parquet_rows_too(tmp_path):
    """The SAC trainer writes through the same context: success curves, per-loss diagnostics
    and the reported numbers reach the tracker as they reach Parquet."""
    pytest.importorskip("metaworld")
    out = tmp_path / "rl"
    argv = ["run", "--benchmark", "mt1", "--methods", "cagrad", "--seeds", "0", "--workers", "0",
            "--steps", "200", "--out", str(out), "--no-report", "--tracker", "tensorboard",
            "train.eval_every=100", "train.batch_size=16", "bench_options.horizon=20",
            "trainer_options.hidden=16", "trainer_options.layers=1",
            "trainer_options.warmup_steps=50", "trainer_options.buffer_size=500",
            "trainer_options.log_every=50"]
    assert cli.main(argv) == 0
    [run_id] = read_table(out, "runs").run_id
    want = parquet_points(out, run_id)
    assert any(k.startswith("diag/") for k in want) and any("success" in k for k in want)
    assert tb_points(out / "trackers" / "tensorboard" / run_id) == float32(want)
