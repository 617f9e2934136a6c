"""The ``mtlx`` command line (also ``python -m orchestrator``).

::

    mtlx run [CONFIG.yaml] [--benchmark B] [--methods m1,m2] [--seeds 0,1,2] [--epochs N]
             [--workers W] [--gpus-per-worker G] [--data-root PATH] [--out DIR] [key=value ...]
    mtlx report RESULTS_DIR [--format markdown|csv] [--plots DIR] [--html FILE] [--benchmark B]
                [--against TABLE_ID]
    mtlx tune [--benchmark B] [--method M] [--trials N] [--metric val_delta_m] [--scheduler asha|none]
              [--workers-per-trial W] [--gpus-per-trial G] [--max-concurrent K] [--resume] [--out DIR]
    mtlx reproduce --list | TABLE_ID [--data-root PATH] [--seeds 0,1,2] [--smoke] [--out DIR]
                   [--workers W] [--ray-address A] [key=value ...]
    mtlx methods
    mtlx benchmarks

``mtlx run`` without arguments runs the embedded default: ``multi_digits`` (no download),
the methods of :data:`orchestrator.config.DEFAULT_METHODS` that are registered, seeds 0 and
1, each run in its own Ray task on a local Ray started for the command, then prints the
ranked report. Flags override the YAML file with their argparse types (never re-parsed);
``key=value`` overrides (dotted keys, YAML values, see ``mtlx run --help-config``) override
both.

Subcommands are the entries of :data:`COMMANDS`: ``(name, add_parser(subparsers), main(args))``.
A subpackage adds one by exposing those two functions and a line there.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from orchestrator import trackers, tune
from orchestrator.config import (
    COMMON_FLAGS,
    DEFAULT_METHODS,
    ConfigError,
    ExperimentConfig,
    add_common_flags,
    add_storage_flag,
    apply_overrides,
    experiment_from_dict,
    field_help,
    help_config,
    set_values,
    split_args,
    storage_config,
    storage_overrides,
)
from orchestrator.reproduce import cli as reproduce_cli

#: ``mtlx run`` flag (argparse dest) → config key (flags override the YAML file)
FLAGS = {
    "benchmark": "benchmark", "methods": "methods", "seeds": "seeds", "workers": "workers",
    "gpus_per_worker": "gpus_per_worker", "max_concurrent": "max_concurrent",
    "max_failures": "max_failures",
    "epochs": "train.epochs", "steps": "train.steps", "rerun": "rerun", "trackers": "trackers",
    **{k: k for k in COMMON_FLAGS},
}  # fmt: skip


# ---------------------------------------------------------------------------------------
# mtlx run
# ---------------------------------------------------------------------------------------


def add_run_parser(sub: Any) -> argparse.ArgumentParser:
    r = sub.add_parser("run", help="train methods on a benchmark and print the report",
                       description="Train runs (method × seed) and print the ranked report. "
                                   "Without arguments: the embedded multi_digits demo.")
    r.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value ...]",
                   help="an optional YAML config, then dotted overrides (train.lr=3e-4)")
    r.add_argument("--benchmark", help="benchmark name (mtlx benchmarks)")
    r.add_argument("--methods", help="comma-separated method names; 'stl' = single-task runs")
    r.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2")
    r.add_argument("--epochs", type=int, help="training epochs (default: the protocol's)")
    r.add_argument("--steps", type=int, help="training steps (step-based trainers, e.g. RL)")
    r.add_argument("--workers", type=int,
                   help="0: in this process; 1 (default): one Ray task per run; W>=2: Ray Train "
                        "with W workers per run")
    r.add_argument("--gpus-per-worker", type=float, dest="gpus_per_worker")
    r.add_argument("--max-concurrent", type=int, dest="max_concurrent",
                   help="at most this many runs at once")
    r.add_argument("--max-failures", type=int, dest="max_failures", metavar="N",
                   help=field_help(ExperimentConfig, "max_failures"))
    r.add_argument("--rerun", action="store_true", default=None,
                   help="rerun finished runs (default: skip them, resume unfinished ones)")
    add_common_flags(r)
    trackers.add_flags(r)
    r.add_argument("--help-config", action="store_true", help="list every config key")
    r.add_argument("--no-report", action="store_true", help="do not print the report")
    return r


def build_experiment(args: argparse.Namespace) -> tuple[ExperimentConfig, bool]:
    """(config, methods_given) from the ``run`` arguments: the YAML file, then the flags
    (typed by argparse, set as they are), then the ``key=value`` overrides (YAML values)."""
    data, overrides = split_args(args.args)
    overrides = [*storage_overrides(args.storage_options), *overrides]
    flags = {key: getattr(args, flag) for flag, key in FLAGS.items()}
    data = set_values(data, {k: v for k, v in flags.items() if v is not None})
    data = set_values(data, trackers.option_values(args.tracker_option))
    data = apply_overrides(data, overrides)
    return experiment_from_dict(data), "methods" in data


def cmd_run(args: argparse.Namespace) -> int:
    if args.help_config:
        print("config keys (YAML, or key=value overrides):\n" + help_config())
        return 0
    import methods
    from orchestrator.report import Results, report_text
    from orchestrator.run.launch import describe, run_experiment

    exp, methods_given = build_experiment(args)
    if not methods_given:  # the embedded default: the default methods that exist
        available = set(methods.available())
        missing = [m for m in DEFAULT_METHODS if m not in available]
        exp.methods = [m for m in DEFAULT_METHODS if m in available]
        if missing:
            print(f"note: default methods not available in this install: {', '.join(missing)}",
                  file=sys.stderr)
    t0 = time.perf_counter()
    outcomes = run_experiment(exp)
    wall = time.perf_counter() - t0
    describe(outcomes)
    print(f"wall time: {wall:.1f} s; results in {exp.out}/", file=sys.stderr)
    if not args.no_report:
        res = Results.load(exp.out, storage=exp.storage)
        for problem in res.problems:
            print(f"mtlx: {problem}", file=sys.stderr)
        ids = [o.run_id for o in outcomes]
        print(report_text(res, exp.benchmark, run_ids=ids), end="")
    return 0 if all(o.status in ("finished", "skipped") for o in outcomes) else 1


# ---------------------------------------------------------------------------------------
# mtlx report, methods, benchmarks
# ---------------------------------------------------------------------------------------


def add_report_parser(sub: Any) -> argparse.ArgumentParser:
    rep = sub.add_parser("report", help="tables and plots from a results directory")
    rep.add_argument("results", help="results location (the --out of mtlx run: a directory "
                     "or s3://BUCKET/PREFIX ...)")
    add_storage_flag(rep)
    rep.add_argument("--format", default="markdown", choices=("markdown", "csv"))
    rep.add_argument("--plots", metavar="DIR", help="also write PNG plots into DIR")
    rep.add_argument("--benchmark", help="only this benchmark")
    rep.add_argument("--html", metavar="FILE", help="also write one self-contained HTML page "
                     "(tables, figures, searches, reproductions) to FILE")
    reproduce_cli.add_against(rep)
    return rep


def write_html_report(results: str, path: str, benchmark: str | None = None,
                      against: str | None = None) -> None:
    """``mtlx report --html``: the page of :mod:`orchestrator.report.html`, with the searches
    (:mod:`orchestrator.tune`) and the comparisons (``--against``, and every table a
    ``mtlx reproduce`` wrote into ``RESULTS/reproduce/``) handed in from their layers."""
    import tempfile
    from pathlib import Path

    from orchestrator.report import Results, html
    from orchestrator.reproduce import compare, render, tables
    from orchestrator.tune import report as tune_report
    from orchestrator.tune import results as tune_results

    if Path(path).is_dir():
        raise ConfigError(f"--html {path!r} is a directory; fix: give a file name, e.g. "
                          f"{Path(path) / 'report.html'}")
    try:
        res = Results.load(results)
        if benchmark is not None and benchmark not in set(res.runs.benchmark):
            raise ValueError(f"no runs of benchmark {benchmark!r} in these results; present: "
                             f"{sorted(set(res.runs.benchmark))}")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    searches = []
    for d in tune_results.find_searches(results):
        summary, trials = tune_results.load_summary(d), tune_results.load_trials(d)
        if benchmark is not None and summary.get("benchmark") != benchmark:
            continue
        searches.append(html.SearchPart(d.name, tune_report.tune_report(results, d.name),
                                        summary, trials,
                                        tune_report.param_importance(trials, summary)))
    ids = [against] if against else []
    ids += sorted(p.stem for p in (Path(results) / "reproduce").glob("*.csv") if p.stem not in ids)
    repros = []
    with tempfile.TemporaryDirectory() as tmp:
        for table_id in ids:
            try:
                table = tables.get_table(table_id)
            except tables.TableError:
                continue  # a file there that is not a shipped table's comparison
            if benchmark is not None and table.benchmark != benchmark:
                continue
            cmp = compare.compare(table, results, None)
            png = render.plot(cmp, Path(tmp) / f"{table.id}.png")
            repros.append(html.ReproPart(table.id, render.markdown(cmp), str(png)))
        page = html.build(res, str(results), benchmark, searches, repros)
    html.write(path, page)
    print(f"wrote {path} ({len(page) / 1e6:.1f} MB, self-contained)", file=sys.stderr)


def cmd_report(args: argparse.Namespace) -> int:
    if args.html:
        write_html_report(args.results, args.html, args.benchmark, args.against)
    if args.against:  # side by side with a published table (orchestrator.reproduce)
        return reproduce_cli.report_against(args.results, args.against, args.format,
                                            args.plots)
    from orchestrator.report import Results, plot_all, report_text

    # ordinary runs: the ranked method tables; searches (mtlx tune): their own section
    storage = storage_config(args.storage_options)
    searches = tune.tune_report(args.results, fmt=args.format, storage=storage)
    try:
        res = Results.load(args.results, storage=storage)
        text = report_text(res, args.benchmark, args.format) if len(res.runs) or not searches else ""
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for problem in res.problems:
        print(f"mtlx: {problem}", file=sys.stderr)
    print(text, end="")
    if searches:
        print(("\n" if text else "") + searches, end="")
    if args.plots:
        files = plot_all(res, args.plots, args.benchmark) if len(res.runs) else []
        files += tune.plot_search(args.results, args.plots, storage=storage)
        print(f"wrote {len(files)} plot(s) to {args.plots}/", file=sys.stderr)
    return 0


def _first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def add_methods_parser(sub: Any) -> argparse.ArgumentParser:
    return sub.add_parser("methods", help="list the methods with their hyperparameters")


def cmd_methods(_: argparse.Namespace) -> int:
    import methods

    for name in methods.available():
        cls = methods.get_class(name)
        # loss-weighting methods take no gradients: "level" only means something for the others
        caps = [f"gradient, level={cls.default_level}" if cls.requires_grads else "loss weighting"]
        if cls.supports_rep_grads:
            caps.append("rep-capable")
        if cls.stateful:
            caps.append("stateful")
        if cls.requires_model:
            caps.append("needs model " + "+".join(cls.requires_model))
        desc = _first_line(cls) or _first_line(sys.modules[cls.__module__])
        hp = ", ".join(f"{k}={v!r}" for k, v in methods.hparam_fields(name).items()) or "-"
        print(f"{name:14s} {desc}\n{'':14s} [{', '.join(caps)}]  hparams: {hp}")
    return 0


def add_benchmarks_parser(sub: Any) -> argparse.ArgumentParser:
    return sub.add_parser("benchmarks", help="list the benchmarks with tasks and protocols")


def cmd_benchmarks(_: argparse.Namespace) -> int:
    import envs

    for name in envs.available():
        cls = envs.get_class(name)
        tasks = list(cls.tasks)
        shown = ", ".join(tasks[:6]) + (f", … ({len(tasks)} tasks)" if len(tasks) > 6 else "")
        p = cls.protocol
        proto = ", ".join(f"{k}={getattr(p, k)}" for k in
                          ("optimizer", "lr", "batch_size", "epochs", "selection"))
        desc = cls.description or _first_line(cls)
        print(f"{name:14s} {desc}\n{'':14s} kind={cls.kind}; "
              f"tasks: {shown or '-'}\n{'':14s} protocol: {proto}"
              + (f"\n{'':14s} options: {dict(cls.options)}" if cls.options else ""))
    return 0


def add_architectures_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("architectures", help="list the architectures a benchmark's model "
                       "takes (model_options.arch=...), with parameter counts")
    p.add_argument("--benchmark", default="multi_digits")
    p.add_argument("--data-root", default=None, help="the dataset, for benchmarks that read one")
    return p


def cmd_architectures(args: argparse.Namespace) -> int:
    import envs
    from envs import architectures

    try:
        bench = envs.create(args.benchmark, root=args.data_root)
    except (FileNotFoundError, ValueError, TypeError) as e:
        raise ConfigError(f"{e}\nfix: choose --benchmark from {envs.available()} and pass "
                          "--data-root for benchmarks that read a dataset") from None
    print(f"{args.benchmark}: model_options.arch=<arch> (default hps)\n")
    print(architectures.format_table(architectures.describe(bench)))
    return 0


# ---------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------

Handler = Callable[[argparse.Namespace], int]

#: every subcommand: (name, add its parser to ``mtlx``'s subparsers, run it); in help order
COMMANDS: list[tuple[str, Callable[[Any], argparse.ArgumentParser], Handler]] = [
    ("run", add_run_parser, cmd_run),
    ("report", add_report_parser, cmd_report),
    ("tune", tune.add_parser, tune.main_tune),
    ("reproduce", reproduce_cli.add_parser, reproduce_cli.main),
    ("methods", add_methods_parser, cmd_methods),
    ("benchmarks", add_benchmarks_parser, cmd_benchmarks),
    ("architectures", add_architectures_parser, cmd_architectures),
]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtlx", description="Multi-task learning experiments on Ray.")
    sub = p.add_subparsers(dest="command", metavar="{" + ",".join(c[0] for c in COMMANDS) + "}")
    for _, add_parser, _ in COMMANDS:
        add_parser(sub)
    return p


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler's stop) ends a command like Ctrl-C: runs are recorded
    ``interrupted`` with their checkpoints kept, Ray is shut down, leases are released."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    if previous is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        if previous is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    # overrides may follow flags (`mtlx run --seeds 0 train.lr=1e-3`): collect them here
    args, extra = parser.parse_known_args(argv)
    flags = [a for a in extra if a.startswith("-")]
    if flags or (extra and args.command not in ("run", "reproduce")):
        parser.error(f"unrecognized arguments: {' '.join(flags or extra)}")
    if args.command == "run":
        args.args = list(args.args) + extra
    if args.command == "reproduce":
        args.overrides = list(args.overrides) + extra
    if args.command is None:
        parser.print_help()
        return 2
    handler = {name: run for name, _, run in COMMANDS}[args.command]
    try:
        with _sigterm_as_interrupt():
            return handler(args)
    except ConfigError as e:
        print(f"mtlx: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nmtlx: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
