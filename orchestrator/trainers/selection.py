"""Which evaluation's numbers a supervised run reports: the validation score (lower is
better) and the protocol's selection rule (docs/protocols.md §2)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import envs
from envs.metrics import average_results, delta_m, delta_p


def val_score(val: Mapping[str, Mapping[str, float]] | None, val_loss: Mapping[str, float] | None,
              spec: Mapping[str, Sequence[envs.Metric]], reference: Mapping | None,
              first_val: Mapping | None) -> tuple[float | None, str]:
    """(score, name), lower is better: Δm vs the STL reference, else −Δp vs the first
    evaluation, else the mean validation loss."""
    if val is None:
        return None, "none"
    for name, base, sign, fn in (("val_delta_m", reference, 1.0, delta_m),
                                 ("val_neg_delta_p_first", first_val, -1.0, delta_p)):
        if base:
            try:
                return sign * fn(val, base, spec), name
            except ValueError:
                continue
    if val_loss:
        return sum(val_loss.values()) / len(val_loss), "val_loss"
    return None, "none"


def select_reported(history: Sequence[Mapping[str, Any]], selection: str, average_last: int,
                    split: str) -> tuple[dict[str, dict[str, float]], list[int]]:
    """The protocol's reported numbers from the evaluation history (see module docstring)."""
    evals = [h for h in history if h.get(split) is not None]
    if not evals:
        return {}, []
    if selection == "best_val":
        scored = [h for h in evals if h.get("score") is not None and math.isfinite(h["score"])]
        if scored:
            best = min(scored, key=lambda h: h["score"])  # min keeps the earliest on ties
            return {k: dict(v) for k, v in best[split].items()}, [best["epoch"]]
    last = evals[-max(1, average_last):]
    return average_results([h[split] for h in last]), [h["epoch"] for h in last]


