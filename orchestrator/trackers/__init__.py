"""Experiment trackers: MLflow, TensorBoard, W&B (docs/trackers.md).

Opt-in (``--tracker NAME``, ``trackers: [...]``); each tracker is an optional extra
(``pip install 'mtlx[mlflow]'``) whose package is imported only when a run asks for it. The
Parquet results stay the source of truth: a tracker receives the same rows, through
:class:`~orchestrator.trackers.base.Trackers` attached to the run's ``RunContext`` on rank 0
by :func:`orchestrator.run.execute.train_run` — the same in-process, in a Ray task, on Ray
Train rank 0 and in a Tune trial.

Each tracker module has ``resolve(options, out, benchmark) -> dict`` (defaults under
``<out>/trackers/``), ``prepare(options)`` (in the driver, before Ray: create what every run
shares, which also checks the location) and ``open_run(cfg, options, run_info, resumed)``
(one run's :class:`~orchestrator.trackers.base.Tracker`; a resumed run continues the tracker
run of its earlier attempt, a fresh start replaces it).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.config import TRACKERS, ConfigError, RunConfig
from orchestrator.trackers.base import Tracker, Trackers, tracker_failed

#: tracker → (its module, the package it needs); the extra has the tracker's name
MODULES = {
    "mlflow": ("orchestrator.trackers.mlflow", "mlflow"),
    "tensorboard": ("orchestrator.trackers.tensorboard", "tensorboard"),
    "wandb": ("orchestrator.trackers.wandb", "wandb"),
}
assert tuple(MODULES) == TRACKERS, "orchestrator.config.TRACKERS and MODULES must agree"

__all__ = ["MODULES", "Tracker", "Trackers", "add_flags", "check_installed", "open_trackers",
           "option_values", "resolve"]


def add_flags(p: Any) -> None:
    """``--tracker`` and ``--tracker-option`` on an ``argparse`` parser (``mtlx run``,
    ``mtlx tune``): config key ``trackers`` and :func:`option_values`."""
    p.add_argument("--tracker", action="append", dest="trackers", metavar="NAME",
                   help=f"also log every run to this tracker, one of {list(TRACKERS)} "
                        "(repeatable; pip install 'mtlx[NAME]')")
    p.add_argument("--tracker-option", action="append", dest="tracker_option",
                   metavar="TRACKER.KEY=VALUE",
                   help="a tracker option, e.g. mlflow.tracking_uri=http://host:5000 or "
                        "wandb.mode=offline (tracker_options.* in mtlx run --help-config)")


def option_values(options: Sequence[str] | None) -> dict[str, str]:
    """``--tracker-option mlflow.tracking_uri=URI`` → ``{"tracker_options.mlflow.tracking_uri":
    "URI"}``: dotted keys with the text as it is (every tracker option is a string), for
    ``orchestrator.config.set_values``; unknown keys are rejected when the config is built."""
    out = {}
    for text in options or ():
        key, sep, value = text.partition("=")
        if not sep or key.count(".") != 1 or not all(key.split(".")):
            raise ConfigError(f"--tracker-option {text!r} must look like TRACKER.KEY=VALUE, "
                              "e.g. mlflow.tracking_uri=http://host:5000")
        out[f"tracker_options.{key.strip()}"] = value
    return out


def check_installed(name: str) -> None:
    """Import the package tracker ``name`` needs; ``ConfigError`` with the install command if
    it is missing or broken."""
    package = MODULES[name][1]
    try:
        importlib.import_module(package)
    except ImportError as e:
        raise ConfigError(
            f"--tracker {name} needs the {package!r} package, which does not import ({e}); "
            f"fix: pip install 'mtlx[{name}]' (or drop --tracker {name})"
        ) from None


def _module(name: str) -> Any:
    return importlib.import_module(MODULES[name][0])


def resolve(names: Sequence[str], options: Mapping[str, Mapping[str, Any]], out: str,
            benchmark: str) -> dict[str, dict[str, Any]]:
    """{tracker: resolved options} for the named trackers, each installed and prepared
    (``ConfigError`` otherwise); ``options`` = {tracker: its options as plain data}."""
    resolved = {}
    for name in names:
        check_installed(name)
        module = _module(name)
        opts = module.resolve(dict(options.get(name, {})), out, benchmark)
        try:
            module.prepare(opts)
        except ConfigError:
            raise
        except Exception as e:  # a bad URI, an unwritable directory, ...
            raise ConfigError(f"--tracker {name} cannot use {opts}: {type(e).__name__}: "
                              f"{str(e).strip()[:300]}; fix: tracker_options.{name}.* "
                              "(mtlx run --help-config)") from None
        resolved[name] = opts
    return resolved


def open_trackers(cfg: RunConfig, run_info: Mapping[str, Any], resumed: bool) -> Trackers:
    """The trackers of one run (rank 0), each with its resolved options from ``cfg``; one that
    fails to open is reported on stderr and left out (the run trains and writes Parquet)."""
    opened = []
    for name, opts in cfg.trackers.items():
        try:
            opened.append(_module(name).open_run(cfg, opts, dict(run_info), resumed))
        except Exception as e:
            tracker_failed(cfg.run_id, name, e)
    return Trackers(cfg.run_id, opened)
