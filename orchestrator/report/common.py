"""Helpers shared by the table and plot modules (labels of method groups, figure files)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def group_label(method: str, hparams: Any, multiple: bool) -> str:
    """A method group's label: the method, with its hyperparameters when the same method
    appears with several settings (``hparams``: the runs table's JSON text)."""
    if not multiple:
        return method
    hp = json.loads(hparams) if isinstance(hparams, str) and hparams else {}
    return f"{method}(" + ", ".join(f"{k}={v}" for k, v in sorted(hp.items())) + ")"


def grid(plt: Any, n: int) -> tuple[Any, list[Any]]:
    """A figure with ``n`` panels, at most 4 per row (unused panels hidden)."""
    cols = min(4, max(1, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def save_png(plt: Any, fig: Any, path: Path) -> Path:
    """Write ``fig`` to ``path`` atomically (temporary file, then rename) and close it."""
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
