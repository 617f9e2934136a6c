"""The training function in-process (``--workers 0``): results schema, report, resume,
non-finite losses, sequential plans (CSO), selection. No Ray here (see
test_orchestrator_ray.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

import methods
import tests.orchestrator_bench as toy
from orchestrator import cli
from orchestrator.config import experiment_from_dict
from orchestrator.results import DIAG_SCHEMA, METRIC_SCHEMA, RUN_SCHEMA, read_table
from orchestrator.run.launch import run_experiment
from orchestrator.trainers.selection import select_reported, val_score

SMALL_DIGITS = ["bench_options.n_train=256", "bench_options.n_val=128", "bench_options.n_test=128"]


def _digits_exp(out: Path, **kw):
    base = dict(benchmark="multi_digits", methods=["ew", "pcgrad"], seeds=[0], workers=0,
                out=str(out), bench_options={"n_train": 256, "n_val": 128, "n_test": 128},
                train={"epochs": 3, "diagnostics_every": 2})
    base.update(kw)
    return experiment_from_dict(base)


def _toy_exp(out: Path, **kw):
    base = dict(benchmark=toy.NAME, methods=["ew"], seeds=[0], workers=0, out=str(out),
                plugins=["tests.orchestrator_bench"])
    base.update(kw)
    return experiment_from_dict(base)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """`mtlx run` on multi_digits in-process: 2 methods × 1 seed × 1 short epoch."""
    out = tmp_path_factory.mktemp("digits")
    code = cli.main(["run", "--benchmark", "multi_digits", "--methods", "ew,pcgrad", "--seeds",
                     "0", "--epochs", "1", "--workers", "0", "--out", str(out),
                     "train.max_steps_per_epoch=3", "train.diagnostics_every=1",
                     "--no-report", *SMALL_DIGITS])
    assert code == 0
    return out


def test_results_are_plain_parquet_with_the_documented_schema(digits_run):
    metrics = pd.read_parquet(digits_run / "metrics")
    runs = pd.read_parquet(digits_run / "runs")
    diags = pd.read_parquet(digits_run / "diagnostics")
    assert list(metrics.columns) == METRIC_SCHEMA.names
    assert list(runs.columns) == RUN_SCHEMA.names
    assert list(diags.columns) == DIAG_SCHEMA.names
    assert sorted(runs.method) == ["ew", "pcgrad"] and set(runs.status) == {"finished"}
    for col in ("mtlx_version", "git_commit", "torch_version", "ray_version", "hostname",
                "device", "config_json", "hparams", "wall_time_s"):
        assert runs[col].notna().all(), col
    assert (runs.steps_done == 3).all() and (runs.epochs == 1).all()
    assert set(metrics.split) == {"train", "val", "test", "reported"}
    acc = metrics[(metrics.split == "test") & (metrics.metric == "accuracy")]
    assert sorted(acc.task.unique()) == ["left", "right"]
    assert acc.higher_is_better.all() and acc.value.between(0, 1).all()
    # protocol "last", one evaluation: the reported numbers are the test numbers
    rep = metrics[metrics.split == "reported"].set_index(["run_id", "task", "metric"]).value
    assert rep.equals(acc.set_index(["run_id", "task", "metric"]).value.loc[rep.index])
    # diagnostics every step: weights, gradient norms and the cosine for each step
    pc = diags[diags.method == "pcgrad"]
    assert set(pc.quantity) >= {"loss", "weight", "grad_norm", "cosine"}
    assert sorted(pc.step.unique()) == [0, 1, 2]
    cos = pc[pc.quantity == "cosine"]
    assert (cos.task == "left").all() and (cos.other_task == "right").all()
    assert cos.value.between(-1, 1).all()
    # no temporary files are left behind
    assert not list(digits_run.rglob("*.tmp"))


def test_readers_skip_a_half_written_file(digits_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(digits_run, copy)
    run_dir = next((copy / "metrics").iterdir())
    (run_dir / ".e00099.parquet.deadbeef.tmp").write_bytes(b"PAR1 truncated garbage")
    assert len(pd.read_parquet(copy / "metrics")) == len(pd.read_parquet(digits_run / "metrics"))
    assert len(read_table(copy, "metrics")) == len(pd.read_parquet(digits_run / "metrics"))


def test_report_prints_a_ranked_table_and_writes_plots(digits_run, tmp_path, capsys):
    plots = tmp_path / "plots"
    assert cli.main(["report", str(digits_run), "--plots", str(plots)]) == 0
    out = capsys.readouterr().out
    assert "### multi_digits" in out
    assert "| rank | method | seeds |" in out and "left accuracy ↑" in out
    rows = [line.split("|")[2].strip() for line in out.splitlines() if line.startswith("| ")]
    assert sorted(rows[1:]) == ["ew", "pcgrad"]  # after the header row
    names = sorted(p.name for p in plots.glob("*.png"))
    assert names == ["multi_digits_cosines.png", "multi_digits_curves.png",
                     "multi_digits_grad_norms.png", "multi_digits_weights.png"]
    assert all(p.stat().st_size > 5000 for p in plots.glob("*.png"))
    assert cli.main(["report", str(digits_run), "--format", "csv"]) == 0
    import io

    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert sorted(table.method) == ["ew", "pcgrad"]
    assert {"rank", "left/accuracy_mean", "right/accuracy_std", "seeds"} <= set(table.columns)


def test_finished_runs_are_skipped(digits_run):
    events = []
    exp = _digits_exp(digits_run, train={"epochs": 1, "max_steps_per_epoch": 3,
                                         "diagnostics_every": 1})
    outcomes = run_experiment(exp, on_event=events.append)
    assert [o.status for o in outcomes] == ["skipped", "skipped"]
    assert events == []


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path):
    """Stop each run in its third epoch (after the epoch-2 checkpoint); rerunning the same
    command resumes and ends with exactly the numbers of an uninterrupted run."""
    ref = run_experiment(_digits_exp(tmp_path / "ref", methods=["pcgrad", "famo"]))
    assert [o.status for o in ref] == ["finished", "finished"]

    class Killed(Exception):
        pass

    def kill_in_epoch_3(event):
        if event.get("kind") == "progress" and event["epoch"] == 3:
            raise Killed("simulated crash")

    out = tmp_path / "resumed"
    first = run_experiment(_digits_exp(out, methods=["pcgrad", "famo"]), on_event=kill_in_epoch_3)
    assert [o.status for o in first] == ["failed", "failed"]
    runs = read_table(out, "runs")
    assert set(runs.status) == {"failed"} and (runs.epochs_done == 2).all()
    starts = []
    second = run_experiment(_digits_exp(out, methods=["pcgrad", "famo"]),
                            on_event=lambda e: starts.append(e) if e["kind"] == "start" else None)
    assert [o.status for o in second] == ["finished", "finished"]
    assert [e["epoch"] for e in starts] == [2, 2]  # resumed at the third epoch (index 2)

    def numbers(root):
        m = read_table(root, "metrics")
        m = m[m.metric != "epoch_time_s"]
        return m.sort_values(["run_id", "split", "epoch", "task", "metric"]).reset_index(drop=True)

    a, b = numbers(tmp_path / "ref"), numbers(out)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    for o in ref:
        sa = torch.load(tmp_path / "ref" / "checkpoints" / o.run_id / "state.pt", weights_only=False)
        sb = torch.load(out / "checkpoints" / o.run_id / "state.pt", weights_only=False)
        for k, v in sa["model"].items():
            assert torch.equal(v, sb["model"][k]), k
        assert sa["step"] == sb["step"] == 3 * 4


def test_nonfinite_loss_stops_that_run_with_a_clear_message(tmp_path):
    # 64 samples / batch 8 = 8 steps per epoch; task b's loss is NaN from the 11th forward
    exp = _toy_exp(tmp_path, methods=["ew", "imtl_g"], bench_options={"nan_at_step": 10},
                   train={"epochs": 3})
    outcomes = run_experiment(exp)
    assert [o.status for o in outcomes] == ["nonfinite", "nonfinite"]  # the second still ran
    msg = outcomes[0].error
    assert "loss of task 'b' is nan at epoch 1, step 10" in msg
    runs = read_table(tmp_path, "runs")
    assert set(runs.status) == {"nonfinite"} and runs.error.str.contains("task 'b'").all()
    m = read_table(tmp_path, "metrics")
    assert set(m.epoch) == {0}  # epoch 0's results are kept
    assert not (m.split == "reported").any()


def test_sequential_plan_and_model_stats_for_cso(tmp_path):
    """CSO on a per-task-BatchNorm model: Phase 1 steps are one optimiser step per task, Phase
    2 gets connection strengths named like the model's parameters (else CSO raises)."""
    exp = _toy_exp(tmp_path, methods=["cso"], bench_options={"task_bn": True},
                   train={"epochs": 2, "optimizer": "adam", "lr": 0.01})
    [o] = run_experiment(exp)
    assert o.status == "finished", o.error
    # replay CSO's plan draws: same seed, 8 steps in each of 2 epochs
    m = methods.create("cso", 2, seed=0)
    plans = [m.plan_step(e, 2) for e in (0, 1) for _ in range(8)]
    assert plans[:8] == ["sequential"] * 8 and "joint" in plans[8:]
    seq, joint = plans.count("sequential"), plans.count("joint")
    state = torch.load(tmp_path / "checkpoints" / o.run_id / "state.pt", weights_only=False)
    names = [n for n, _ in _named_params(exp)]
    steps = {n: int(state["optimizer"]["state"][i]["step"])
             for i, n in enumerate(names) if i in state["optimizer"]["state"]}
    assert steps["trunk.weight"] == 2 * seq + joint  # T steps per sequential batch
    assert steps["heads.a.weight"] == seq + joint  # a head moves in its own phase-1 step only
    assert steps["bn.b.weight"] == seq + joint


def _named_params(exp):
    bench = toy.ToyBench(**exp.bench_options)
    return list(bench.build_model().named_parameters())


def test_stl_runs_become_the_reference(tmp_path, capsys):
    exp = _toy_exp(tmp_path, methods=["stl", "ew"], train={"epochs": 1})
    outcomes = run_experiment(exp)
    assert [o.status for o in outcomes] == ["finished"] * 3
    m = read_table(tmp_path, "metrics")
    stl_a = m[m.run_id == next(o.run_id for o in outcomes if ".stl.a." in o.run_id)]
    assert set(stl_a[stl_a.split == "test"].task) == {"a"}  # only its own task's metrics
    assert cli.main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "stl runs in this results directory" in out
    row = next(line for line in out.splitlines() if line.startswith("| ") and "| stl |" in line)
    assert "| 0.00 | 0.00 |" in row  # STL against itself


def test_report_uses_the_published_reference_and_ranks_by_delta_m(tmp_path, capsys):
    run_experiment(_toy_exp(tmp_path, methods=["ew", "imtl_g"], train={"epochs": 1}))
    assert cli.main(["report", str(tmp_path), "--format", "csv"]) == 0
    import io

    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert table.reference.str.contains("published single-task reference").all()
    assert list(table.delta_m_mean) == sorted(table.delta_m_mean)
    # Δm recomputed by hand from the reported rows and the toy's reference
    m = read_table(tmp_path, "metrics")
    ref = toy.ToyBench.stl_reference
    for r in table.itertuples():
        rows = m[(m.split == "reported") & (m.method == r.method)].set_index(["task", "metric"]).value
        terms = [(rows["a", "mse"] - ref["a"]["mse"]) / ref["a"]["mse"],
                 -(rows["b", "acc"] - ref["b"]["acc"]) / ref["b"]["acc"],
                 (rows["b", "ce"] - ref["b"]["ce"]) / ref["b"]["ce"]]
        assert math.isclose(r.delta_m_mean, 100 * sum(terms) / 3, rel_tol=1e-9)


def test_selection_rules():
    spec = {"a": [toy.Metric("acc", True)]}
    hist = [
        {"epoch": 0, "val": {"a": {"acc": 0.5}}, "test": {"a": {"acc": 0.1}}, "score": 3.0},
        {"epoch": 1, "val": {"a": {"acc": 0.9}}, "test": {"a": {"acc": 0.2}}, "score": 1.0},
        {"epoch": 2, "val": {"a": {"acc": 0.9}}, "test": {"a": {"acc": 0.3}}, "score": 1.0},
        {"epoch": 3, "val": {"a": {"acc": 0.6}}, "test": {"a": {"acc": 0.4}}, "score": 2.0},
    ]
    assert select_reported(hist, "best_val", 1, "test") == ({"a": {"acc": 0.2}}, [1])  # earliest tie
    vals, epochs = select_reported(hist, "last", 3, "test")
    assert epochs == [1, 2, 3] and math.isclose(vals["a"]["acc"], 0.3)
    assert select_reported(hist, "last", 1, "test") == ({"a": {"acc": 0.4}}, [3])
    # the validation score: Δm vs the reference, else −Δp vs the first evaluation, else loss
    s, name = val_score({"a": {"acc": 0.9}}, {"a": 0.3}, spec, {"a": {"acc": 1.0}}, None)
    assert name == "val_delta_m" and math.isclose(s, 10.0)
    s, name = val_score({"a": {"acc": 0.9}}, {"a": 0.3}, spec, None, {"a": {"acc": 0.5}})
    assert name == "val_neg_delta_p_first" and math.isclose(s, -80.0)
    s, name = val_score({"a": {"acc": 0.9}}, {"a": 0.3}, spec, None, {"a": {"acc": 0.0}})
    assert name == "val_loss" and math.isclose(s, 0.3)


def test_progress_board_draws_one_live_line_on_a_terminal():
    import io

    from orchestrator.run.progress import ProgressBoard

    buf = io.StringIO()
    board = ProgressBoard(2, buf, tty=True)
    board.handle({"kind": "progress", "run_id": "r1", "label": "ew s0", "epoch": 2, "epochs": 5,
                  "step": 10, "steps": 94, "losses": {"left": 0.5, "right": 0.25}, "eta_s": 75})
    board.handle({"kind": "progress", "run_id": "r2", "label": "famo s0", "epoch": 1,
                  "epochs": 5, "step": 3, "steps": 94, "losses": {"left": 1.0}, "eta_s": 5})
    live = buf.getvalue().split("\r\033[K")[-1]
    assert live.startswith("[0/2] ew s0 e2/5 10/94 left 0.5 right 0.25 eta 1:15 | famo s0")
    board.finished("ew s0", "r1", "finished", 12.34)
    assert "[1/2] ew s0: done in 12.3s\n" in buf.getvalue()
    assert buf.getvalue().rstrip().endswith("eta 5.0s")  # the live line, now only famo


def test_runs_table_columns_come_from_the_config_dataclasses(tmp_path):
    """Every TrainConfig / RunConfig field is a runs-table column with its value (a new field
    reaches Parquet by itself; eval_batch_size and diagnostics_every once did not)."""
    import dataclasses

    from orchestrator.config import RunConfig, TrainConfig
    from orchestrator.results.schemas import RUN_FIELDS_EXCLUDED, config_columns

    names = set(RUN_SCHEMA.names)
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= names
    assert {f.name for f in dataclasses.fields(RunConfig)} - set(RUN_FIELDS_EXCLUDED) <= names
    cfg = RunConfig(benchmark="b", method="m", seed=1, hparams={"c": 0.5},
                    train=TrainConfig(eval_batch_size=7, diagnostics_every=3, lr=0.25))
    row = config_columns(cfg)
    assert (row["eval_batch_size"], row["diagnostics_every"], row["lr"]) == (7, 3, 0.25)
    assert row["hparams"] == '{"c": 0.5}' and row["run_id"] == cfg.run_id
    assert RUN_SCHEMA.field("eval_batch_size").type == "int64"
    assert RUN_SCHEMA.field("gpus_per_worker").type == "double"
    # and through a real run into Parquet
    run_experiment(_toy_exp(tmp_path, train={"epochs": 1, "eval_batch_size": 4,
                                             "diagnostics_every": 2}))
    runs = read_table(tmp_path, "runs")
    assert list(runs.eval_batch_size) == [4] and list(runs.diagnostics_every) == [2]
