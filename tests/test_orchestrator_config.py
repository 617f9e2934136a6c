"""Configs: YAML + flags + overrides, run ids, and every validation error (all before Ray)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import yaml

import envs
import tests.orchestrator_bench as toy
from orchestrator import cli
from orchestrator.config import (
    ConfigError,
    ExperimentConfig,
    TrainConfig,
    apply_overrides,
    experiment_from_dict,
    load_yaml,
)
from orchestrator.run import launch
from orchestrator.run.plan import check_train, expand, resolve_train

REPO = Path(__file__).resolve().parent.parent
PLUGIN = ["tests.orchestrator_bench"]


def _exp(**kw) -> ExperimentConfig:
    base = dict(benchmark=toy.NAME, methods=["ew"], seeds=[0], workers=0, plugins=PLUGIN)
    base.update(kw)
    return experiment_from_dict(base)


# ---------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------


def test_overrides_types_and_train_shorthand():
    data = apply_overrides({"methods": ["ew"]}, [
        "seeds=0,1,2", "lr=3e-4", "train.epochs=7", "hparams.cagrad.c=0.5", "methods=[ew,cagrad]",
        "bench_options.loss_scale=[1,10]", "workers=2",
    ])  # fmt: skip
    exp = experiment_from_dict(data)
    assert exp.seeds == [0, 1, 2]
    assert exp.train.lr == 3e-4 and exp.train.epochs == 7
    assert exp.hparams == {"cagrad": {"c": 0.5}}
    assert exp.methods == ["ew", "cagrad"]
    assert exp.bench_options == {"loss_scale": [1, 10]}
    assert exp.workers == 2


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'benchmrk'.*did you mean 'benchmark'"):
        experiment_from_dict({"benchmrk": "x"})
    with pytest.raises(ConfigError, match=r"'train.learning_rate'"):
        experiment_from_dict({"train": {"learning_rate": 1.0}})
    with pytest.raises(ConfigError, match=r"unknown config key 'lrr'.*did you mean 'lr'"):
        apply_overrides({}, ["lrr=1"])


def test_bad_types_are_named():
    with pytest.raises(ConfigError, match="workers must be an integer"):
        experiment_from_dict({"workers": "two"})
    with pytest.raises(ConfigError, match=r"train.lr must be a number"):
        experiment_from_dict({"train": {"lr": "fast"}})
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["justakey"])


def test_yaml_then_flags_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("benchmark: multi_digits\nseeds: [5]\ntrain: {epochs: 3, lr: 0.01}\n")
    args, extra = cli._parser().parse_known_args(["run", str(f), "--seeds", "1,2", "train.lr=0.5"])
    args.args += extra
    exp, given = cli.build_experiment(args)
    assert exp.benchmark == "multi_digits" and exp.seeds == [1, 2]
    assert exp.train.epochs == 3 and exp.train.lr == 0.5
    assert not given  # methods came from the defaults
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")


def test_shipped_configs_parse_and_name_registered_benchmarks():
    files = sorted((REPO / "configs").glob("*.yaml"))
    assert len(files) >= 7
    for f in files:
        data = load_yaml(f)
        data.pop("tune", None)  # mtlx tune's own section (checked in tests/test_tune.py)
        exp = experiment_from_dict(data)
        assert exp.benchmark in envs.available(), f.name
        cls = envs.get_class(exp.benchmark)
        check_train(resolve_train(exp.train, cls.protocol))
        assert "source" in f.read_text().lower() or "#" in f.read_text(), f.name
        assert yaml.safe_load(f.read_text())  # non-empty


# ---------------------------------------------------------------------------------------
# run ids
# ---------------------------------------------------------------------------------------


def test_run_ids_are_deterministic_and_cover_what_changes_numbers(tmp_path):
    a = expand(_exp(out=str(tmp_path / "a")))[0]
    b = expand(_exp(out=str(tmp_path / "b"), workers=1))[0]
    assert a.run_id == b.run_id  # results dir and workers 0/1 do not change the numbers
    assert a.run_id.startswith(f"{toy.NAME}.ew.s0.")
    assert expand(_exp(seeds=[1]))[0].run_id != a.run_id
    assert expand(_exp(train={"lr": 0.05}))[0].run_id != a.run_id
    assert expand(_exp(workers=2))[0].run_id != a.run_id
    # an explicit default is the same run as the protocol default
    assert expand(_exp(train={"lr": toy.ToyBench.protocol.lr}))[0].run_id == a.run_id
    # hyperparameters are resolved with their defaults before hashing
    c = expand(_exp(methods=["cagrad"]))[0]
    assert c.hparams["c"] == 0.4
    assert expand(_exp(methods=["cagrad"], hparams={"cagrad": {"c": 0.4}}))[0].run_id == c.run_id
    assert pickle.loads(pickle.dumps(c)).run_id == c.run_id  # what crosses the Ray hop


def test_stl_expands_to_one_run_per_task():
    runs = expand(_exp(methods=["stl", "ew"], seeds=[0, 1]))
    stl = [r for r in runs if r.method == "stl"]
    assert sorted((r.stl_task, r.seed) for r in stl) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert len({r.run_id for r in runs}) == 6


# ---------------------------------------------------------------------------------------
# validation errors, each before Ray starts
# ---------------------------------------------------------------------------------------

BAD = [
    (dict(benchmark="nope"), r"unknown benchmark 'nope'; choose one of: .*multi_digits"),
    (dict(methods=["nope"]), r"unknown method 'nope'; choose one of: .*ew"),
    (dict(methods=["cagrad"], hparams={"cagrad": {"c": -1.0}}), r"c must be .*hparams\.cagrad"),
    (dict(methods=["cagrad"], hparams={"cagrad": {"cc": 1.0}}), r"unknown hyperparameter.*'cc'"),
    (dict(hparams={"pcgrad": {}}), r"hparams given for \['pcgrad'\].*not in methods"),
    (dict(methods=["cso"]), r"'cso' needs a model with \['task_batchnorm'\].*fix"),
    (dict(methods=["imtl_g"], train={"level": "rep"}, bench_options={"no_rep": True}),
     r"level 'rep' needs a single shared representation.*fix: train.level=param"),
    (dict(methods=["mgda_ub"], benchmark=toy.NAME + "_multi"),
     r"'mgda_ub' at level 'rep'.*multi-input.*fix: train.level=param"),
    (dict(methods=["db_mtl"], train={"level": "rep"}),
     r"db_mtl does not support representation-level gradients; use level='param'"),
    (dict(methods=["ew"], train={"level": "rep"}), r"loss-weighting method.*level='param'"),
    (dict(methods=["graddrop"], workers=2), r"not exact across 2 workers.*fix"),
    (dict(bench_options={"needs_root": True}), r"could not be opened with no data_root.*--data-root"),
    (dict(train={"batch_size": 9}, workers=2), r"batch_size=9 is not divisible by workers=2"),
    (dict(bench_options={"no_val": True}), r"selection=best_val needs a validation split"),
    (dict(train={"lr": -1.0}), r"train.lr must be in \(0.0"),
    (dict(train={"optimizer": "adagrad"}), r"train.optimizer must be one of"),
    (dict(seeds=[0, 0]), r"seeds must be distinct"),
    (dict(workers=-1), r"workers must be >= 0"),
    (dict(workers=2, gpus_per_worker=0.5), r"need whole GPUs"),
    (dict(bench_options={"bogus": 1}), r"unknown option\(s\) \['bogus'\]"),
    (dict(plugins=PLUGIN + ["no_such_module_xyz"]), r"plugin module 'no_such_module_xyz'"),
]


@pytest.mark.parametrize("kw,pattern", BAD, ids=[p[1][:40] for p in BAD])
def test_validation_errors_name_the_fix(kw, pattern):
    with pytest.raises(ConfigError, match="(?s)" + pattern):
        expand(_exp(**kw))


def test_real_benchmark_without_data_root_says_what_to_pass():
    with pytest.raises(ConfigError, match=r"(?s)nyuv2.*no data_root.*--data-root"):
        expand(experiment_from_dict({"benchmark": "nyuv2", "methods": ["ew"], "seeds": [0]}))


def test_cli_reports_validation_errors_before_ray_starts(monkeypatch, capsys, tmp_path):
    def no_ray(*a, **k):
        raise AssertionError("Ray must not start before validation passes")

    monkeypatch.setattr(launch, "init_ray", no_ray)
    code = cli.main(["run", "--benchmark", "multi_digits", "--methods", "ew,cso", "--seeds", "0",
                     "--workers", "1", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "mtlx: error:" in err and "task_batchnorm" in err
    assert not (tmp_path / "runs").exists()


def test_help_config_lists_every_key(capsys):
    assert cli.main(["run", "--help-config"]) == 0
    out = capsys.readouterr().out
    for key in ("benchmark", "workers", "train.lr", "train.max_steps_per_epoch", "hparams"):
        assert key in out


def test_train_config_defaults_are_none_so_protocol_wins():
    t = resolve_train(TrainConfig(), toy.ToyBench.protocol)
    assert (t.lr, t.batch_size, t.optimizer, t.selection) == (0.1, 8, "sgd", "best_val")
    assert resolve_train(TrainConfig(lr=0.3), toy.ToyBench.protocol).lr == 0.3


@pytest.mark.parametrize("flag, value, key, where", [
    ("--data-root", "0123", "data_root", "0123"),  # YAML 1.1 would read octal 83
    ("--out", "2024_01", "out", "2024_01"),  # YAML would read the integer 202401
    ("--data-root", "~", "data_root", "~"),  # YAML would read None
    ("--out", "yes", "out", "yes"),  # YAML would read the boolean true
])
def test_flag_values_reach_the_runs_with_their_types(monkeypatch, tmp_path, flag, value, key,
                                                     where):
    monkeypatch.chdir(tmp_path)
    args, extra = cli._parser().parse_known_args(
        ["run", "--benchmark", toy.NAME, "--methods", "ew", "--seeds", "0", flag, value])
    args.args += extra
    exp, _ = cli.build_experiment(args)
    assert getattr(exp, key) == value
    run = expand(exp)[0]
    expected = Path.home() if where == "~" else tmp_path.resolve() / where
    assert getattr(run, key) == str(expected)


def test_tune_flag_values_keep_their_types(monkeypatch, tmp_path):
    from orchestrator.tune import parse_tune_args, search_from_args

    monkeypatch.chdir(tmp_path)
    search, _ = search_from_args(parse_tune_args(["--out", "yes", "--epochs", "1"]))
    assert search.base.out == str(tmp_path.resolve() / "yes")
    # positional key=value overrides are still YAML: a quoted value stays a string
    search, _ = search_from_args(parse_tune_args(["--epochs", "1", "out='2024_01'"]))
    assert search.base.out == str(tmp_path.resolve() / "2024_01")


def test_overrides_are_yaml_and_override_flags():
    args, extra = cli._parser().parse_known_args(["run", "--out", "a", "out=b", "seeds=[3]"])
    args.args += extra
    exp, _ = cli.build_experiment(args)
    assert exp.out == "b" and exp.seeds == [3]


def test_every_train_field_declares_its_valid_values():
    import dataclasses

    from orchestrator.config import Valid

    for f in dataclasses.fields(TrainConfig):
        assert isinstance(f.metadata.get("valid"), Valid), f"TrainConfig.{f.name}: add valid=..."
    # the choices that belong to methods/ are read from it, not copied
    from methods.base import HEAD_UPDATES

    with pytest.raises(ConfigError, match=re.escape(f"head_update must be one of {list(HEAD_UPDATES)}")):
        check_train(TrainConfig(head_update="both"))
    with pytest.raises(ConfigError, match=r"train.level must be one of \['auto', 'param', 'rep'\]"):
        check_train(TrainConfig(level="layer"))
    with pytest.raises(ConfigError, match=r"train.diagnostics_every must be an integer >= 0"):
        check_train(TrainConfig(diagnostics_every=-1))
    check_train(TrainConfig(diagnostics_every=0, head_update="weighted", level="rep"))


def test_the_training_function_takes_a_run_config_only(tmp_path):
    from orchestrator.run.execute import train_run
    from orchestrator.trainers.base import RunContext

    run = expand(_exp(out=str(tmp_path)))[0]
    with pytest.raises(TypeError, match="takes a RunConfig, got dict"):
        train_run(run.to_dict(), RunContext(run_id=run.run_id, out=tmp_path))
    assert not (tmp_path / "runs").exists()  # refused before anything was written
