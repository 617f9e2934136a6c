"""``mtlx report RESULTS --html FILE``: one self-contained HTML page (inline CSS, JS and
images; nothing is fetched) with everything ``mtlx report`` computes.

Sections, in order: every Δm benchmark's ranked table (mean ± std over seeds, Δm%, Δp%;
:func:`orchestrator.report.tables.summarize`) with its learning curves, task weights,
gradient norms and gradient cosines (:mod:`orchestrator.report.plots`' curve data); every RL
benchmark's success table and curves (:mod:`orchestrator.report.rl`); every search
(:class:`SearchPart`: the markdown ``mtlx report`` prints and its figure); every
published-vs-reproduced comparison (:class:`ReproPart`); unreadable files. This module only
renders: the numbers come from those modules, and the searches' and reproductions' from the
higher layers that hand them in (``orchestrator.cli``).

The page's script checks that every image decoded (``naturalWidth > 0``) and writes the count
into ``#image-check`` (``data-ok``, ``data-total``), so a headless browser's DOM says whether
the page renders.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.report import figures, plots, rl
from orchestrator.report.tables import MAX_METRIC_COLUMNS, Results, Table, _pm, summarize


@dataclass
class SearchPart:
    """One search (``mtlx tune``): its report text and the data of its figure."""

    search_id: str
    markdown: str
    summary: dict[str, Any]
    trials: Any  # pandas DataFrame, one row per trial
    importance: dict[str, float] = field(default_factory=dict)


@dataclass
class ReproPart:
    """One published-vs-reproduced comparison (``mtlx reproduce`` / ``--against``)."""

    table_id: str
    markdown: str
    png: str | None = None  # the comparison plot's file


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")


# ---------------------------------------------------------------------------------------
# markdown (the subset the text reports print) → HTML
# ---------------------------------------------------------------------------------------


def _inline(text: str) -> str:
    out = _e(text)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)


def _md_table(rows: list[str], palette: figures.Palette | None) -> str:
    cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
    head, body = cells[0], [c for c in cells[1:] if not all(set(x) <= set("-: ") for x in c)]
    col = head.index("method") if palette is not None and "method" in head else None
    out = ["<table class='md'><thead><tr>"
           + "".join(f"<th>{_inline(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for r in body:
        tds = [f"<td>{_inline(c)}</td>" for c in r]
        attr = ""
        if col is not None and col < len(r):  # the method's colour, as in the figures
            tds[col] = f"<td>{_swatch(r[col], palette)}{_inline(r[col])}</td>"
            attr = f" data-method='{_e(r[col])}'"
        out.append(f"<tr{attr}>" + "".join(tds) + "</tr>")
    return "\n".join(out) + "</tbody></table>"


def markdown_html(text: str, palette: figures.Palette | None = None) -> str:
    """Headings (``###``: a section's title, ``<h2>``), bullet lists, pipe tables and
    paragraphs, as ``mtlx report`` prints them; everything else is text (escaped). With a
    ``palette``, a table's ``method`` cells get the method's colour swatch."""
    blocks: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = max(2, min(6, len(line) - len(line.lstrip("#")) - 1))  # ### → <h2>
            blocks.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            blocks.append(_md_table(lines[i:j], palette))
            i = j
            continue
        elif line.startswith("- "):
            j = i
            while j < len(lines) and lines[j].startswith("- "):
                j += 1
            blocks.append("<ul>" + "".join(f"<li>{_inline(x[2:])}</li>" for x in lines[i:j])
                          + "</ul>")
            i = j
            continue
        elif line.strip():
            blocks.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(blocks)


# ---------------------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------------------


def _figure(uri: str | None, caption: str, kind: str) -> str:
    if uri is None:
        return ""
    return (f"<figure class='fig' data-kind='{_e(kind)}'><img src='{uri}' alt='{_e(caption)}'>"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _swatch(label: str, palette: figures.Palette) -> str:
    return f"<span class='sw' style='background:{palette.colour(label)}'></span>"


def _ranked_table(t: Table, palette: figures.Palette) -> str:
    """The ranked table of :func:`summarize` (as ``format_markdown`` shows it)."""
    f, cols = t.frame, t.metric_columns
    has_delta = "delta_m_mean" in f.columns
    aggregate = len(cols) > MAX_METRIC_COLUMNS
    arrow = {True: " ↑", False: " ↓", None: ""}
    names = sorted({m for _, m, _ in cols}) if aggregate else []
    head = ["rank", "method", "seeds"] + (["Δm% ↓", "Δp% ↑"] if has_delta else [])
    if aggregate:
        head += [f"mean {m}{arrow[next(h for _, mm, h in cols if mm == m)]}" for m in names]
    else:
        head += [f"{task} {metric}{arrow[h]}" for task, metric, h in cols]
    rows = []
    for r in f.to_dict("records"):
        cells = [str(r["rank"]), _swatch(r["method"], palette) + _e(r["method"]), str(r["seeds"])]
        if has_delta:
            cells += [_e(_pm(r["delta_m_mean"], r["delta_m_std"], ".2f")),
                      _e(_pm(r["delta_p_mean"], r["delta_p_std"], ".2f"))]
        if aggregate:
            cells += [format(float(np.mean([r[f"{task}/{mm}_mean"] for task, mm, _ in cols
                                            if mm == m])), ".4g") for m in names]
        else:
            cells += [_e(_pm(r[f"{task}/{metric}_mean"], r[f"{task}/{metric}_std"], ".4g"))
                      for task, metric, _ in cols]
        rows.append(f"<tr data-method='{_e(r['method'])}'>"
                    + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (f"<table class='ranked' data-benchmark='{_e(t.benchmark)}'><thead><tr>"
            + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "\n".join(rows) + "</tbody></table>")


def _benchmark_section(res: Results, t: Table, palette: figures.Palette) -> str:
    b = t.benchmark
    parts = [f"<section class='benchmark' id='bench-{_slug(b)}' data-benchmark='{_e(b)}'>",
             f"<h2>{_e(b)}</h2>"]
    if t.reference_source:
        parts.append(f"<p>Δm% (lower is better) and Δp% (higher is better) against the "
                     f"{_e(t.reference_source)}; metrics: mean ± sample std over seeds.</p>")
    if t.notes:
        parts.append("<ul class='notes'>" + "".join(f"<li>{_e(n)}</li>" for n in t.notes)
                     + "</ul>")
    parts.append(_ranked_table(t, palette))
    curves = plots.learning_curves(res, b)
    parts.append(_figure(figures.learning_curves(curves, palette, f"{b}: learning curves "
                                                 "(mean ± std over seeds)"),
                         f"{b}: learning curves", "curves"))
    d = plots.labelled_diagnostics(res, b)
    for quantity, title in (("weight", "task weights"), ("grad_norm", "per-task gradient norms"),
                            ("cosine", "pairwise gradient cosines")):
        uri = figures.diagnostic(d, quantity, palette, f"{b}: {title} (mean over seeds)")
        parts.append(_figure(uri, f"{b}: {title}", quantity))
    return "\n".join(parts) + "</section>"


def _rl_section(res: Results, b: str, palette: figures.Palette) -> str:
    frame = rl.summarize(res, b)
    parts = [f"<section class='benchmark rl' id='bench-{_slug(b)}' data-benchmark='{_e(b)}'>",
             markdown_html(rl.format_markdown(b, frame), palette).replace(
                 "<table class='md'>", f"<table class='md ranked' data-benchmark='{_e(b)}'>")]
    uri = figures.success_curves(rl.curves(res, b), palette,
                                 f"{b}: success rate (mean ± SEM over seeds)")
    parts.append(_figure(uri, f"{b}: success curves", "success"))
    # each SAC loss's task weights (quantity "<loss>.weight"): one panel per (loss, task),
    # one figure per loss when that would be more than 12 panels (MT10: 3 losses × 10 tasks)
    d = plots.labelled_diagnostics(res, b)
    d = d[d.quantity.str.endswith(".weight")]
    d = d.assign(loss=d.quantity.str.removesuffix(".weight"), quantity="weight")
    d = d.assign(task=d.loss + " loss · " + d.task.str.removesuffix("-v3"))
    groups = [("all", d)] if d.task.nunique() <= 12 else list(d.groupby("loss"))
    for loss, g in groups:
        title = "task weights" + ("" if loss == "all" else f" of the {loss} loss")
        uri = figures.diagnostic(g, "weight", palette, f"{b}: {title} (mean over seeds)",
                                 xlabel="environment steps")
        parts.append(_figure(uri, f"{b}: {title}", "weight"))
    return "\n".join(parts) + "</section>"


def _search_section(s: SearchPart, palette: figures.Palette) -> str:
    uri = figures.search(s.trials, s.summary, s.importance, palette) if len(s.trials) else None
    return (f"<section class='search' id='search-{_slug(s.search_id)}' "
            f"data-search='{_e(s.search_id)}'>" + markdown_html(s.markdown)
            + _figure(uri, f"search {s.search_id}: objective per trial", "search")
            + "</section>")


def _repro_section(r: ReproPart, palette: figures.Palette) -> str:
    uri = figures.png_file(r.png) if r.png else None
    return (f"<section class='reproduce' id='reproduce-{_slug(r.table_id)}' "
            f"data-table='{_e(r.table_id)}'>" + markdown_html(r.markdown, palette)
            + _figure(uri, f"{r.table_id}: published vs reproduced", "reproduce")
            + "</section>")


# ---------------------------------------------------------------------------------------
# the page
# ---------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1a1a1a;
 margin:0 auto;max-width:1180px;padding:24px 32px;background:#fff}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;border-bottom:1px solid #ddd;
 padding-bottom:4px;margin-top:36px}h3{font-size:16px;margin-top:24px}
.meta{color:#555;margin:0 0 12px}nav ul{columns:3;padding-left:18px}
table{border-collapse:collapse;margin:10px 0 16px;font-variant-numeric:tabular-nums}
th,td{padding:4px 10px;border-bottom:1px solid #e4e4e4;text-align:right;white-space:nowrap}
th{background:#f4f6f8;font-weight:600}td:nth-child(2),th:nth-child(2){text-align:left}
table.md td:first-child,table.md th:first-child{text-align:left}
tbody tr:hover{background:#fafbfc}.sw{display:inline-block;width:10px;height:10px;
 border-radius:2px;margin-right:6px;vertical-align:baseline}
.notes{color:#444;font-size:13px}figure{margin:14px 0 24px}figure img{max-width:100%;
 height:auto;border:1px solid #eee}figcaption{color:#555;font-size:12px}
.problems li{color:#a00}#image-check{color:#777;font-size:12px}
@media print{nav{display:none}figure,table{break-inside:avoid}}
"""

SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var el = document.getElementById('image-check');
  el.setAttribute('data-ok', ok); el.setAttribute('data-total', imgs.length);
  el.textContent = ok + ' of ' + imgs.length + ' figures rendered';
});
"""


def _palette(tables: Sequence[Table], res: Results, rl_names: Sequence[str],
             searches: Sequence[SearchPart]) -> figures.Palette:
    labels = [m for t in tables for m in t.frame.get("method", [])]
    labels += [m for b in rl_names for m in rl.summarize(res, b).get("method", [])]
    labels += [str(s.summary.get("method")) for s in searches]
    return figures.Palette(labels)


def build(res: Results, source: str, benchmark: str | None = None,
          searches: Sequence[SearchPart] = (), reproductions: Sequence[ReproPart] = ()) -> str:
    """The page for ``res`` (read from ``source``), optionally only ``benchmark``."""
    from orchestrator.results.provenance import now

    names = [benchmark] if benchmark else sorted(set(res.runs.benchmark))
    rl_names = rl.rl_benchmarks(res, benchmark)
    tables = summarize(res, benchmark, exclude=rl_names) if len(res.runs) else []
    palette = _palette(tables, res, rl_names, searches)
    sections = [_benchmark_section(res, t, palette) for t in tables]
    sections += [_rl_section(res, b, palette) for b in rl_names if b in names]
    sections += [_search_section(s, palette) for s in searches]
    sections += [_repro_section(r, palette) for r in reproductions]
    if res.problems:
        sections.append("<section class='problems' id='problems'><h2>Unreadable files</h2><ul>"
                        + "".join(f"<li>{_e(p)}</li>" for p in res.problems) + "</ul></section>")
    toc = [(f"bench-{_slug(t.benchmark)}", t.benchmark) for t in tables]
    toc += [(f"bench-{_slug(b)}", f"{b} (success)") for b in rl_names]
    toc += [(f"search-{_slug(s.search_id)}", f"search {s.search_id}") for s in searches]
    toc += [(f"reproduce-{_slug(r.table_id)}", f"reproduction {r.table_id}")
            for r in reproductions]
    n_runs = len(res.runs)
    finished = int((res.runs.status == "finished").sum()) if n_runs else 0
    head = (f"<h1>mtlx report</h1><p class='meta'>results: <code>{_e(source)}</code> · "
            f"{n_runs} runs ({finished} finished) · {len(searches)} search(es) · "
            f"generated {_e(now())}</p><p id='image-check'></p>"
            "<nav><ul>" + "".join(f"<li><a href='#{i}'>{_e(x)}</a></li>" for i, x in toc)
            + "</ul></nav>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>mtlx report: {_e(source)}</title><style>{CSS}</style></head><body>"
            + head + "\n".join(sections) + f"<script>{SCRIPT}</script></body></html>\n")


def write(path: str | Path, page: str) -> Path:
    """Write ``page`` to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


__all__ = ["ReproPart", "SearchPart", "build", "markdown_html", "write"]
