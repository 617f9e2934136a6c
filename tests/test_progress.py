"""Progress where work is long: ``mtlx tune``'s line (trials done / running / pending, best
objective so far, ETA), ``mtlx reproduce``'s grid-wide ``[k/n]`` and ETA, and long
evaluations' ``evaluating`` lines — each on a tiny real run, output not a terminal (as CI
logs see it), plus the terminal rendering of the boards."""

from __future__ import annotations

import io
import re
import time

import pytest

from orchestrator import cli
from orchestrator.run import progress
from orchestrator.run.progress import ProgressBoard, SearchBoard, overall
from orchestrator.trainers import eval_progress
from orchestrator.tune import main_tune, parse_tune_args

TINY = ["train.max_steps_per_epoch=3", "train.max_eval_batches=2", "bench_options.n_train=256",
        "bench_options.n_val=64", "bench_options.n_test=64"]


def test_search_board_counts_trials_and_keeps_the_best_full_trial():
    buf = io.StringIO()
    b = SearchBoard(4, "val_delta_m", "min", epochs=3, stream=buf, tty=False)
    for t in ("t0000", "t0001"):
        b.started(t)
    b.result("t0000", 2)
    assert buf.getvalue() == ""  # not a terminal: a line per ended trial only
    b.ended("t0001", 1.5, 1)  # stopped by ASHA after 1 of 3 epochs: not comparable
    assert buf.getvalue().splitlines()[-1].startswith(
        "[trials 1/4 done, 1 running, 2 pending] best val_delta_m -  eta ")
    b.t0 = time.perf_counter() - 30.0  # 30 s for the first two trials: 15 s a trial
    b.ended("t0000", 4.0, 3)
    line = buf.getvalue().splitlines()[-1]
    assert line.startswith("[trials 2/4 done, 0 running, 2 pending] best val_delta_m 4 (t0000)")
    assert re.search(r"eta (29|30)\.\ds", line)
    b.ended("t0002", None, None)  # failed
    b.ended("t0003", 2.0, 3)
    assert "[trials 4/4 done, 0 running, 0 pending] best val_delta_m 2 (t0003)  eta 0.0s" in \
        buf.getvalue()


def test_search_board_on_a_terminal_redraws_one_line():
    buf = io.StringIO()
    b = SearchBoard(3, "val/left/accuracy", "max", epochs=2, stream=buf, tty=True)
    b.started("t0000")
    b.result("t0000", 1)
    b.ended("t0000", 0.5, 2)
    b.started("t0001")
    live = buf.getvalue().split("\r\033[K")[-1]
    assert live.startswith("[trials 1/3 done, 1 running, 1 pending] best val/left/accuracy "
                           "0.5 (t0000)")
    assert live.endswith("| t0001 e0/2") and "\n" not in buf.getvalue()


def test_progress_board_shows_a_long_evaluation():
    buf = io.StringIO()
    board = ProgressBoard(1, buf, tty=True)
    board.handle({"kind": "evaluating", "run_id": "r", "label": "ew s0", "split": "val",
                  "batch": 30, "batches": 120, "elapsed_s": 10.0})
    assert buf.getvalue().split("\r\033[K")[-1] == \
        "[0/1] ew s0 evaluating val 30/120 batches eta 30.0s"


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_tune_prints_the_search_line(ray_session, tmp_path, capsys):
    argv = ["--benchmark", "multi_digits", "--method", "db_mtl", "--trials", "2", "--epochs", "1",
            "--scheduler", "none", "--out", str(tmp_path), *TINY]
    assert main_tune(parse_tune_args(argv)) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("[trials ")]
    heads = [x.split("]")[0] for x in lines]
    assert len(heads) == 2 and heads[1] == "[trials 2/2 done, 0 running, 0 pending"
    # the second trial ran alongside the first, or waited for it (2 CPUs, 2 driver slots)
    assert heads[0] in ("[trials 1/2 done, 1 running, 0 pending",
                        "[trials 1/2 done, 0 running, 1 pending")
    import pandas as pd

    (d,) = list((tmp_path / "searches").iterdir())
    best = pd.read_parquet(d / "summary.parquet").iloc[0]
    assert f"best {best.metric} {best.best_objective:.4g} ({best.best_trial_id})" in lines[-1]
    assert lines[-1].rstrip().endswith("eta 0.0s")


def test_reproduce_counts_runs_over_the_whole_grid(tmp_path, capsys):
    """multi_digits_loss_scale --smoke, seed 0: 3 runs in 2 experiments, one count."""
    argv = ["reproduce", "multi_digits_loss_scale", "--smoke", "--workers", "0", "--seeds", "0",
            "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    heads = re.findall(r"^reproduce multi_digits_loss_scale \[(\d)/(\d)\] eta (\S+) ", err, re.M)
    assert [(k, n) for k, n, _ in heads] == [("1", "3"), ("2", "3"), ("3", "3")]
    assert heads[-1][2] == "0.0s" and heads[0][2] != "?"
    # rerun: every run is already finished, still one count over the grid
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("already finished") == 3 and "[3/3]" in err and "[4/3]" not in err


def test_a_long_evaluation_prints_progress(tmp_path, capsys, monkeypatch):
    """With the thresholds at 0 every evaluation batch counts as long: the evaluation of the
    val and test splits prints lines instead of silence (not a terminal: every line)."""
    monkeypatch.setattr(eval_progress, "EVAL_PROGRESS_AFTER_S", 0.0)
    monkeypatch.setattr(eval_progress, "EVAL_PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(progress, "EVAL_LINE_EVERY_S", 0.0)
    code = cli.main(["run", "--benchmark", "multi_digits", "--methods", "ew", "--seeds", "0",
                     "--epochs", "1", "--workers", "0", "--out", str(tmp_path), "--no-report",
                     *TINY, "train.eval_batch_size=16", "train.max_eval_batches=3"])
    assert code == 0
    err = capsys.readouterr().err
    for split in ("val", "test"):  # 64 samples in batches of 16, capped at 3 batches
        for done in range(3):
            assert f"  ew s0  evaluating {split} {done}/3 batches" in err, err
        assert f"  ew s0  evaluating {split} 2/3 batches eta " in err, err


def test_overall_context_is_left_when_the_grid_ends():
    with overall(2, "grid") as o:
        assert ProgressBoard(5, io.StringIO(), tty=False).overall is o
    assert ProgressBoard(5, io.StringIO(), tty=False).overall is None


def test_a_long_dataset_scan_prints_progress(tmp_path, capsys, monkeypatch):
    """A NYUv2 layout scan with the thresholds at 0: one line per sample checked, per split."""
    import envs
    from envs import _dense
    from envs.fixtures.dense import write_nyuv2

    root = write_nyuv2(tmp_path / "nyu", n_train=5, n_test=3)
    monkeypatch.setattr(_dense, "SCAN_PROGRESS_AFTER_S", 0.0)
    monkeypatch.setattr(_dense, "SCAN_LINE_EVERY_S", 0.0)
    envs.create("nyuv2", root=str(root), val_size=1)
    err = capsys.readouterr().err
    assert f"scanning {root / 'train'}: 4/5 samples checked" in err
    assert f"scanning {root / 'val'}: 2/3 samples checked" in err  # MTAN's test folder
    monkeypatch.setattr(_dense, "SCAN_PROGRESS_AFTER_S", 60.0)  # the default: a short scan
    envs.create("nyuv2", root=str(root), val_size=1)  # prints nothing
    assert "scanning" not in capsys.readouterr().err
