"""``mtlx tune`` (orchestrator/tune/).

Without Ray (fast): the space grammar, names, ranges, conditional parameters and metrics are
checked before anything starts; the objective follows the protocol's selection; benchmarks
without a validation split hold one out of train; capacity from resources; the CLI hook.
On the session Ray (slow on 2 cores, ~1 min): a tiny DB-MTL search on multi_digits end to end
(one run per trial in the Parquet results with the sampled β and γ, the objective is the
validation Δm, best.yaml runs with ``mtlx run`` and reproduces the trial), and a search
interrupted after its first trial that completes with ``--resume`` without re-running it."""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

import methods
from envs.fixtures.dense import write_nyuv2
from envs.metrics import delta_m
from orchestrator import cli
from orchestrator.config import ConfigError, load_yaml
from orchestrator.results import ResultsStore
from orchestrator.tune import (
    DefineSpace,
    Objective,
    add_parser,
    apply_params,
    best_config,
    build_search,
    capacity,
    main_tune,
    parse_spec,
    parse_tune_args,
    plot_search,
    trial_resources,
    tune_report,
)

REPO = Path(__file__).resolve().parent.parent
#: one short epoch per trial (default multi_digits data: its Δm reference applies)
FAST = ["--epochs", "1", "train.max_steps_per_epoch=3", "train.max_eval_batches=2"]


# ---------------------------------------------------------------------------------------
# before Ray: the space, the metric, the settings
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["space.foo=uniform(0,1)"], "unknown hyperparameter for method 'db_mtl'"),
    (["space.bta=uniform(0.5,0.9)"], "did you mean 'beta'"),
    (["space.beta=uniform(0.9,0.5)"], "empty range"),
    (["space.beta=uniform(0.5,0.5)"], "empty range"),
    (["space.gamma=choice()"], "empty range"),
    (["space.beta=uniform(0.5,1.0)"], "beta=1.0 is invalid"),  # DB-MTL needs β < 1
    (["space.lr=loguniform(0,1e-2)"], "0 < low < high"),
    (["space.beta=unifrom(0.5,0.9)"], "unknown distribution 'unifrom'"),
    (["space.gamma=choice(max,constant)"], "gamma_value"),  # constant needs its value
    (["space.gamma_value=loguniform(0.1,1)"], "inconsistent"),  # must be conditional
    (["space.gamma_value=loguniform(0.1,1) if gamma=constant"], "not among gamma's choices"),
    (["space.batch_size=int(8,64)"], "unknown hyperparameter"),
    (["space.train.batch_size=int(8,64)"], "not searchable"),
    (["--method", "gradnorm", "space.lr=search"], "ambiguous"),  # GradNorm has its own lr
    (["--metric", "val_acc"], "unknown --metric 'val_acc'"),
    (["--metric", "test/left/accuracy"], "never does"),
    (["--metric", "val_delta_m", "bench_options.n_train=300"], "val_delta_m is not available"),
    (["--method", "ew,pcgrad"], "one method"),
    (["--method", "ew"], "nothing to search"),  # ew has no knobs: space.lr=search gives one
    (["--trials", "0"], "tune.trials must be >= 1"),
    (["train.eval_every=2"], "evaluate every epoch"),
])  # fmt: skip
def test_bad_input_is_a_clear_error_before_ray(argv, message, tmp_path, monkeypatch, capsys):
    def no_ray(*_, **__):
        raise AssertionError("Ray must not start for a bad configuration")

    monkeypatch.setattr("orchestrator.run.launch.init_ray", no_ray)
    assert main_tune(parse_tune_args(["--out", str(tmp_path), *argv])) == 2
    err = capsys.readouterr().err
    assert "mtlx tune: error:" in err and message in err
    assert not (tmp_path / "searches").exists()


def test_space_grammar():
    assert parse_spec("c", "uniform(0.2, 0.6)")[1] == methods.space.Uniform(0.2, 0.6)
    assert parse_spec("lr", "loguniform(1e-4,1e-2)")[1] == methods.space.LogUniform(1e-4, 1e-2)
    assert parse_spec("k", "int(1,5)")[1] == methods.space.IntUniform(1, 5)
    assert parse_spec("g", ["max", "mean"])[1] == methods.space.Choice(("max", "mean"))
    assert parse_spec("g", "choice(max, 1e-3, true)")[1].values == ("max", 1e-3, True)
    assert parse_spec("c", 0.5)[:2] == ("fixed", 0.5)
    assert parse_spec("g", "mean")[:2] == ("fixed", "mean")
    assert parse_spec("c", "default")[0] == "default" and parse_spec("c", None)[0] == "default"
    kind, dim, cond = parse_spec("v", "loguniform(0.01,10) if gamma=constant,min")
    assert kind == "dimension" and cond == ("gamma", ("constant", "min"))
    with pytest.raises(ConfigError, match="integers"):
        parse_spec("k", "int(1, 2.5)")


def test_space_overrides_narrow_fix_and_extend_the_declared_space():
    s = build_search({}, ["space.beta=uniform(0.8,0.95)", "space.beta_sigma=default",
                          "space.gamma=choice(max,mean,constant)",
                          "space.gamma_value=loguniform(0.01,10) if gamma=constant",
                          "space.lr=search", "space.weight_decay=1e-4"])
    dims = {p.key: p.dim for p in s.params}
    assert dims == {
        "beta": methods.space.Uniform(0.8, 0.95),
        "gamma": methods.space.Choice(("max", "mean", "constant")),
        "train.lr": methods.space.LogUniform(1e-4, 1e-2),  # around the protocol's 1e-3
        "gamma_value": methods.space.LogUniform(0.01, 10),
    }
    assert s.base.train.weight_decay == 1e-4 and s.base.train.eval_every == 1
    assert s.default_point == {"beta": 0.9, "gamma": "max", "train.lr": 1e-3}
    # define-by-run: gamma_value is sampled exactly when gamma is 'constant', and every
    # sampled point builds a valid DB-MTL
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        DefineSpace(s.params)(trial)
        p = trial.params
        assert ("gamma_value" in p) == (p["gamma"] == "constant")
        run = apply_params(s.base, p, "t0000", s.search_id)
        methods.create("db_mtl", 2, **run.hparams)
        assert run.train.lr == p["train.lr"] and run.hparams["beta"] == p["beta"]
        seen.add(p["gamma"])
        study.tell(trial, 0.0)
    assert seen == {"max", "mean", "constant"}
    # the equal-weighting baseline gets the same budget over the learning rate
    ew = build_search({"methods": ["ew"]}, ["space.lr=search"])
    assert [p.key for p in ew.params] == ["train.lr"] and ew.default_point == {"train.lr": 1e-3}
    # the search id covers the space; run ids cover the trial
    assert build_search({}, ["space.beta=uniform(0.8,0.96)"]).search_id != s.search_id
    a = apply_params(s.base, {"beta": 0.85}, "t0001", s.search_id)
    assert a.run_id != apply_params(s.base, {"beta": 0.85}, "t0002", s.search_id).run_id


def test_objective_follows_the_protocols_selection_on_validation(tmp_path):
    import envs

    bench = envs.create("multi_digits")
    ref = {t: dict(v) for t, v in bench.stl_reference.items()}
    spec = {t: list(ms) for t, ms in bench.metrics.items()}
    accs = [(0.5, 0.6), (0.8, 0.7), (0.7, 0.9)]

    def run(selection, average_last, metric="val_delta_m", mode="min"):
        o = Objective(metric, mode, selection, average_last, spec, ref, str(tmp_path), "r")
        return [o.update({"epoch": e, "val/left/accuracy": a, "val/right/accuracy": b,
                          "test/left/accuracy": 1.0, "test/right/accuracy": 1.0})
                for e, (a, b) in enumerate(accs)]

    dm = [delta_m({"left": {"accuracy": a}, "right": {"accuracy": b}}, ref, spec)
          for a, b in accs]
    last = run("last", 1)
    assert [r["objective"] for r in last] == pytest.approx(dm)  # never the test numbers
    assert [r["epochs_done"] for r in last] == [1, 2, 3]
    assert not [k for r in last for k in r if k.startswith("test")]  # Tune never sees test
    assert run("last", 2)[-1]["objective"] == pytest.approx((dm[1] + dm[2]) / 2)
    assert [r["objective"] for r in run("best_val", 1)] == pytest.approx(
        [dm[0], min(dm[:2]), min(dm)])
    left = run("best_val", 1, "val/left/accuracy", "max")
    assert [r["objective"] for r in left] == pytest.approx([0.5, 0.8, 0.8])
    # val_loss comes from the evaluation's Parquet rows (the report has no losses)
    store = ResultsStore(tmp_path)
    store.write_metrics("r", "e00000", [
        {"run_id": "r", "split": "val", "epoch": 0, "task": t, "metric": "loss", "value": v}
        for t, v in (("left", 1.0), ("right", 3.0))])
    o = Objective("val_loss", "min", "last", 1, spec, ref, str(tmp_path), "r")
    assert o.update({"epoch": 0})["objective"] == pytest.approx(2.0)
    fresh = Objective("val_loss", "min", "last", 1, spec, ref, str(tmp_path), "r")
    assert fresh.preload() == 0 and fresh.current() == pytest.approx(2.0)  # resumed trial


def test_benchmark_without_validation_split_holds_out_part_of_train(tmp_path):
    root = write_nyuv2(tmp_path / "nyu", n_train=20, n_test=4)
    s = build_search({"benchmark": "nyuv2", "data_root": str(root), "methods": ["cagrad"],
                      "tune": {"trials": 2}}, [])
    assert s.held_out == {"val_size": 2} and s.base.bench_options["val_size"] == 2
    assert any("hold out 2 of its 20" in n for n in s.notes)
    assert s.metric == "val_loss"  # the 32×32 fixture has no single-task reference
    assert [p.key for p in s.params] == ["c"] and s.default_point == {"c": 0.4}
    best = {"trial_id": "t0001", "params": json.dumps({"c": 0.3})}
    cfg = best_config(s, best)  # what `mtlx run` gets: the full train split again
    assert "bench_options" not in cfg and cfg["hparams"]["cagrad"]["c"] == 0.3
    with pytest.raises(ConfigError, match="no validation split"):
        build_search({"benchmark": "nyuv2", "data_root": str(root),
                      "bench_options": {"val_size": 0}}, [])


def test_capacity_and_trial_resources():
    s = build_search({}, [])
    assert trial_resources(s) == {"CPU": 1.0, "driver_slot": 1}
    assert capacity(s, {"CPU": 2.0, "driver_slot": 12.0}) == 2
    assert capacity(s, {"CPU": 16.0, "driver_slot": 4.0}) == 4  # driver slots bound it
    with pytest.raises(ConfigError, match="driver_slot"):
        capacity(s, {"CPU": 2.0})
    w2 = build_search({}, ["tune.workers_per_trial=2", "tune.gpus_per_trial=2"])
    assert trial_resources(w2) == {"CPU": 0, "driver_slot": 1}  # the workers hold the CPUs
    assert w2.base.workers == 2 and w2.base.gpus_per_worker == 1.0
    assert capacity(w2, {"CPU": 8.0, "GPU": 4.0, "driver_slot": 8.0}) == 2
    with pytest.raises(ConfigError, match="needs 2 CPUs and 2 GPUs"):
        capacity(w2, {"CPU": 2.0, "GPU": 1.0, "driver_slot": 8.0})


def test_cli_hook_and_the_shipped_example_config(tmp_path):
    parser = argparse.ArgumentParser(prog="mtlx")
    add_parser(parser.add_subparsers(dest="command", metavar="{run}"))
    # as `mtlx` parses: flags may follow the positional arguments without leftovers
    args, extra = parser.parse_known_args([
        "tune", "--trials", "3", str(REPO / "configs/tune_db_mtl.yaml"), "space.lr=default",
        "--out", str(tmp_path), "--seed", "4"])
    assert extra == []
    from orchestrator.tune import search_from_args

    s, _ = search_from_args(args)
    assert s.settings.trials == 3 and s.settings.seed == 4 and s.base.seed == 4
    assert s.base.out == str(tmp_path.resolve())
    assert [p.key for p in s.params] == ["beta", "beta_sigma", "gamma", "gamma_value"]
    assert dict(load_yaml(REPO / "configs/tune_db_mtl.yaml"))["tune"]["metric"] == s.metric


def test_asha_spares_the_default_trial_and_last_epochs_and_pickles():
    import pickle

    from ray.tune.schedulers import ASHAScheduler

    from orchestrator.tune import make_asha

    class Trial:  # what the scheduler reads of a Tune trial
        def __init__(self, i: int) -> None:
            self.trial_id, self.experiment_tag = f"id{i}", f"{i + 1}_params"

    def decisions(sched):
        sched.set_search_properties("objective", "min")
        trials = [Trial(i) for i in range(5)]
        for t in trials:
            sched.on_trial_add(None, t)

        def step(i, epochs, value):
            return sched.on_trial_result(None, trials[i],
                                         {"epochs_done": epochs, "objective": value})

        assert [step(i, 1, v) for i, v in ((1, 3.0), (2, 2.0), (3, 1.0))] == ["CONTINUE"] * 3
        assert step(4, 1, 10.0) == "STOP"  # worse than the rung's cutoff
        assert step(3, 2, 1.0) == step(3, 4, 1.0) == "CONTINUE"
        return step(0, 1, 10.0), step(2, 4, 50.0)  # t0000 (default); a bad last epoch

    plain = ASHAScheduler(time_attr="epochs_done", max_t=4, grace_period=1, reduction_factor=2,
                          stop_last_trials=False)
    assert decisions(plain) == ("STOP", "STOP")
    ours = pickle.loads(pickle.dumps(make_asha(4, 1, 2, protect="t0000")))
    assert decisions(ours) == ("CONTINUE", "CONTINUE")


# ---------------------------------------------------------------------------------------
# on Ray: a tiny search end to end, resume
# ---------------------------------------------------------------------------------------


def _search_dir(out: Path) -> Path:
    (d,) = list((out / "searches").iterdir())
    return d


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_tiny_search_writes_every_trial_and_a_runnable_best_config(ray_session, tmp_path,
                                                                   capsys):
    out = tmp_path / "res"
    assert main_tune(parse_tune_args(["--trials", "4", "--out", str(out), *FAST])) == 0
    stdout = capsys.readouterr().out
    d = _search_dir(out)
    trials = pd.read_parquet(d / "trials.parquet").set_index("trial_id")
    summary = pd.read_parquet(d / "summary.parquet").iloc[0]
    assert list(trials.index) == ["t0000", "t0001", "t0002", "t0003"]
    assert set(trials.status) == {"finished"} and bool(summary.complete)
    # the first trial is the default configuration; the others are sampled from the space
    default = trials.loc["t0000", ["hp.beta", "hp.beta_sigma", "hp.gamma"]].tolist()
    assert default == [0.9, 0.0, "max"]
    assert trials["hp.beta"].nunique() == 4
    assert trials["hp.beta"].between(0.5, 0.999).all()
    assert set(trials["hp.gamma"]) <= {"max", "min", "mean", "median"}
    # every trial is an ordinary run of the dataset, with its hyperparameters and ids
    runs = pd.read_parquet(out / "runs").set_index("trial_id")
    assert set(runs.index) == set(trials.index) and set(runs.search_id) == {d.name}
    assert set(runs.status) == {"finished"}
    metrics = pd.read_parquet(out / "metrics")
    import envs

    bench = envs.create("multi_digits")
    for tid, t in trials.iterrows():
        hp = json.loads(runs.loc[tid, "hparams"])
        assert (hp["beta"], hp["gamma"]) == (t["hp.beta"], t["hp.gamma"])
        assert runs.loc[tid, "run_id"] == t.run_id
        m = metrics[metrics.run_id == t.run_id]
        assert {"train", "val", "test", "reported"} <= set(m.split)
        val = m[(m.split == "val") & (m.metric == "accuracy")]
        got = {r.task: {"accuracy": r.value} for r in val.itertuples()}
        # the objective is the validation Δm (1 epoch, selection=last), never test
        assert t.objective == pytest.approx(delta_m(got, bench.stl_reference, bench.metrics))
    best = trials.objective.idxmin()
    assert summary.best_trial_id == best and summary.best_objective == trials.objective.min()
    assert summary.default_objective == trials.loc["t0000", "objective"]
    # best.yaml: printed, loads, and `mtlx run` reproduces the trial's numbers
    best_yaml = d / "best.yaml"
    assert "methods:" in stdout and yaml.safe_load(best_yaml.read_text()) == yaml.safe_load(stdout)
    cfg = yaml.safe_load(best_yaml.read_text())
    assert cfg["hparams"]["db_mtl"]["beta"] == trials.loc[best, "hp.beta"]
    rerun = tmp_path / "rerun"
    assert cli.main(["run", str(best_yaml), "--workers", "0", "--seeds", "0", "--out", str(rerun),
                     "--no-report"]) == 0
    again = pd.read_parquet(rerun / "metrics")
    def evals(m):
        key = ["split", "epoch", "task", "metric"]
        m = m[m.split.isin(["val", "test"])].sort_values(key)
        return m[key + ["value"]].reset_index(drop=True)

    pd.testing.assert_frame_equal(evals(again),
                                  evals(metrics[metrics.run_id == trials.loc[best, "run_id"]]))
    # mtlx report of the search
    text = tune_report(out)
    assert f"### search {d.name}" in text and f"best: {best}" in text
    assert "| t0000 (default)" in text
    assert [p.name for p in plot_search(out, tmp_path / "plots")] == [f"search_{d.name}.png"]


class InterruptAfterFirstTrial:
    """Sends this process SIGINT (Ctrl-C) when the first trial completes, once (a marker
    file: Tune stores its callbacks in the experiment state, so the resumed search has it
    too)."""

    def __new__(cls, marker: str):
        from ray.tune import Callback

        class _Interrupt(Callback):
            def __reduce__(self):
                return InterruptAfterFirstTrial, (marker,)

            def on_trial_complete(self, iteration, trials, trial, **info):
                if not os.path.exists(marker):
                    Path(marker).touch()
                    os.kill(os.getpid(), signal.SIGINT)

        return _Interrupt()


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_interrupted_search_resumes_without_rerunning_finished_trials(ray_session, tmp_path,
                                                                       capsys):
    out = tmp_path / "res"
    argv = ["--trials", "3", "--out", str(out), *FAST]
    code = main_tune(parse_tune_args(argv),
                     callbacks=[InterruptAfterFirstTrial(str(tmp_path / "interrupted"))])
    assert code == 130 and "--resume" in capsys.readouterr().err
    d = _search_dir(out)
    trials = pd.read_parquet(d / "trials.parquet").set_index("trial_id")
    assert not pd.read_parquet(d / "summary.parquet").complete.iloc[0]
    done = trials[trials.status == "finished"]
    assert 1 <= len(done) < 3  # the first trial to complete (two run at once on 2 CPUs)
    files = {tid: [out / "runs" / f"{t.run_id}.parquet",
                   *sorted((out / "metrics" / t.run_id).glob("*.parquet"))]
             for tid, t in done.iterrows()}
    stamps = {tid: [f.stat().st_mtime_ns for f in fs] for tid, fs in files.items()}
    # damaged search tables (a killed writer, a full disk) are skipped and named, and --resume
    # writes them again
    for name in ("summary.parquet", "trials.parquet"):
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: len(data) // 2])
    # the same command without --resume refuses to mix a new search into the old one
    assert main_tune(parse_tune_args(argv)) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and f"skipped unreadable {d}/summary.parquet" in err
    assert main_tune(parse_tune_args([*argv, "--resume"])) == 0
    after = pd.read_parquet(d / "trials.parquet").set_index("trial_id")
    assert list(after.index) == ["t0000", "t0001", "t0002"]
    assert set(after.status) == {"finished"}
    assert pd.read_parquet(d / "summary.parquet").complete.iloc[0]
    for tid, fs in files.items():  # finished trials were not re-run: their files untouched
        assert [f.stat().st_mtime_ns for f in fs] == stamps[tid], tid
        assert after.loc[tid, "objective"] == trials.loc[tid, "objective"]
    runs = pd.read_parquet(out / "runs")
    assert sorted(runs.trial_id) == ["t0000", "t0001", "t0002"]  # one run per trial


def test_mtlx_tune_is_a_subcommand_and_rejects_bad_spaces_before_ray(capsys, monkeypatch):
    import ray

    from orchestrator import cli

    def no_ray(*a, **k):
        raise AssertionError("Ray must not start for an invalid search")

    monkeypatch.setattr(ray, "init", no_ray)
    code = cli.main(["tune", "--benchmark", "multi_digits", "--method", "db_mtl",
                     "space.bta=uniform(0.5,0.9)"])
    assert code == 2
    assert "did you mean 'beta'" in capsys.readouterr().err


def test_report_keeps_search_trials_out_of_the_method_table(tmp_path):
    import pandas as pd

    from orchestrator.report import Results

    runs = tmp_path / "runs"
    runs.mkdir()
    pd.DataFrame({"run_id": ["a", "b"], "search_id": [None, "s1"]}).to_parquet(runs / "x.parquet")
    (tmp_path / "metrics").mkdir()
    pd.DataFrame({"run_id": ["a", "b"], "value": [1.0, 2.0]}).to_parquet(tmp_path / "metrics" / "m.parquet")
    assert list(Results.load(tmp_path).runs.run_id) == ["a"]
    assert list(Results.load(tmp_path).metrics.run_id) == ["a"]
    assert sorted(Results.load(tmp_path, include_trials=True).runs.run_id) == ["a", "b"]


# ---------------------------------------------------------------------------------------
# RL benchmarks (mt10 / mt1): the objective is the evaluation episodes' success
# ---------------------------------------------------------------------------------------

#: a tiny SAC on mt1 (reach-v3): 200 loop steps, evaluations at steps 0, 100, 200
RL_FAST = ["--benchmark", "mt1", "--method", "cagrad", "--steps", "200", "train.eval_every=100",
           "train.batch_size=16", "bench_options.horizon=20", "trainer_options.hidden=16",
           "trainer_options.layers=1", "trainer_options.warmup_steps=50",
           "trainer_options.buffer_size=500"]


@pytest.mark.parametrize("argv, message", [
    (["--metric", "val_loss"], "val_loss is not available: 'mt1' is an RL benchmark"),
    (["--metric", "val_delta_m"], "val_delta_m is not available"),
    (["--metric", "test/reach-v3/success"], "never does"),
    (["--metric", "val/reach-v3/accuracy"], "unknown --metric"),
    (["space.weight_decay=search"], "no weight decay"),
    (["space.alpha=uniform(0.1,0.9)"], "unknown hyperparameter for method 'cagrad'"),
    (["--workers-per-trial", "2"], "one SAC learner per process"),
])  # fmt: skip
def test_rl_bad_input_is_a_clear_error_before_ray(argv, message, tmp_path, monkeypatch, capsys):
    def no_ray(*_, **__):
        raise AssertionError("Ray must not start for a bad configuration")

    monkeypatch.setattr("orchestrator.run.launch.init_ray", no_ray)
    assert main_tune(parse_tune_args(["--out", str(tmp_path), *RL_FAST, *argv])) == 2
    err = capsys.readouterr().err
    assert "mtlx tune: error:" in err and message in err
    assert not (tmp_path / "searches").exists()


def test_rl_search_settings_and_supervised_only_metric_names(tmp_path):
    s = build_search({}, ["benchmark=mt10", "methods=imgrad", f"out={tmp_path}"])
    assert (s.kind, s.metric, s.mode, s.unit) == ("rl", "val_success", "max", "evaluations")
    assert [p.key for p in s.params] == ["alpha"] and not s.held_out
    assert s.base.train.eval_every == 30_000  # loop steps (the protocol's), not forced to 1
    assert s.epochs == -(-2_000_000 // 30_000) + 1  # evaluations incl. the step-0 one
    # the benchmark's reference hyperparameters make the default trial; sampled values win
    c = build_search({}, ["benchmark=mt10", "methods=cagrad", f"out={tmp_path}"])
    assert c.default_point == {"c": 0.9} and c.base.hparams["c"] == 0.9
    assert apply_params(c.base, {"c": 0.3}).hparams["c"] == 0.3
    # the val_* RL names are refused on a supervised benchmark
    with pytest.raises(ConfigError, match="for RL benchmarks"):
        build_search({}, ["tune.metric=val_success", f"out={tmp_path}"])


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_tiny_rl_search_on_mt1_records_sampled_c_and_writes_best(ray_session, tmp_path, capsys):
    out = tmp_path / "res"
    assert main_tune(parse_tune_args(["--trials", "2", "--out", str(out), *RL_FAST])) == 0
    stdout = capsys.readouterr().out
    d = _search_dir(out)
    trials = pd.read_parquet(d / "trials.parquet").set_index("trial_id")
    summary = pd.read_parquet(d / "summary.parquet").iloc[0]
    assert list(trials.index) == ["t0000", "t0001"] and bool(summary.complete)
    assert set(trials.status) == {"finished"}
    assert summary.metric == "val_success" and summary["mode"] == "max" and summary.epochs == 3
    assert (trials.epochs_done == 3).all()  # evaluations at steps 0, 100, 200
    # t0000: MT10's reference c = 0.9; t0001: a sampled c, which wins over it in the run
    assert trials.loc["t0000", "hp.c"] == 0.9
    assert 0.1 <= trials.loc["t0001", "hp.c"] <= 0.9 and trials.loc["t0001", "hp.c"] != 0.9
    runs = pd.read_parquet(out / "runs").set_index("trial_id")
    metrics = pd.read_parquet(out / "metrics")
    for tid, t in trials.iterrows():
        hp = json.loads(runs.loc[tid, "hparams"])
        assert hp["c"] == t["hp.c"] and hp["rescale"] == 1  # the rest of METHOD_HPARAMS kept
        assert runs.loc[tid, "run_id"] == t.run_id and runs.loc[tid, "search_id"] == d.name
        m = metrics[(metrics.run_id == t.run_id) & (metrics.split == "eval")]
        last = m[(m.step == 200) & (m.metric == "success") & (m.task != "")]
        assert len(last) == 1  # selection=last: the final evaluation's mean success
        assert t.objective == pytest.approx(last.value.mean())
    assert not metrics.split.isin(["val", "test"]).any()
    best_yaml = d / "best.yaml"
    cfg = yaml.safe_load(best_yaml.read_text())
    best = cfg["hparams"]["cagrad"]
    assert cfg["benchmark"] == "mt1" and best["c"] == trials.loc[summary.best_trial_id, "hp.c"]
    assert cfg["train"]["steps"] == 200 and cfg["train"]["eval_every"] == 100
    assert yaml.safe_load(stdout) == cfg
