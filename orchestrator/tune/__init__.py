"""``mtlx tune``: hyperparameter search over a method's knobs with Ray Tune + Optuna (TPE).

::

    mtlx tune [CONFIG.yaml] [--benchmark B] [--method M] [--trials N] [--metric val_delta_m]
              [--scheduler asha|none] [--workers-per-trial W] [--gpus-per-trial G]
              [--max-concurrent K] [--seed S] [--epochs E | --steps N] [--resume | --fresh]
              [--out DIR] [space.NAME=SPEC ...] [key=value ...]

Without arguments it searches DB-MTL's EMA β, β-decay σ and γ strategy (the method's declared
space) on the embedded ``multi_digits`` benchmark: 12 trials, the first being the default
configuration, the protocol's 10 epochs with ASHA early stopping, as many trials at once as
the CPUs allow (2 on 2 cores; a few minutes).

Search space
------------
Each method declares ``search_space = {hparam: Dimension}`` beside its ``Config``
(``methods/space.py``: plain data). That is the starting point; the learning rate, weight
decay, SGD momentum and the method's own learning rate are searchable for every method. A YAML
``tune.space`` mapping or ``space.NAME=SPEC`` arguments override or narrow any dimension:

==============================  ==========================================================
``uniform(a, b)``               float in [a, b]
``loguniform(a, b)``            float in [a, b] on a log scale (0 < a < b)
``int(a, b)``                   integer in [a, b] (both included)
``choice(x, y, ...)``           one of the values (numbers, strings, true/false)
``<value>``                     fixed: not searched, every trial uses it (a YAML list =
                                ``choice``)
``default``                     not searched: the method's / protocol's default (drops a
                                declared dimension)
``search``                      the built-in range: the method's declared dimension; for
                                ``lr`` and ``method_lr`` loguniform(lr/10, 10·lr) around the
                                protocol's lr, ``weight_decay`` loguniform(1e-6, 1e-2),
                                ``momentum`` uniform(0.5, 0.99)
``SPEC if NAME=v1[,v2...]``     conditional: sampled only in trials where the ``choice``
                                ``NAME`` takes one of the values, else the method's default
                                (e.g. ``gamma_value=loguniform(0.01,10) if gamma=constant``)
==============================  ==========================================================

NAME is a method hyperparameter (``beta`` or ``hparams.beta``) or a training field (``lr`` or
``train.lr``); a bare name that is both (GradNorm's own ``lr``) must carry the prefix.
Everything is checked before Ray starts: unknown names (with the closest valid one), empty or
invalid ranges, values the method rejects (the range ends and every choice are built through
the method's ``Config``, so ``uniform(0.5, 1.0)`` for DB-MTL's β < 1 is refused), parameters a
choice needs (DB-MTL's ``gamma=constant`` needs ``gamma_value``) and the metric.

Objective (validation only, never test)
---------------------------------------
``--metric`` (RL benchmarks: see below): ``val_delta_m`` (Δm% on the validation split against the benchmark's
single-task reference; the default when there is one), ``val_loss`` (mean per-task validation
loss; the default otherwise) or ``val/<task>/<metric>`` (any validation metric; maximised if
higher is better). Trials evaluate every epoch (``train.eval_every`` other than 1 is refused)
and report the objective then, in the shape the protocol selects the reported test numbers:
``selection=last`` → the mean over the last ``average_last`` evaluations (the current one for
1), ``selection=best_val`` → the best so far. Tune never sees test numbers (they are dropped
from what trials report; the runs still write them to Parquet). ASHA (``--scheduler asha``, the
default; grace period a quarter of the epochs, reduction factor 3) compares trials on the
objective per epoch, except that it never stops the default-configuration trial, so that "best
vs default" compares fully trained runs; trials that reach the last epoch end on their own.
Optuna's TPE (seeded) gets each trial's last value; ``n_startup_trials`` is a third of the
trials, clipped to 2..10 (Optuna's default 10 would leave a 12-trial search all random). Trial
``t0000`` is the default configuration when it lies inside the space. The best configuration is
the best objective among trials that trained every epoch (ASHA-stopped trials' values come from
fewer epochs).

Benchmarks without a validation split (NYUv2, Cityscapes in the MTAN release) get one held out
of train: 10% of the training samples (at least 1) via the benchmark's ``val_size`` option —
a fixed random subset that does not depend on the run seed (``envs/_dense.py``). The best
configuration written for ``mtlx run`` trains on the full train split again (the user's own
``bench_options`` only). A benchmark with neither is refused.

RL benchmarks (``kind == "rl"``: ``mt10``, ``mt1``)
---------------------------------------------------
``mtlx tune --benchmark mt10 --method cagrad --steps N`` searches CAGrad's c (IMGrad: α; any
declared or given dimension, plus ``train.lr``/``train.method_lr``; weight decay and momentum
are refused: SAC uses plain Adam) with the same trials, tables and best.yaml. The objective is
``--metric val_success`` (the default): the mean over tasks of the success of the
deterministic evaluation episodes the trainer runs every ``train.eval_every`` **loop steps**
(the protocol's 30,000 unless set) and at the end of ``train.steps``, maximised;
``val_return`` (mean return) and ``val/<task>/success|return`` are the alternatives.
Supervised-only objectives (``val_loss``, ``val_delta_m``) and anything on test are refused.
There is no held-out split: MT10 papers evaluate on the training tasks, so the evaluation
episodes (metric rows ``split="eval"``) are the validation; the untrained step-0 evaluation is
not part of the objective. The selection rule is the same (``selection=last``: the mean of the
last ``train.average_last`` evaluations, 1 by default; ``best_val``: the best so far — the
"best over training" number CAGrad/Nash-MTL publish). ASHA's time axis (``epochs_done``) is
the number of evaluations done, ``max_t`` = ⌈steps / eval_every⌉ + 1 (with the step-0 one),
grace period a quarter of that. The benchmark's reference hyperparameters
(``envs.mt10.METHOD_HPARAMS``: CAGrad c = 0.9, ...) make the default trial t0000 — they are
the base run's values, which a trial's sampled values replace — and best.yaml carries the full
hyperparameters of the best trial, so ``mtlx run`` uses the sampled c, not the reference
one.

Execution (docs/ray.md §3)
--------------------------------------
A Ray Tune ``Tuner`` over a function trial that calls the one training function:
with W = 1 worker per trial the trial itself runs :func:`orchestrator.run.execute.train_run` (its
``RunContext.report`` forwards to ``ray.tune.report``) and holds ``cpus_per_worker`` CPUs,
``G`` GPUs and one ``driver_slot``; with W ≥ 2 the trial is a driver holding
``{"CPU": 0, "driver_slot": 1}`` that runs :func:`orchestrator.run.ray_train.fit` on W Ray Train
workers (``G/W`` GPUs each) with a ``TuneReportCallback`` that adds the objective — the
driver takes no CPU its workers need (a 0.01-CPU driver fragmented 2 CPUs and hung the
search, docs/ray.md §1.2) and Train's controller failure limit is finite (docs/ray.md §1.3). ``driver_slot`` is a custom
resource: a Ray started by this command declares it; a cluster must declare it on its head
(``ray start --head --resources='{"driver_slot": 8}'``). ``max_concurrent_trials`` is what the
cluster's CPUs/GPUs hold (``--max-concurrent`` caps it). Ray's own output is hidden unless
``--verbose``; one line is printed per finished trial.

Identity and resume: the search id is ``<benchmark>.<method>.<hash>`` of everything that
changes the trials (base run config, space, metric, scheduler, trials, seed); trial names are
``t0000, t0001, ...`` in creation order and each trial's run id hashes its config, its trial
name and the search id, so they are deterministic. ``--resume`` restores the Tune experiment
(``Tuner.restore``; finished trials are not re-run, interrupted ones continue from their mtlx
checkpoint, a trial whose run already finished only re-reports its objective from the
Parquet data). The same command without ``--resume`` prints the result of a complete search
and refuses to touch an incomplete one (a reused Tune experiment name mixes state files:
docs/ray.md §1.5);
``--fresh`` deletes the search (and its trial runs) and starts over.

Results (``<out>`` is ``--out``)
--------------------------------
Every trial is an ordinary run of the Parquet dataset (``runs``, ``metrics``,
``diagnostics``; ``trial_id`` and ``search_id`` set in its runs row; a trial stopped early by
ASHA has status ``stopped``), plus per search::

    <out>/searches/<search_id>/trials.parquet   one row per trial: identity, status, objective,
                                                epochs, the sampled values as ``hp.<name>``
                                                columns and as JSON
    <out>/searches/<search_id>/summary.parquet  one row (fixed schema :data:`SUMMARY_COLUMNS`):
                                                best trial, its objective vs the default's,
                                                the space, the settings
    <out>/searches/<search_id>/best.yaml        the best configuration for ``mtlx run``
    <out>/searches/<search_id>/tune/            Ray Tune's experiment state (resume)

:func:`tune_report` and :func:`plot_search` show a search from these files alone (objective
per trial, best vs default, hyperparameter importance by Optuna's fANOVA).

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
