"""Honest run states: a run whose losses blow up ends ``diverged``, one whose per-task
gradients become NaN/inf ends ``nonfinite`` (naming task and step), neither is ranked, and a
rerun skips both unless ``--rerun``."""

from __future__ import annotations

import math

import pytest
import torch

from orchestrator import cli
from orchestrator.config import RunConfig, TrainConfig, experiment_from_dict
from orchestrator.report import Results, report_text
from orchestrator.results import read_table
from orchestrator.run.launch import run_experiment
from orchestrator.trainers.base import Diverged, DivergenceGuard, first_nonfinite_grad

SMALL = {"n_train": 128, "n_val": 64, "n_test": 64}


def _exp(out, methods, **train):
    return experiment_from_dict(dict(
        benchmark="multi_digits", methods=methods, seeds=[0], workers=0, out=str(out),
        bench_options=SMALL, train={"epochs": 1, "max_steps_per_epoch": 3, **train}))


@pytest.fixture(scope="module")
def blown_up(tmp_path_factory):
    """lr = 1e6 on multi_digits: ew's losses reach ~1e29 (finite); pcgrad's Gramian overflows."""
    out = tmp_path_factory.mktemp("blown")
    outcomes = run_experiment(_exp(out, ["ew", "pcgrad"], lr=1e6))
    return out, outcomes


def test_exploding_losses_end_diverged_naming_task_step_and_fix(blown_up):
    out, outcomes = blown_up
    ew = outcomes[0]
    assert ew.status == "diverged"
    assert "task 'left'" in ew.error and "step 1" in ew.error
    assert "divergence_factor=10000" in ew.error and "train.lr" in ew.error
    runs = read_table(out, "runs").set_index("run_id")
    assert runs.loc[ew.run_id, "status"] == "diverged"


def test_nonfinite_gradients_end_nonfinite_not_failed(blown_up):
    out, outcomes = blown_up
    pc = outcomes[1]
    assert pc.status == "nonfinite"
    assert "squared gradient norm of task 'left' is inf at epoch 0, step 1" in pc.error
    assert read_table(out, "runs").set_index("run_id").loc[pc.run_id, "status"] == "nonfinite"


def test_diverged_and_nonfinite_runs_are_listed_not_ranked(blown_up):
    out, outcomes = blown_up
    text = report_text(Results.load(out), "multi_digits")
    for o in outcomes:
        assert f"not in the table: {o.run_id} ({o.status}" in text
    assert "| 1 |" not in text  # no ranked row at all


def test_reruns_skip_them_unless_rerun(blown_up):
    out, outcomes = blown_up
    again = run_experiment(_exp(out, ["ew", "pcgrad"], lr=1e6))
    assert [o.status for o in again] == ["skipped", "skipped"]
    exp = _exp(out, ["ew"], lr=1e6)
    exp.rerun = True
    [o] = run_experiment(exp)
    assert o.status == "diverged"


def test_cli_exit_code_is_not_success(tmp_path):
    code = cli.main(["run", "--benchmark", "multi_digits", "--methods", "ew", "--epochs", "1",
                     "--workers", "0", "--seeds", "0", "--out", str(tmp_path), "--no-report",
                     "train.lr=1e6", "train.max_steps_per_epoch=2",
                     *[f"bench_options.{k}={v}" for k, v in SMALL.items()]])
    assert code == 1
    assert set(read_table(tmp_path, "runs").status) == {"diverged"}


def test_a_normal_run_does_not_trip_the_default_bound(tmp_path):
    [o] = run_experiment(_exp(tmp_path, ["ew"]))
    assert o.status == "finished"


def test_divergence_factor_is_configurable_and_unset_keeps_run_ids():
    base = RunConfig(benchmark="multi_digits", method="ew", seed=0, train=TrainConfig(lr=1e-3))
    assert "divergence_factor" not in base.identity()["train"]
    other = RunConfig(benchmark="multi_digits", method="ew", seed=0,
                      train=TrainConfig(lr=1e-3, divergence_factor=1e8))
    assert other.identity()["train"]["divergence_factor"] == 1e8
    assert other.run_id != base.run_id


def test_a_larger_factor_lets_the_same_run_go_on(tmp_path):
    # at 1e40 the ew run's 1e29 losses are "expected": it then ends on the NaN that follows
    [o] = run_experiment(_exp(tmp_path, ["ew"], lr=1e6, divergence_factor=1e40))
    assert o.status in ("nonfinite", "finished") and o.status != "diverged"


def test_guard_compares_each_task_with_its_own_first_loss_and_survives_resume():
    g = DivergenceGuard("r", ["a", "b"], factor=10.0)
    g.check(torch.tensor([1.0, 0.0]), 0, 0)  # b starts at 0: the floor 1e-3 applies
    g.check(torch.tensor([9.9, 0.0099]), 0, 1)
    with pytest.raises(Diverged, match="task 'b'.*step 2"):
        g.check(torch.tensor([1.0, 0.011]), 0, 2)
    resumed = DivergenceGuard("r", ["a", "b"], factor=10.0)
    resumed.load_state_dict(g.state_dict())
    with pytest.raises(Diverged, match="task 'a'"):
        resumed.check(torch.tensor([10.5, 0.0]), 1, 3)
    DivergenceGuard("r", ["a"], factor=None).check(torch.tensor([1e30]), 0, 0)  # off: no-op


def test_first_nonfinite_grad_names_the_overflowing_task():
    w = torch.ones(3, requires_grad=True)
    losses = torch.stack([(w * 1.0).sum(), (w * 1e30).sum() * 1e10])
    assert first_nonfinite_grad(losses, [w]) == (1, math.inf)
    assert first_nonfinite_grad(torch.stack([w.sum(), 2 * w.sum()]), [w]) is None


# ---------------------------------------------------------------------------------------
# one writer per run (leases), lost runs, SIGTERM
# ---------------------------------------------------------------------------------------

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from orchestrator.results import ResultsStore  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLI = ["--benchmark", "multi_digits", "--methods", "ew", "--seeds", "0", "--workers", "0",
       "--no-report", *[f"bench_options.{k}={v}" for k, v in SMALL.items()]]


def _lease(out, run_id, pid, age_s=0.0):
    path = ResultsStore(out).lease_path(run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"owner": "someone", "host": socket.gethostname(), "pid": pid,
                                "since": "earlier", "heartbeat": time.time() - age_s}))


@pytest.fixture
def other_process():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield p.pid
    p.kill()
    p.wait()


@pytest.fixture
def finished(tmp_path):
    [o] = run_experiment(_exp(tmp_path, ["ew"]))
    assert o.status == "finished"
    return tmp_path, o.run_id


def test_a_second_writer_is_refused_naming_the_holder(finished, other_process, capsys):
    out, run_id = finished
    store = ResultsStore(out)
    store.write_run({**store.read_run(run_id), "status": "running"})  # the other one's run
    _lease(out, run_id, other_process)
    before = sorted((p, p.stat().st_mtime_ns) for p in out.rglob("*.parquet"))
    for extra in ([], ["--rerun"]):  # --rerun would delete a live run's files: refused too
        code = cli.main(["run", *CLI, "--epochs", "1", "train.max_steps_per_epoch=3",
                         "--out", str(out), *extra])
        assert code == 2
        err = capsys.readouterr().err
        assert f"run {run_id} is being written by someone@{socket.gethostname()} pid " \
               f"{other_process}" in err
    assert sorted((p, p.stat().st_mtime_ns) for p in out.rglob("*.parquet")) == before


def test_a_stale_lease_is_taken_over_and_said(finished, other_process, capsys):
    out, run_id = finished
    _lease(out, run_id, other_process, age_s=10_000)
    exp = _exp(out, ["ew"])
    exp.rerun = True
    [o] = run_experiment(exp)
    assert o.status == "finished"
    assert "taking over the stale lease of someone@" in capsys.readouterr().err
    assert not ResultsStore(out).lease_path(run_id).exists()  # released at the end


def test_running_without_a_live_writer_is_reported_lost(finished, other_process):
    out, run_id = finished
    store = ResultsStore(out)
    store.write_run({**store.read_run(run_id), "status": "running"})
    assert "(lost" in report_text(Results.load(out), "multi_digits")
    _lease(out, run_id, other_process)  # a live writer: still running
    assert "(running" in report_text(Results.load(out), "multi_digits")


def _start(out):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "run", *CLI, "--epochs",
                             "400", "train.max_steps_per_epoch=1", "train.max_eval_batches=1",
                             "--out", str(out)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_an_epoch(proc, out, after=0):
    store = ResultsStore(out)
    for _ in range(600):  # polling, not timing: up to a minute for start-up and one epoch
        rows = list((out / "runs").glob("*.parquet")) if (out / "runs").is_dir() else []
        row = store.read_run(rows[0].name.removesuffix(".parquet")) if rows else None
        if row and row["status"] == "running" and (row.get("epochs_done") or 0) > after:
            return row["run_id"]
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.1)
    raise AssertionError("the run never finished an epoch")


def test_sigterm_is_an_interrupt_and_sigkill_shows_lost(tmp_path):
    out = tmp_path / "out"
    proc = _start(out)
    run_id = _wait_for_an_epoch(proc, out)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 130
    store = ResultsStore(out)
    assert store.read_run(run_id)["status"] == "interrupted"
    assert (store.checkpoint_dir(run_id) / "state.pt").is_file()
    assert not store.lease_path(run_id).exists()

    proc = _start(out)  # resumes; then SIGKILL: nothing can record it
    _wait_for_an_epoch(proc, out, after=store.read_run(run_id)["epochs_done"])
    proc.kill()
    proc.wait()
    assert store.read_run(run_id)["status"] == "running"
    assert f"{run_id} (lost" in report_text(Results.load(out), "multi_digits")
