"""A small but complete results directory, made once per test session by real tiny runs:

* ``mtlx run`` on multi_digits (EW, IMTL-G and STL, seeds 0 and 1, two epochs of 3 steps,
  diagnostics every step, the right task's loss ×10 so that the ``multi_digits_loss_scale``
  table's ×10 rows match);
* ``mtlx run`` on mt1 (EW and CAGrad SAC, seeds 0 and 1, 200 loop steps, evaluations at
  steps 0, 100 and 200): success tables and curves;
* ``mtlx tune`` of DB-MTL on multi_digits (3 trials, one epoch each, on the session Ray).

Used by tests/test_report_html.py and tests/test_results_contract.py.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator import cli
from orchestrator.tune import main_tune, parse_tune_args

DIGITS = ["run", "--benchmark", "multi_digits", "--methods", "ew,imtl_g,stl", "--seeds", "0,1",
          "--epochs", "2", "--workers", "0", "--no-report", "bench_options.loss_scale=[1,10]",
          "train.max_steps_per_epoch=3", "train.level=param", "train.diagnostics_every=1",
          "train.max_eval_batches=2", "bench_options.n_train=256", "bench_options.n_val=64",
          "bench_options.n_test=64"]
MT1 = ["run", "--benchmark", "mt1", "--methods", "ew,cagrad", "--seeds", "0,1", "--steps", "200",
       "--workers", "0", "--no-report", "train.eval_every=100", "train.batch_size=16",
       "bench_options.horizon=20", "trainer_options.hidden=16", "trainer_options.layers=1",
       "trainer_options.warmup_steps=50", "trainer_options.buffer_size=500",
       "trainer_options.log_every=50"]
TUNE = ["--benchmark", "multi_digits", "--method", "db_mtl", "--trials", "3", "--epochs", "1",
        "train.max_steps_per_epoch=3", "train.max_eval_batches=2"]

_made: dict[str, Path] = {}


def results_dir(base: Path) -> Path:
    """The results directory under ``base`` (made on the first call of the session; the
    session Ray must be up for the search)."""
    if "out" not in _made:
        out = base / "results"
        assert cli.main([*DIGITS, "--out", str(out)]) == 0
        assert cli.main([*MT1, "--out", str(out)]) == 0
        assert main_tune(parse_tune_args([*TUNE, "--out", str(out)])) == 0
        _made["out"] = out
    return _made["out"]
