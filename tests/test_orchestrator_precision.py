"""``train.precision`` from the CLI: bf16 autocast trains, fp16 runs the engine's loss
scaler and checkpoints its state, the choice is recorded in the runs table, and a wrong
value is refused before training."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from orchestrator.cli import main

ARGS = ["run", "--benchmark", "multi_digits", "--seeds", "0", "--epochs", "1", "--workers", "0",
        "train.max_steps_per_epoch=4", "train.max_eval_batches=1"]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_run_from_the_cli(tmp_path, precision):
    rc = main([*ARGS, "--methods", "pcgrad", "--out", str(tmp_path), f"train.precision={precision}"])
    assert rc == 0
    runs = pd.read_parquet(tmp_path / "runs")
    row = runs.iloc[0]
    assert row["status"] == "finished" and row["precision"] == precision
    state = torch.load(next((tmp_path / "checkpoints").glob("*/state.pt")), weights_only=False)
    if precision == "fp16":  # 4 finite steps at the initial scale
        assert state["scaler"] == {"scale": 2.0**16, "good_steps": 4, "skipped_steps": 0}
    else:
        assert state["scaler"] is None


def test_unknown_precision_is_refused(tmp_path, capsys):
    rc = main([*ARGS, "--methods", "ew", "--out", str(tmp_path), "train.precision=fp8"])
    assert rc != 0
    assert "fp8" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
