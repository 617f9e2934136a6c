"""``mtlx tune``: hyperparameter search over a method's knobs with Ray Tune + Optuna (TPE).

Without arguments it searches DB-MTL's EMA β, β-decay σ and γ strategy (the method's declared
space) on the embedded ``multi_digits`` benchmark: 12 trials, the first being the default
configuration, ASHA early stopping, as many trials at once as the CPUs allow. The user's
guide is docs/tune.md: the space grammar (§1), the objective, always on validation data
(§2, §3; RL benchmarks §4), execution on Ray (§5), identity and resume (§6) and the files a
search writes (§7).

Modules, in import order (each imports only those before it): :mod:`.space` (the grammar
and the search space), :mod:`.objective`, :mod:`.search` (settings and the validated
:class:`~.search.Search`), :mod:`.results` (trials table, summary, best.yaml), :mod:`.runner`
(the Tune trial, ASHA, the ``Tuner``), :mod:`.report` (``mtlx report`` of a search, plots),
:mod:`.cli` (``mtlx tune``).
"""

from orchestrator.tune.cli import add_parser, main_tune, parse_tune_args, search_from_args
from orchestrator.tune.objective import Objective
from orchestrator.tune.report import plot_search, tune_report
from orchestrator.tune.results import best_config
from orchestrator.tune.runner import capacity, make_asha, run_search, trial_resources
from orchestrator.tune.search import Search, TuneSettings, build_search
from orchestrator.tune.space import DefineSpace, apply_params, parse_spec

__all__ = [
    "DefineSpace", "Objective", "Search", "TuneSettings", "add_parser", "apply_params",
    "best_config", "build_search", "capacity", "main_tune", "make_asha", "parse_spec",
    "parse_tune_args", "plot_search", "run_search", "search_from_args", "trial_resources",
    "tune_report",
]  # fmt: skip
