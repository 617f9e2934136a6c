"""The bad-input battery, table-driven: each input → exit code 2 and a first error line that
names the problem (and, where one exists, the fix), with no Ray started and the results
already in ``--out`` untouched."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch

from orchestrator import cli
from orchestrator.run import launch
from tests.test_run_states import SMALL

RUN = ["run", "--benchmark", "multi_digits", "--seeds", "0", "--epochs", "1", "--no-report"]

YAML = {
    "hparams_list.yaml": "hparams: [1, 2]\nmethods: [ew]\n",
    "bad.yaml": "methods: [ew\n  x: : y\n",
    "unknown_key.yaml": "epochs: 3\nmethods: [ew]\n",
    "unknown_train.yaml": "train: {epoch: 3}\nmethods: [ew]\n",
    "wrong_types.yaml": "train: {batch_size: three}\nmethods: [ew]\n",
    "list.yaml": "- ew\n- pcgrad\n",
    "wrong_types2.yaml": "seeds: three\nmethods: [ew]\n",
}

#: (case, arguments after `mtlx run` + the common ones, text of the first error line);
#: ``OUT`` is a results directory holding one finished run, ``F/`` a folder of fixtures
CASES = [
    ("unknown benchmark", ["--methods", "ew", "--benchmark", "nosuch"], "unknown benchmark 'nosuch'"),
    ("benchmark typo", ["--methods", "ew", "--benchmark", "multi_digit"],
     "did you mean 'multi_digits'?"),
    ("benchmark case", ["--methods", "ew", "--benchmark", "NYUv2"], "did you mean 'nyuv2'?"),
    ("method typo", ["--methods", "pcgard"], "did you mean 'pcgrad'?"),
    ("method case", ["--methods", "PCGrad"], "did you mean 'pcgrad'?"),
    ("methods empty", ["--methods", ""], "methods is empty; fix: --methods"),
    ("methods duplicate", ["--methods", "pcgrad,pcgrad"], "a name twice: ['pcgrad', 'pcgrad']; fix"),
    ("seeds 0,0", ["--methods", "ew", "--seeds", "0,0"], "distinct non-negative integers, got [0, 0]; fix"),
    ("cpus-per-worker 0", ["--methods", "ew", "--cpus-per-worker", "0"],
     "cpus_per_worker must be >= 1, got 0; fix"),
    ("max-concurrent 0", ["--methods", "ew", "--max-concurrent", "0"],
     "max_concurrent must be >= 1, got 0; fix"),
    ("cagrad c<0", ["--methods", "cagrad", "hparams.cagrad.c=-1"], "c must be in [0.0, inf)"),
    ("hparam typo", ["--methods", "cagrad", "hparams.cagrad.cc=0.5"], "did you mean 'c'?"),
    ("hparams of a method not run", ["--methods", "pcgrad", "hparams.cagrad.c=0.5"],
     "hparams given for ['cagrad']"),
    ("epochs 0", ["--methods", "ew", "--epochs", "0"], "train.epochs must be an integer >= 1"),
    ("epochs 3.5", ["--methods", "ew", "--epochs", "3.5"], "invalid int value: '3.5'"),
    ("seeds a,b", ["--methods", "ew", "--seeds", "a,b"], "seeds[0] must be an integer"),
    ("lr nan", ["--methods", "ew", "train.lr=.nan"], "train.lr must be in (0.0, inf], got nan"),
    ("optimizer typo", ["--methods", "ew", "train.optimizer=adamm"],
     "train.optimizer must be one of"),
    ("unknown train key", ["--methods", "ew", "train.lrr=1e-3"], "did you mean 'lr'?"),
    ("divergence_factor <= 1", ["--methods", "ew", "train.divergence_factor=1"],
     "train.divergence_factor must be in (1.0, inf]"),
    ("YAML malformed", ["F/bad.yaml"], "is not valid YAML"),
    ("YAML top-level train key", ["F/unknown_key.yaml"],
     "config key 'epochs' belongs under train:"),
    ("YAML unknown train key", ["F/unknown_train.yaml"], "did you mean 'epochs'?"),
    ("YAML wrong type", ["F/wrong_types.yaml"], "train.batch_size must be an integer, got 'three'"),
    ("YAML hparams a list", ["F/hparams_list.yaml"], "hparams must be a mapping"),
    ("YAML top-level list", ["F/list.yaml"], "must hold a mapping at the top level"),
    ("YAML missing", ["F/nosuch.yaml"], "does not exist"),
    ("no data root", ["--methods", "ew", "--benchmark", "nyuv2"], "nyuv2 needs root=<directory>"),
    ("data root is a file", ["--methods", "ew", "--benchmark", "nyuv2", "--data-root",
                             "F/file_root"], "is not a directory"),
    ("data root empty", ["--methods", "ew", "--benchmark", "nyuv2", "--data-root",
                         "F/empty_root"], "not found"),
    ("workers -1", ["--methods", "ew", "--workers", "-1"], "workers must be >= 0"),
    ("GPUs with workers 0", ["--methods", "ew", "--gpus-per-worker", "1000"],
     "needs a CUDA device" if not torch.cuda.is_available() else None),
    ("GPUs with workers 1", ["--methods", "ew", "--workers", "1", "--gpus-per-worker", "1000"],
     "one run needs 1000 GPU(s)"),
    ("more CPUs than the machine", ["--methods", "ew", "--workers", "2", "--cpus-per-worker",
                                    "4096"], "one run needs 8192 CPUs"),
    ("rep level on db_mtl", ["--methods", "db_mtl", "train.level=rep"],
     "db_mtl does not support representation-level gradients"),
    ("out under /proc", ["--methods", "ew", "--out", "/proc/mtlx_out"], "cannot be used"),
    ("out under /sys", ["--methods", "ew", "--out", "/sys/mtlx_out"], "cannot be used"),
    ("out is a file", ["--methods", "ew", "--out", "F/out_file"], "is a file, not a directory"),
    ("metrics/ is a file", ["--methods", "ew", "--out", "F/metrics_file"],
     "metrics' is a file, but mtlx keeps a directory there"),
    ("runs/ is a file", ["--methods", "ew", "--out", "F/runs_file"],
     "runs' is a file, but mtlx keeps a directory there"),
    ("checkpoints/ is a file", ["--methods", "ew", "--out", "F/ckpt_file"],
     "checkpoints' is a file, but mtlx keeps a directory there"),
    ("out inside another results dir", ["--methods", "ew", "--out", "OUT/metrics/x"],
     "is inside the metrics/ of the results directory"),
    ("unknown method", ["--methods", "nosuch"], "unknown method 'nosuch'; choose one of"),
    ("db_mtl gamma=foo", ["--methods", "db_mtl", "hparams.db_mtl.gamma=foo"],
     "gamma must be one of ['max', 'min', 'mean', 'median', 'constant'], got 'foo'"),
    ("db_mtl beta=2", ["--methods", "db_mtl", "hparams.db_mtl.beta=2"],
     "beta must be in [0.0, 1.0), got 2"),
    ("cagrad c=nan", ["--methods", "cagrad", "hparams.cagrad.c=.nan"],
     "c must be a finite number, got nan"),
    ("famo gamma<0", ["--methods", "famo", "hparams.famo.gamma=-1"],
     "gamma must be in [0.0, inf), got -1"),
    ("epochs -1", ["--methods", "ew", "--epochs", "-1"], "train.epochs must be an integer >= 1, got -1"),
    ("batch_size 0", ["--methods", "ew", "train.batch_size=0"],
     "train.batch_size must be an integer >= 1, got 0"),
    ("seeds -1", ["--methods", "ew", "--seeds", "-1"], "distinct non-negative integers, got [-1]"),
    ("lr negative", ["--methods", "ew", "train.lr=-1"], "train.lr must be in (0.0, inf], got -1.0"),
    ("selection bad", ["--methods", "ew", "train.selection=best"],
     "train.selection must be one of ['last', 'best_val'], got 'best'"),
    ("eval_every 0", ["--methods", "ew", "train.eval_every=0"],
     "train.eval_every must be an integer >= 1, got 0"),
    ("unknown override key", ["--methods", "ew", "learning_rate=1e-3"],
     "unknown config key 'learning_rate' in override 'learning_rate=1e-3'; valid keys:"),
    ("stray positional", ["--methods", "ew", "foo"], "config file 'foo' does not exist"),
    ("data root missing", ["--methods", "ew", "--benchmark", "nyuv2", "--data-root",
                           "F/no_such_dir"], "no_such_dir is not a directory; expected layout"),
    ("data root wrong layout", ["--methods", "ew", "--benchmark", "nyuv2", "--data-root",
                                "F/wrong_root"], "wrong_root/train not found; expected layout"),
    ("bench_options unknown", ["--methods", "ew", "bench_options.nosuch=1"],
     "unknown option(s) ['nosuch'] for benchmark 'multi_digits'; valid:"),
    ("model_options unknown", ["--methods", "ew", "model_options.nosuch=1"],
     "unknown model option(s) ['nosuch'] for multi_digits; valid:"),
    ("workers 2 odd batch", ["--methods", "ew", "--workers", "2", "train.batch_size=63"],
     "batch_size=63 is not divisible by workers=2"),
    ("workers 64", ["--methods", "ew", "--workers", "64"], "one run needs 64 CPUs"),
    ("rep level on famo", ["--methods", "famo", "train.level=rep"],
     "famo is a loss-weighting method and takes no gradients"),
    ("head_update bad", ["--methods", "ew", "train.head_update=mine"],
     "train.head_update must be one of ['own', 'weighted'], got 'mine'"),
    ("out under /proc/self", ["--methods", "ew", "--out", "/proc/self/mtlx"], "cannot be used"),
]

REPORT_CASES = [
    ("report empty dir", ["report", "F/empty_root"], "is not an mtlx results directory"),
    ("report missing dir", ["report", "F/no_such_results"], "is not an mtlx results directory"),
    ("report runs/ is a file", ["report", "F/runs_file"], "is not an mtlx results directory"),
    ("report non-results dir", ["report", "F/old_results/configs"],
     "is not an mtlx results directory (no runs/ inside); fix"),
    ("report unknown benchmark", ["report", "OUT", "--benchmark", "nosuch"],
     "no runs of benchmark 'nosuch'"),
]


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
    """A results directory with one finished run, and the fixture folder."""
    out = tmp_path_factory.mktemp("prior")
    assert cli.main([*RUN, "--methods", "ew", "--workers", "0", "--out", str(out),
                     "train.max_steps_per_epoch=2",
                     *[f"bench_options.{k}={v}" for k, v in SMALL.items()]]) == 0
    f = tmp_path_factory.mktemp("F")
    for name, text in YAML.items():
        (f / name).write_text(text)
    (f / "empty_root").mkdir()
    (f / "wrong_root" / "images").mkdir(parents=True)  # not the MTAN layout
    (f / "old_results" / "configs").mkdir(parents=True)
    (f / "old_results" / "configs" / "a.yaml").write_text("methods: [ew]\n")
    (f / "file_root").write_text("")
    (f / "out_file").write_text("")
    for name, sub in (("metrics_file", "metrics"), ("runs_file", "runs"), ("ckpt_file", "checkpoints")):
        shutil.copytree(out, f / name)
        shutil.rmtree(f / name / sub)
        (f / name / sub).write_text("")
    return out, f


def _snapshot(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _resolve(args, out, f):
    return [a.replace("OUT", str(out)).replace("F/", f"{f}/") for a in args]


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test if anything starts Ray (the launcher's init_ray or ray.init itself)."""
    def started(*_, **__):
        raise AssertionError("Ray was started for an input that is checkable up front")

    monkeypatch.setattr(launch, "init_ray", started)
    ray = pytest.importorskip("ray")
    was = ray.is_initialized()
    monkeypatch.setattr(ray, "init", started)
    yield
    assert ray.is_initialized() == was


def _first_error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    return lines[0] if lines else ""


@pytest.mark.parametrize("case,args,first", CASES, ids=[c[0] for c in CASES])
def test_run_rejects_before_any_compute(prior, no_ray, capsys, case, args, first):
    if first is None:
        pytest.skip("a CUDA device is visible")
    out, f = prior
    before, fixtures = _snapshot(out), _snapshot(f)
    args = _resolve(args, out, f)
    yaml_file = args[:1] if args[0].endswith(".yaml") else []  # the first positional
    argv = ["run", *yaml_file, *RUN[1:], "--workers", "0", "--out", str(out),
            *args[len(yaml_file):]]
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own type errors
        code = e.code
    assert code == 2
    assert first in _first_error(capsys)
    assert _snapshot(out) == before and _snapshot(f) == fixtures


@pytest.mark.parametrize("case,args,first", REPORT_CASES, ids=[c[0] for c in REPORT_CASES])
def test_report_rejects_with_the_fix(prior, no_ray, capsys, case, args, first):
    out, f = prior
    assert cli.main(_resolve(args, out, f)) == 2
    assert first in _first_error(capsys)


def test_out_check_does_not_create_paths_for_rejected_inputs(prior, no_ray, capsys):
    out, f = prior
    target = f / "never_created"
    assert cli.main([*RUN, "--workers", "0", "--methods", "pcgard", "--out", str(target)]) == 2
    assert not target.exists()  # names are checked before the out location is probed


TUNE = ["tune", "--epochs", "1", "--trials", "2"]

TUNE_CASES = [
    ("tune empty range", ["space.beta=uniform(2,1)"], "empty range: Uniform(2, 1) needs low < high"),
    ("tune unknown metric", ["--metric", "nosuch"], "unknown --metric 'nosuch'; valid metrics"),
    ("tune test metric", ["--metric", "test/left/accuracy"],
     "would select hyperparameters on the test split, which mtlx never does"),
    ("tune trials 0", ["--trials", "0"], "tune.trials must be >= 1, got 0"),
    ("tune unknown space name", ["space.nosuch=uniform(0,1)"],
     "space.nosuch: unknown hyperparameter for method 'db_mtl'; searchable:"),
    ("tune beta out of range", ["space.beta=uniform(0.5,2)"],
     "beta=2 is invalid for 'db_mtl' (beta must be in [0.0, 1.0), got 2); fix"),
    ("tune unknown distribution", ["space.beta=gaussian(0,1)"],
     "unknown distribution 'gaussian'; use uniform(a,b)"),
    ("tune unknown method", ["--method", "nosuch"], "unknown method 'nosuch'; choose one of"),
]


@pytest.mark.parametrize("case,args,first", TUNE_CASES, ids=[c[0] for c in TUNE_CASES])
def test_tune_rejects_before_any_compute(prior, no_ray, capsys, case, args, first):
    out, _ = prior
    before = _snapshot(out)
    assert cli.main([*TUNE, "--out", str(out), *args]) == 2
    assert first in _first_error(capsys)
    assert _snapshot(out) == before and not (out / "searches").exists()


def test_yaml_seeds_of_the_wrong_type(prior, no_ray, capsys):
    """Row 36 passes no --seeds, so the YAML's own value is the one checked."""
    out, f = prior
    before = _snapshot(out)
    argv = ["run", str(f / "wrong_types2.yaml"), "--epochs", "1", "--workers", "0", "--out",
            str(out), "--no-report"]
    assert cli.main(argv) == 2
    assert "seeds[0] must be an integer, got 'three'" in _first_error(capsys)
    assert _snapshot(out) == before


#: every row of the bad-input list a user tried (84 rows, numbered as there) → the case of
#: this file, or the test elsewhere, that keeps it fixed (runtime faults: a clean status or a
#: report that skips and names the damaged file, not exit code 2)
ROWS = {
    1: "unknown benchmark", 2: "benchmark typo", 3: "benchmark case", 4: "unknown method",
    5: "method typo", 6: "method case", 7: "methods empty", 8: "methods duplicate",
    9: "cagrad c<0", 10: "db_mtl gamma=foo", 11: "db_mtl beta=2", 12: "hparam typo",
    13: "cagrad c=nan", 14: "famo gamma<0", 15: "hparams of a method not run",
    16: "YAML hparams a list", 17: "epochs 0", 18: "epochs -1", 19: "epochs 3.5",
    20: "batch_size 0", 21: "seeds a,b", 22: "seeds 0,0", 23: "seeds -1", 24: "lr negative",
    25: "lr nan", 26: "optimizer typo", 27: "selection bad", 28: "eval_every 0",
    29: "unknown override key", 30: "unknown train key", 31: "stray positional",
    32: "YAML malformed", 33: "YAML top-level train key", 34: "YAML unknown train key",
    35: "YAML wrong type", 36: "test_yaml_seeds_of_the_wrong_type", 37: "YAML top-level list",
    38: "YAML missing", 39: "no data root", 40: "data root missing", 41: "data root empty",
    42: "data root wrong layout", 43: "data root is a file", 44: "bench_options unknown",
    45: "model_options unknown", 46: "workers 2 odd batch", 47: "workers -1",
    48: "cpus-per-worker 0", 49: "max-concurrent 0", 50: "GPUs with workers 0",
    51: "GPUs with workers 1", 52: "workers 64", 53: "rep level on db_mtl",
    54: "rep level on famo", 55: "head_update bad",
    56: "tests.test_run_states::test_nonfinite_gradients_end_nonfinite_not_failed",
    57: "report empty dir", 58: "report non-results dir", 59: "report missing dir",
    60: "tests.test_store_robustness::test_report_lists_a_truncated_runs_file_and_goes_on",
    61: "tests.test_store_robustness::test_report_and_plots_survive_a_damaged_file",
    62: "tests.test_store_robustness::test_report_and_plots_survive_a_damaged_file",
    63: "tests.test_store_robustness::test_report_and_plots_survive_a_damaged_file",
    64: "tests.test_store_robustness::test_report_and_plots_survive_a_damaged_file",
    65: "report unknown benchmark", 66: "tune empty range", 67: "tune unknown metric",
    68: "tune test metric", 69: "tune trials 0", 70: "tune unknown space name",
    71: "tune beta out of range", 72: "tune unknown distribution", 73: "tune unknown method",
    74: "tests.test_store_robustness::test_run_recovers_a_truncated_runs_file",
    75: "tests.test_store_robustness::test_no_loadable_checkpoint_names_rerun_and_rerun_recovers",
    76: "tests.test_store_robustness::test_a_new_run_reports_despite_another_runs_corrupt_metrics",
    77: "out under /proc", 78: "runs/ is a file", 79: "out is a file",
    80: "report runs/ is a file", 81: "metrics/ is a file", 82: "checkpoints/ is a file",
    83: "out under /sys", 84: "out under /proc/self",
}


def test_every_row_of_the_bad_input_list_has_its_test():
    import importlib

    assert sorted(ROWS) == list(range(1, 85))
    cases = {c[0] for c in (*CASES, *REPORT_CASES, *TUNE_CASES)}
    for row, where in ROWS.items():
        module, _, name = where.rpartition("::")
        if module:
            assert callable(getattr(importlib.import_module(module), name, None)), (row, where)
        else:
            assert where in cases or callable(globals().get(where)), (row, where)
