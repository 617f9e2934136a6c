"""``mtlx tune``: flags, the subcommand parser and its entry point."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from orchestrator import trackers
from orchestrator.config import (
    COMMON_FLAGS,
    ConfigError,
    add_common_flags,
    field_help,
    set_values,
    split_args,
    storage_overrides,
)
from orchestrator.tune.results import SearchOutcome, run_hint
from orchestrator.tune.runner import run_search
from orchestrator.tune.search import (
    DEFAULT_METHOD,
    SCHEDULERS,
    Search,
    TuneSettings,
    build_search,
)
from orchestrator.tune.space import Param

#: flag → tune setting (``tune.<name>``) or experiment key
_TUNE_FLAGS = ("trials", "metric", "scheduler", "workers_per_trial", "gpus_per_trial",
               "max_concurrent", "max_failures", "seed")


_EXP_FLAGS = {"benchmark": "benchmark", "method": "methods", "epochs": "train.epochs",
              "steps": "train.steps", "trackers": "trackers", **{k: k for k in COMMON_FLAGS}}


def _add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark", help="benchmark name (default multi_digits)")
    p.add_argument("--method", help=f"the method to tune (default {DEFAULT_METHOD})")
    p.add_argument("--trials", type=int, help="number of trials (default 12)")
    p.add_argument("--metric", help="objective on the validation split: val_delta_m (default "
                                    "when there is a single-task reference), val_loss or "
                                    "val/<task>/<metric>; RL benchmarks (mt10, mt1): "
                                    "val_success (default: mean evaluation success, maximised), "
                                    "val_return or val/<task>/success|return")
    p.add_argument("--scheduler", choices=SCHEDULERS, help="asha (default): early stopping")
    p.add_argument("--workers-per-trial", type=int, dest="workers_per_trial",
                   help="1 (default): the trial trains in its own process; W >= 2: W Ray "
                        "Train workers")
    p.add_argument("--gpus-per-trial", type=float, dest="gpus_per_trial")
    p.add_argument("--max-concurrent", type=int, dest="max_concurrent",
                   help="at most this many trials at once (default: what resources hold)")
    p.add_argument("--max-failures", type=int, dest="max_failures", metavar="N",
                   help=field_help(TuneSettings, "max_failures"))
    p.add_argument("--seed", type=int, help="seed of the runs and the sampler (default 0)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default: the protocol's)")
    p.add_argument("--steps", type=int, help="RL benchmarks: loop steps per trial (train.steps; "
                                             "evaluations every train.eval_every steps)")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue an interrupted search (finished trials are not re-run)")
    p.add_argument("--fresh", action="store_true", default=None,
                   help="delete an existing search with the same id (and its runs) first")
    add_common_flags(p)
    trackers.add_flags(p)


_DESCRIPTION = (
    "Search a method's hyperparameters with Ray Tune + Optuna (TPE, seeded) and optional "
    "ASHA, on the validation split. Without arguments: DB-MTL's beta, beta_sigma and gamma "
    "strategy on multi_digits. Space entries: space.NAME=uniform(a,b) | loguniform(a,b) | "
    "int(a,b) | choice(x,y) | VALUE | default | search, optionally followed by "
    "'if CHOICE=VALUE'. Other key=value arguments override the config like in `mtlx run`. "
    "RL benchmarks (mt10, mt1: e.g. --method cagrad searches c, imgrad alpha) are scored by "
    "their evaluation episodes (--metric val_success), ASHA compares them per evaluation "
    "(every train.eval_every loop steps of --steps)."
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``tune`` to ``mtlx``'s subcommands (positional arguments and flags may be mixed:
    everything after the first positional is re-parsed by :func:`main_tune`)."""
    p = subparsers.add_parser("tune", help="hyperparameter search (Ray Tune + Optuna)",
                              description=_DESCRIPTION)
    p.add_argument("args", nargs=argparse.REMAINDER,
                   metavar="[CONFIG.yaml] [space.NAME=SPEC | key=value ...]")
    _add_flags(p)
    return p


def tune_parser() -> argparse.ArgumentParser:
    """A stand-alone parser of ``mtlx tune``'s arguments (``prog="mtlx tune"``)."""
    p = argparse.ArgumentParser(prog="mtlx tune", description=_DESCRIPTION)
    p.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [space.NAME=SPEC | key=value ...]")
    _add_flags(p)
    return p


def parse_tune_args(argv: Sequence[str]) -> argparse.Namespace:
    return tune_parser().parse_intermixed_args(list(argv))


def search_from_args(args: argparse.Namespace) -> tuple[Search, dict[str, Any]]:
    """(validated search, run options) from parsed ``mtlx tune`` arguments."""
    positional = list(getattr(args, "args", []) or [])
    if any(a.startswith("-") for a in positional):  # flags after a positional (REMAINDER)
        rest = parse_tune_args(positional)
        for k, v in vars(rest).items():
            if k != "args" and v is not None:
                setattr(args, k, v)
        positional = list(rest.args)
    data, overrides = split_args(positional, "space.NAME=SPEC or key=value overrides")
    overrides = [*storage_overrides(getattr(args, "storage_options", None)), *overrides]
    flags = {key: getattr(args, flag, None) for flag, key in _EXP_FLAGS.items()}
    flags.update({f"tune.{flag}": getattr(args, flag, None) for flag in _TUNE_FLAGS})
    data = set_values(data, {k: v for k, v in flags.items() if v is not None})
    data = set_values(data, trackers.option_values(getattr(args, "tracker_option", None)))
    search = build_search(data, overrides, resume=bool(args.resume),
                          fresh=bool(args.fresh))
    return search, {"verbose": search.exp.verbose, "ray_address": search.exp.ray_address}


def main_tune(args: argparse.Namespace, *, callbacks: Sequence[Any] = ()) -> int:
    """``mtlx tune``: validate, search (or resume), print the best configuration.

    Returns 0 when the search is complete, 130 when it was interrupted (resume it with
    ``--resume``), 2 for a configuration error (nothing started)."""
    try:
        search, opts = search_from_args(args)
        if search.resume and search.fresh:
            raise ConfigError("--resume and --fresh exclude each other")
        for note in search.notes:
            print(f"note: {note}", file=sys.stderr)
        print(f"search {search.search_id}: {search.method} on {search.base.benchmark}, "
              f"{search.settings.trials} trials, objective {search.metric} "
              f"({search.mode}imised, validation), space: "
              + (", ".join(f"{p.key.removeprefix('train.')}={_dim_text(p)}"
                           for p in search.params)), file=sys.stderr)
        t0 = time.perf_counter()
        outcome = run_search(search, callbacks=callbacks, **opts)
    except ConfigError as e:
        print(f"mtlx tune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nmtlx tune: interrupted; continue with the same command and --resume",
              file=sys.stderr)
        return 130
    print_outcome(outcome, time.perf_counter() - t0)
    return 0 if outcome.complete else 130


def _dim_text(p: Param) -> str:
    d = p.to_json()
    kind = d.pop("kind")
    when = d.pop("when", None)
    args = d["values"] if kind == "Choice" else [d["low"], d["high"]]
    text = f"{kind.lower()}({', '.join(str(a) for a in args)})"
    return text + (f" if {next(iter(when))}={','.join(map(str, next(iter(when.values()))))}"
                   if when else "")


def print_outcome(outcome: SearchOutcome, wall_s: float, stream: TextIO | None = None) -> None:
    """The search's result: counts, best vs default, and the best configuration (YAML)."""
    err = stream or sys.stderr
    s = outcome.summary
    err.write(f"search {outcome.search_id}: {s.get('trials_finished')} finished, "
              f"{s.get('trials_stopped')} stopped by ASHA, {s.get('trials_failed')} failed "
              f"of {s.get('trials')} trials; {wall_s:.0f} s\n")
    if not outcome.complete:
        err.write("search interrupted: continue it with the same command and --resume\n")
    if s.get("best_trial_id"):
        line = f"best: {s['best_trial_id']} {s['metric']} = {s['best_objective']:.4g}"
        if s.get("default_objective") is not None:
            line += f" (default configuration: {s['default_objective']:.4g})"
        err.write(line + "\n")
    err.write(f"results: {outcome.dir}/ (trials.parquet, summary.parquet)\n")
    if outcome.best_yaml is not None:
        err.write(f"best configuration ({outcome.best_yaml}; `mtlx run "
                  f"{run_hint(outcome.best_yaml)}`):\n")
        print(outcome.best_yaml_text(), end="")
