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
]

REPORT_CASES = [
    ("report empty dir", ["report", "F/empty_root"], "is not an mtlx results directory"),
    ("report missing dir", ["report", "F/no_such_results"], "is not an mtlx results directory"),
    ("report runs/ is a file", ["report", "F/runs_file"], "is not an mtlx results directory"),
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
