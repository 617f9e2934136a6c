"""`mtlx run` end to end on the real benchmark loaders (fixtures in their on-disk formats)."""

from __future__ import annotations

import math

import pandas as pd

from envs.fixtures.files import write_office
from orchestrator import cli


def test_office_multi_input_run_has_finite_eval_losses_for_every_domain(tmp_path):
    """Office domains differ in size: in evaluation a domain whose images ran out is absent
    from later batches; its mean loss must come from its own batches only (not NaN)."""
    root = tmp_path / "office31"
    write_office(root, "office31", per_class=[5, 6, 10])
    out = tmp_path / "out"
    code = cli.main(["run", "--benchmark", "office31", "--data-root", str(root), "--methods",
                     "ew", "--seeds", "0", "--epochs", "1", "--workers", "0", "--out", str(out),
                     "train.max_steps_per_epoch=2", "train.batch_size=4",
                     "model_options.width=4", "--no-report"])
    assert code == 0
    m = pd.read_parquet(out / "metrics")
    losses = m[(m.metric == "loss") & m.split.isin(["val", "test"])]
    assert set(losses.task) == {"amazon", "dslr", "webcam"}
    assert all(math.isfinite(v) for v in losses.value), losses
