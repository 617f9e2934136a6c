"""A :class:`~orchestrator.reproduce.compare.Comparison` as Markdown, CSV and a PNG plot."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from orchestrator.reproduce.compare import (
    RULE,
    Cmp,
    Comparison,
    column_label,
    delta_name,
    describe_delta,
)
from orchestrator.reproduce.tables import Table, Value


def _f(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}g}"


def _rep(c: Cmp) -> str:
    if c.mean is None:
        return "—"
    return f"{_f(c.mean)} ± {_f(c.std)} (n={c.n})" if c.std is not None else f"{_f(c.mean)} (n=1)"


def _pub(v: Value, decimals: int | None = None) -> str:
    """A printed value as the paper prints it (its number of decimals, where known)."""
    if v.value is None:
        return "—"
    if decimals is None:
        return str(v)
    spread = f" ± {v.spread:.3g}" if v.spread is not None else ""
    return f"{v.value:.{decimals}f}{spread}"


def header(t: Table) -> list[str]:
    p = t.paper
    lines = [f"### {t.id}: {t.title}", "",
             f"{p.get('title', '')} — {p.get('authors', '')}, {t.table} ({p.get('url', '')})."]
    proto = [f"benchmark {t.benchmark}"]
    if t.config:
        proto.append(f"protocol {t.config}")
    if t.experiment.get("bench_options"):
        proto.append(f"bench_options {t.experiment['bench_options']}")
    lines += [f"- {', '.join(proto)}; paper seeds: {len(t.seeds)}; selection: {t.selection}",
              f"- Δ: {describe_delta(t)}" + (f", against row {t.reference!r}"
                                             + (" (reproduced)" if t.reference_runs else " (as printed)")
                                             if t.reference else ""),
              f"- verdict: {RULE}"]
    return lines


def markdown(cmp: Comparison) -> str:
    t = cmp.table
    smoke = [n for n in cmp.notes if "(a smoke run)" in n]
    out = header(t) + [f"- **{n}**" for n in smoke] + ["", "| row | method | metric | published | reproduced | diff | diff/std | diff % | verdict |",
                       "|---|---|---|---|---|---|---|---|---|"]
    for r in cmp.rows:
        for c, col in zip(r.metrics, t.columns):
            if c.published.value is None and c.mean is None:
                continue
            out.append(f"| {r.row.id} | {r.row.label} | {column_label(col)} | "
                       f"{_pub(c.published, None if r.row.per_seed else c.decimals)} | "
                       f"{_rep(c)} | {_f(c.diff)} | {_f(c.z, 3)} | {_f(c.pct, 3)} | {c.verdict} |")
    if t.delta_kind is not None:
        d = delta_name(t)
        out += ["", f"| row | {d} published | {d} from printed values | {d} reproduced | diff/std | "
                "row verdict |", "|---|---|---|---|---|---|"]
        for r in cmp.rows:
            if r.delta is None:
                continue
            out.append(f"| {r.row.id} | {_pub(r.delta.published, t.delta_decimals)} | "
                       f"{_f(r.delta_printed_values)} | "
                       f"{_rep(r.delta)} | {_f(r.delta.z, 3)} | {r.verdict} |")
        if cmp.tau is not None:
            out += ["", f"Kendall τ (published vs reproduced {d} order) = {cmp.tau:.3f} over "
                    f"{cmp.tau_n} rows ({cmp.tau_basis})."]
        else:
            out += ["", "Kendall τ: not available (fewer than 2 rows with both a published and "
                    f"a reproduced {d})."]
    out += ["", *notes(cmp)]
    return "\n".join(out).rstrip() + "\n"


def notes(cmp: Comparison) -> list[str]:
    t = cmp.table
    lines = []
    missing = [r.row.id for r in cmp.rows if r.row.method != "stl" and not r.seeds]
    if missing:
        lines.append(f"- no finished runs yet: {', '.join(missing)}")
    for r in t.rows:
        if not r.expressible:
            lines.append(f"- {r.id}: not expressible yet: needs {r.blocker}")
    for r in t.rows:
        if r.misprint:
            lines.append(f"- {r.id}: known misprint — {r.misprint}")
    lines += [f"- {n}" for n in cmp.notes + t.notes]
    return lines


def csv_text(cmp: Comparison) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["table", "row", "method", "hparams", "metric", "published", "published_spread",
                "reproduced_mean", "reproduced_std", "n_seeds", "diff", "diff_std_units",
                "diff_pct", "verdict"])
    t = cmp.table
    for r in cmp.rows:
        items = [(col.key, c) for col, c in zip(t.columns, r.metrics)]
        if r.delta is not None:
            items.append((delta_name(t), r.delta))
        for name, c in items:
            w.writerow([t.id, r.row.id, r.row.method, r.row.label, name, c.published.value,
                        c.published.spread, c.mean, c.std, c.n, c.diff, c.z, c.pct, c.verdict])
    for r in t.rows:
        if not r.expressible:
            w.writerow([t.id, r.id, r.method, r.label, "", None, None, None, None, 0, None, None,
                        None, f"not expressible yet: needs {r.blocker}"])
    return buf.getvalue()


def plot(cmp: Comparison, path: str | Path) -> Path:
    """Published (black) vs reproduced (mean ± std, blue) per metric column, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = cmp.table
    panels = [(col.key, i) for i, col in enumerate(t.columns)]
    if t.delta_kind is not None:
        panels.append((delta_name(t), None))
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5 * ncol, 3.2 * nrow), squeeze=False)
    labels = [r.row.id for r in cmp.rows]
    for ax, (name, i) in zip(axes.flat, panels):
        cmps = [r.metrics[i] if i is not None else r.delta for r in cmp.rows]
        for k, (c, r) in enumerate(zip(cmps, cmp.rows)):
            if c is None:
                continue
            if c.published.value is None and i is None and r.delta_printed_values is not None:
                ax.plot(k - 0.12, r.delta_printed_values, "ks", mfc="none", ms=4)  # recomputed
            if c.published.value is not None:
                ax.errorbar(k - 0.12, c.published.value, yerr=c.published.spread, fmt="ks",
                            ms=4, capsize=2, label="published" if k == 0 else None)
            if c.mean is not None:
                ax.errorbar(k + 0.12, c.mean, yerr=c.std or 0.0, fmt="o", color="tab:blue",
                            ms=4, capsize=2)
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{t.id}: published (■; □ = Δ recomputed from printed values) vs reproduced "
                 "(●, mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
