"""Results, checkpoints and leases on S3, through a real S3-compatible server (moto's server
mode on 127.0.0.1, started here): the store's round trip, ``mtlx run --out s3://...`` and
``mtlx report s3://...`` from the CLI, resume from an S3 checkpoint after a SIGKILL, and the
errors for an unreachable bucket — all before Ray starts."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

from orchestrator import cli  # noqa: E402
from orchestrator.config import StorageConfig, experiment_from_dict  # noqa: E402
from orchestrator.results import ResultsStore, Unreadable, read_table  # noqa: E402
from orchestrator.run.launch import run_experiment  # noqa: E402
from orchestrator.trainers.base import RunContext  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUCKET = "mtlx-test"
SMALL = {"n_train": 128, "n_val": 64, "n_test": 64}
CLI = ["--benchmark", "multi_digits", "--methods", "ew", "--seeds", "0",
       *[f"bench_options.{k}={v}" for k, v in SMALL.items()]]
#: environment of every test here: the server, test credentials, no instance-metadata lookups
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def server():
    """A moto S3 server on a free port of 127.0.0.1 (stopped at the end of the module)."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    yield f"http://{host}:{port}"
    srv.stop()


@pytest.fixture
def s3(server, monkeypatch, tmp_path):
    """The server's endpoint in the environment (as a user exports it) and a fresh bucket."""
    for key, value in {**AWS_ENV, "AWS_ENDPOINT_URL": server}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws of the machine
    client = boto3.client("s3", endpoint_url=server, region_name="us-east-1")
    name = f"{BUCKET}-{len(client.list_buckets()['Buckets'])}"
    client.create_bucket(Bucket=name)
    return client, name


def _keys(client, bucket, prefix=""):
    """The objects under ``prefix``, without the empty ``.../`` directory markers pyarrow
    leaves when it deletes the last object of a prefix."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for p in pages for o in p.get("Contents", [])
                  if not (o["Key"].endswith("/") and o["Size"] == 0))


def _rows(run_id, n=3):
    return [{"run_id": run_id, "benchmark": "b", "method": "ew", "seed": 0, "split": "val",
             "epoch": e, "step": e, "task": "t", "metric": "acc", "value": 0.5 + e,
             "higher_is_better": True} for e in range(n)]


def test_store_round_trip_on_s3(s3):
    client, bucket = s3
    uri = f"s3://{bucket}/exp"
    store = ResultsStore(uri)
    assert store.root == uri  # not the local folder "s3:/bucket/exp"
    store.write_metrics("r1", "e00000", _rows("r1"))
    store.write_diagnostics("r1", "e00000", [{"run_id": "r1", "benchmark": "b", "method": "ew",
                                              "seed": 0, "epoch": 0, "step": 1,
                                              "quantity": "weight", "task": "t",
                                              "other_task": None, "value": 1.0}])
    store.write_run({"run_id": "r1", "status": "running"})
    assert store.read_run("r1")["status"] == "running"
    assert store.read_run("missing") is None
    assert list(read_table(uri, "metrics").value) == [0.5, 1.5, 2.5]
    assert len(read_table(uri, "diagnostics")) == 1
    # no temporaries and no multipart leftovers on an object store: exactly the files
    assert _keys(client, bucket) == ["exp/diagnostics/r1/e00000.parquet",
                                     "exp/metrics/r1/e00000.parquet", "exp/runs/r1.parquet"]
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads") is None

    with store.leases(["r1"]):  # written through the same storage: visible on the bucket
        lease = json.loads(client.get_object(Bucket=bucket, Key="exp/leases/r1.json")["Body"].read())
        assert lease["pid"] == os.getpid() and lease["host"]
        assert not store.is_lost({"run_id": "r1", "status": "running"})
    assert "exp/leases/r1.json" not in _keys(client, bucket)
    assert store.is_lost({"run_id": "r1", "status": "running"})

    ctx = RunContext(run_id="r1", out=uri)
    assert ctx.load_checkpoint() is None
    ctx.save_checkpoint({"step": 1, "w": torch.arange(3.0)})
    ctx.save_checkpoint({"step": 2, "w": torch.arange(3.0) * 2})
    assert ctx.load_checkpoint()["step"] == 2
    prev = torch.load(io.BytesIO(store.read_checkpoint("r1", "state.prev.pt")), weights_only=False)
    assert prev["step"] == 1  # the one before, kept by a server-side copy
    # a damaged newest checkpoint: resume falls back to the previous one
    client.put_object(Bucket=bucket, Key="exp/checkpoints/r1/state.pt", Body=b"truncated")
    assert ctx.load_checkpoint()["step"] == 1

    store.clear_run("r1")  # --rerun: nothing of the run is left
    assert _keys(client, bucket) == []


def test_an_unreadable_object_is_skipped_and_listed(s3):
    client, bucket = s3
    uri = f"s3://{bucket}/exp"
    store = ResultsStore(uri)
    store.write_metrics("good", "e00000", _rows("good"))
    client.put_object(Bucket=bucket, Key="exp/metrics/bad/e00000.parquet", Body=b"not parquet")
    client.put_object(Bucket=bucket, Key="exp/runs/bad.parquet", Body=b"")
    problems: list[Unreadable] = []
    m = read_table(uri, "metrics", problems)
    assert set(m.run_id) == {"good"} and len(m) == 3
    assert [p.path for p in problems] == [f"{uri}/metrics/bad/e00000.parquet"]
    assert problems[0].run_id == "bad" and "--rerun" in str(problems[0])
    assert store.read_run("bad", problems) is None
    assert problems[-1].path == f"{uri}/runs/bad.parquet"


def test_cli_run_and_report_on_s3(s3, tmp_path, capsys):
    """``mtlx run --out s3://...`` in a fresh process, then ``mtlx report s3://...``."""
    client, bucket = s3
    uri = f"s3://{bucket}/exp"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", *CLI, "--epochs", "1", "--workers", "0",
         "train.max_steps_per_epoch=2", "train.max_eval_batches=1", "--out", uri],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "s3:").exists()  # nothing written to a local "s3:" folder
    run_id = _finished_run(client, bucket, uri)
    assert cli.main(["report", uri]) == 0
    out = capsys.readouterr().out
    assert "multi_digits" in out and "| ew " in out
    # the same command again finds the finished run in the bucket and skips it
    assert cli.main(["run", *CLI, "--epochs", "1", "--workers", "0", "--no-report",
                     "train.max_steps_per_epoch=2", "train.max_eval_batches=1",
                     "--out", uri]) == 0
    assert f"{run_id}" in capsys.readouterr().err
    assert _finished_run(client, bucket, uri) == run_id


def _finished_run(client, bucket, uri):
    prefix = uri.split("/", 3)[3]
    keys = _keys(client, bucket, f"{prefix}/")
    [run_id] = [k.removeprefix(f"{prefix}/runs/").removesuffix(".parquet") for k in keys
                if k.startswith(f"{prefix}/runs/")]
    assert f"{prefix}/checkpoints/{run_id}/state.pt" in keys
    assert any(k.startswith(f"{prefix}/metrics/{run_id}/") for k in keys)
    assert not any(k.startswith(f"{prefix}/leases/") or k.endswith(".tmp") for k in keys)
    assert ResultsStore(uri).read_run(run_id)["status"] == "finished"
    return run_id


@pytest.mark.ray
def test_a_ray_task_writes_the_run_to_s3(s3, ray_session):
    """``--workers 1``: the run executes in a Ray worker process, which opens the store from
    the location and the options the run carries (the endpoint resolved in the driver)."""
    client, bucket = s3
    uri = f"s3://{bucket}/ray"
    exp = experiment_from_dict(dict(
        benchmark="multi_digits", methods=["ew"], seeds=[0], workers=1, out=uri,
        bench_options=SMALL, train={"epochs": 1, "max_steps_per_epoch": 2, "max_eval_batches": 1}))
    [o] = run_experiment(exp)
    assert o.status == "finished", o.error
    assert _finished_run(client, bucket, uri) == o.run_id
    assert ResultsStore(uri).read_run(o.run_id)["hostname"]


PLUGIN = '''
import os, time
from orchestrator.trainers import base

_save, _load = base.RunContext.save_checkpoint, base.RunContext.load_checkpoint

def save(self, state):
    _save(self, state)
    if os.environ.get("MTLX_TEST_MODE") == "kill":  # the test kills this process now
        open(os.environ["MTLX_TEST_FILE"], "w").write(str(state["epoch"]))
        time.sleep(300)

def load(self):
    state = _load(self)
    if os.environ.get("MTLX_TEST_MODE") == "record":
        open(os.environ["MTLX_TEST_FILE"], "w").write(str(state and state["epoch"]))
    return state

base.RunContext.save_checkpoint, base.RunContext.load_checkpoint = save, load
'''


def _run_cli(out, tmp_path, mode):
    signal_file = tmp_path / f"{mode}.txt"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}", "MTLX_TEST_MODE": mode,
           "MTLX_TEST_FILE": str(signal_file)}
    cmd = [sys.executable, "-m", "orchestrator", "run", *CLI, "--epochs", "3", "--workers", "0",
           "--no-report", "train.max_steps_per_epoch=2", "train.max_eval_batches=1",
           "plugins=[mtlx_test_s3_plugin]", "--out", out]
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True), signal_file


def _numbers(root):
    m = read_table(root, "metrics")
    m = m[m.metric != "epoch_time_s"]
    return m.sort_values(["run_id", "split", "epoch", "task", "metric"]).reset_index(drop=True)


def test_resume_from_an_s3_checkpoint_after_a_kill(s3, tmp_path):
    client, bucket = s3
    (tmp_path / "mtlx_test_s3_plugin.py").write_text(PLUGIN)
    uri = f"s3://{bucket}/killed"
    proc, saved = _run_cli(uri, tmp_path, "kill")
    for _ in range(1200):  # polling, not timing: start-up and one epoch
        if saved.exists() or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert saved.read_text() == "0", proc.stderr.read() if proc.poll() is not None else ""
    proc.kill()  # SIGKILL right after the first checkpoint reached the bucket
    proc.wait()
    [run_id] = {k.split("/")[2] for k in _keys(client, bucket, "killed/checkpoints/")}
    assert ResultsStore(uri).read_run(run_id)["status"] == "running"  # killed, not recorded

    proc, loaded = _run_cli(uri, tmp_path, "record")
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert loaded.read_text() == "0"  # resumed from the S3 checkpoint of epoch 0
    assert "taking over the stale lease" in proc.stderr.read()
    assert ResultsStore(uri).read_run(run_id)["status"] == "finished"

    ref = experiment_from_dict(dict(
        benchmark="multi_digits", methods=["ew"], seeds=[0], workers=0, out=str(tmp_path / "ref"),
        bench_options=SMALL, train={"epochs": 3, "max_steps_per_epoch": 2, "max_eval_batches": 1}))
    [o] = run_experiment(ref)
    assert o.run_id == run_id and o.status == "finished"
    pd.testing.assert_frame_equal(_numbers(tmp_path / "ref"), _numbers(uri), check_exact=True)


# -- an unusable location: a clear error (exit code 2) before Ray starts ---------------------

def _cli_error(capsys, uri, *extra):
    import ray

    was_up = ray.is_initialized()
    code = cli.main(["run", *CLI, "--epochs", "1", "--workers", "1", "--no-report",
                     "--out", uri, *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert ray.is_initialized() == was_up  # no Ray started for a bad --out
    return err.strip().splitlines()[0]


def test_unknown_bucket_is_a_clear_error(s3, capsys, server):
    first = _cli_error(capsys, "s3://no-such-bucket/exp")
    assert first.startswith("mtlx: error: --out 's3://no-such-bucket/exp' cannot be used: "
                            "bucket 'no-such-bucket' does not exist")
    assert f"endpoint {server} (from AWS_ENDPOINT_URL)" in first and "aws s3 mb" in first


def test_refused_endpoint_is_a_clear_error(s3, capsys, monkeypatch):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _, bucket = s3
    first = _cli_error(capsys, f"s3://{bucket}/exp", "--storage-option",
                       f"endpoint_url=http://127.0.0.1:{port}", "--storage-option",
                       "retry_attempts=1")
    assert "cannot connect to the storage endpoint" in first
    assert f"endpoint http://127.0.0.1:{port} (from storage.endpoint_url)" in first


def test_missing_or_rejected_credentials_are_a_clear_error(s3, capsys, monkeypatch, server):
    import requests

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    _, bucket = s3
    requests.post(f"{server}/moto-api/reset-auth", data=b"0").raise_for_status()  # auth on
    try:
        first = _cli_error(capsys, f"s3://{bucket}/exp")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unknown-to-the-server")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
        denied = _cli_error(capsys, f"s3://{bucket}/exp")
    finally:
        requests.post(f"{server}/moto-api/reset-auth", data=b"inf").raise_for_status()
    assert "cannot be used: no S3 credentials found" in first
    assert "credentials: none found (tried AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" in first
    assert "fix: export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in first
    assert "cannot be used: access denied" in denied
    assert "credentials: environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)" in denied


def test_storage_options_are_checked_with_did_you_mean(capsys):
    code = cli.main(["run", *CLI, "--out", "s3://any-bucket/x", "--storage-option",
                     "endpont_url=http://127.0.0.1:9"])
    assert code == 2
    assert "unknown config key 'storage.endpont_url' (did you mean 'endpoint_url'?)" in \
        capsys.readouterr().err
    assert StorageConfig().retry_attempts == 3


@pytest.mark.ray
@pytest.mark.slow
def test_tune_on_s3_writes_search_state_and_best_yaml(s3, ray_session, capsys):
    """``mtlx tune --out s3://...``: trials' runs, the search's tables, ``best.yaml`` and
    Tune's own experiment state land in the bucket; ``mtlx report`` shows the search."""
    from orchestrator.tune import main_tune, parse_tune_args

    client, bucket = s3
    uri = f"s3://{bucket}/tune"
    argv = ["--trials", "1", "--out", uri, "--epochs", "1", "train.max_steps_per_epoch=2",
            "train.max_eval_batches=1"]
    assert main_tune(parse_tune_args(argv)) == 0, capsys.readouterr().err
    printed = capsys.readouterr()
    assert "benchmark: multi_digits" in printed.out  # best.yaml, read back from the bucket
    keys = _keys(client, bucket, "tune/")
    [sid] = {k.split("/")[2] for k in keys if k.startswith("tune/searches/")}
    for name in ("summary.parquet", "trials.parquet", "best.yaml", "tune/tuner.pkl"):
        assert f"tune/searches/{sid}/{name}" in keys, name
    runs = read_table(uri, "runs")
    assert len(runs) == 1 and set(runs.status) == {"finished"} and set(runs.search_id) == {sid}
    assert cli.main(["report", uri]) == 0
    assert f"### search {sid}" in capsys.readouterr().out
