"""A method's failed solves are counted in the runs table (``solver_failures``), from the
``info["solver_failed"]`` of every step, not only the steps whose diagnostics are logged."""

from __future__ import annotations

import pandas as pd
import torch

import methods
from methods.base import GramianMethod
from methods.registry import _REGISTRY
from orchestrator.cli import main


class _FailsEveryOtherSolve(GramianMethod):
    """Equal weights; reports a failed solve on every second step."""

    def gramian_weights(self, gramian, losses):
        return torch.ones_like(losses), {"solver_failed": float(self.step_count % 2)}


def test_runs_table_counts_failed_solves(tmp_path):
    methods.register("test_fails_every_other_solve")(_FailsEveryOtherSolve)
    try:
        rc = main(["run", "--benchmark", "multi_digits", "--methods",
                   "test_fails_every_other_solve", "--seeds", "0", "--epochs", "1",
                   "--workers", "0", "--out", str(tmp_path), "train.max_steps_per_epoch=6",
                   "train.diagnostics_every=100"])
    finally:
        _REGISTRY.pop("test_fails_every_other_solve")
    assert rc == 0
    runs = pd.read_parquet(tmp_path / "runs")
    assert runs.iloc[0]["steps_done"] == 6
    assert runs.iloc[0]["solver_failures"] == 3
