"""``mtlx report`` of searches: settings, best vs default, Optuna importance, trials ranked;
and one PNG per search."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.config import StorageConfig
from orchestrator.tune.results import find_searches, load_summary, load_trials, missing


def param_importance(trials: Any, summary: Mapping[str, Any]) -> dict[str, float]:
    """Optuna's fANOVA importance (seeded) of each searched hyperparameter for the objective,
    from the trials that trained every epoch when there are at least 3 of them (objectives
    after fewer epochs are not comparable), else from every trial with a finite objective
    (ASHA-stopped ones with the value TPE saw); {} when fewer than 3 trials or nothing
    varies."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.trial import create_trial

    space = json.loads(summary["space"])
    dists = {}
    for key, d in space.items():
        if d["kind"] == "Choice":
            dists[key] = CategoricalDistribution(d["values"])
        elif d["kind"] == "IntUniform":
            dists[key] = IntDistribution(d["low"], d["high"])
        else:
            dists[key] = FloatDistribution(d["low"], d["high"], log=d["kind"] == "LogUniform")
    ok = trials[trials.objective.map(lambda v: v is not None and math.isfinite(v))]
    if (ok.status == "finished").sum() >= 3:
        ok = ok[ok.status == "finished"]
    if len(ok) < 3 or not dists:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize" if summary["mode"] == "min" else "maximize")
    for _, r in ok.iterrows():
        params = json.loads(r["params"])
        params = {k: v for k, v in params.items() if k in dists}
        study.add_trial(create_trial(params=params, distributions={k: dists[k] for k in params},
                                     value=float(r["objective"])))
    try:
        imp = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError):  # e.g. no parameter varies
        return {}
    return {k: float(v) for k, v in imp.items()}


def tune_report(root: str | Path, search_id: str | None = None, fmt: str = "markdown",
                storage: StorageConfig | None = None) -> str:
    """Each search in ``root`` (a directory or a URI): settings, best vs default, importance,
    the trials ranked (markdown) — or the trials tables as CSV. "" if ``root`` holds no
    search."""
    out = []
    for d in find_searches(root, search_id, storage):
        summary, trials = load_summary(d, storage), load_trials(d, storage)
        if fmt == "csv":
            out.append(trials.to_csv(index=False))
            continue
        out.append(_search_markdown(summary, trials))
    return "\n".join(out)


def _search_markdown(summary: Mapping[str, Any], trials: Any) -> str:
    sid, metric, mode = summary["search_id"], summary["metric"], summary["mode"]
    lines = [f"### search {sid}", "",
             f"{summary['method']} on {summary['benchmark']}: {summary['trials']} trials "
             f"({summary['trials_finished']} finished, {summary['trials_stopped']} stopped by "
             f"ASHA, {summary['trials_failed']} failed"
             f"{'' if summary['complete'] else '; incomplete: resume with --resume'}), "
             f"objective {metric} on the validation split ({mode}imised), "
             f"{summary['wall_time_s']:.0f} s.", ""]
    if summary.get("best_trial_id"):
        line = f"best: {summary['best_trial_id']} {metric} = {summary['best_objective']:.4g}"
        if summary.get("default_objective") is not None:
            line += (f"; default configuration ({summary['default_trial_id']}): "
                     f"{summary['default_objective']:.4g}")
        lines += [line + f"; config: {summary.get('best_config')}", ""]
    imp = param_importance(trials, summary)
    if imp:
        lines += ["importance (Optuna fANOVA): "
                  + ", ".join(f"{k.removeprefix('train.')} {v:.2f}" for k, v in imp.items()), ""]
    hp = [c for c in trials.columns if c.startswith("hp.")]
    head = ["trial", "status", "epochs", metric] + [c[3:].removeprefix("train.") for c in hp]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ranked = trials.assign(_k=trials.objective * (1 if mode == "min" else -1)).sort_values(
        ["_k", "trial_index"], na_position="last")
    for _, r in ranked.iterrows():
        cells = [r.trial_id + (" (default)" if r.is_default else ""), r.status,
                 str(r.epochs_done), _num(r.objective)] + [_num(r[c]) for c in hp]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _num(v: Any) -> str:
    if missing(v):
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def plot_search(root: str | Path, out_dir: str | Path, search_id: str | None = None,
                storage: StorageConfig | None = None) -> list[Path]:
    """PNG per search: objective per trial (with the running best) and the importances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    files = []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for d in find_searches(root, search_id, storage):
        summary, trials = load_summary(d, storage), load_trials(d, storage)
        imp = param_importance(trials, summary)
        fig, axes = plt.subplots(1, 2 if imp else 1, figsize=(11 if imp else 6, 4),
                                 squeeze=False)
        ax = axes[0][0]
        t = trials.sort_values("trial_index")
        for status, marker in (("finished", "o"), ("stopped", "x"), ("failed", "s"),
                               ("nonfinite", "s")):
            sel = t[t.status == status]
            if len(sel):
                ax.scatter(sel.trial_index, sel.objective, marker=marker, label=status)
        obj = t.objective.where(t.status == "finished")
        run_best = (obj.cummin() if summary["mode"] == "min" else obj.cummax()).ffill()
        ax.step(t.trial_index, run_best, where="post", color="k", lw=1, label="best so far")
        if summary.get("default_objective") is not None:
            ax.axhline(summary["default_objective"], ls="--", color="gray", label="default")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("trial")
        ax.set_ylabel(f"{summary['metric']} (validation)")
        ax.set_title(f"{summary['method']} on {summary['benchmark']}")
        ax.legend(fontsize=8)
        if imp:
            ax2 = axes[0][1]
            names = list(imp)[::-1]
            ax2.barh([n.removeprefix("train.") for n in names], [imp[n] for n in names])
            ax2.set_xlabel("importance (Optuna fANOVA)")
        fig.tight_layout()
        path = out_dir / f"search_{d.name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    return files
