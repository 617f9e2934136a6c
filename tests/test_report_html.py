"""``mtlx report RESULTS --html FILE`` opened as a person would: in headless Chromium.

The results directory comes from real tiny runs (tests/report_results.py: multi_digits with
STL, mt1 SAC, a DB-MTL search) and a published-vs-reproduced comparison (``--against
multi_digits_loss_scale``). Chromium loads the file from disk with the network stack cut off;
its DOM after the page's script ran must hold every section, one ranked-table row per
method group, and only images that decoded (the page's script writes ``naturalWidth > 0``
counts into ``#image-check``); the file references nothing outside itself; a screenshot is
written (``MTLX_SCREENSHOT=path`` keeps a copy). Chromium missing: skipped on a developer's
machine, a failure in CI (``CI`` set), where ``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from orchestrator import cli
from orchestrator.report import Results
from orchestrator.report.html import markdown_html
from orchestrator.report.tables import summarize
from tests.report_results import results_dir

#: the results fixture runs a search on the session Ray (~1 min on 2 cores, once per session)
pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


def _chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (CI must have it: .ci/run installs it with "
                        "apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return CHROMIUM


def _browse(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    return subprocess.run([_chromium(), *FLAGS, f"--user-data-dir={profile}", *args,
                           page.as_uri()], capture_output=True, text=True, timeout=120)


class _Dom(HTMLParser):
    """Elements of the dumped DOM: (tag, attributes) in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.rows: list[tuple[dict[str, str], dict[str, str]]] = []  # (table, tr) attributes
        self._table: dict[str, str] = {}
        self.swatches: list[tuple[str | None, str]] = []  # (row's method, swatch style)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.elements.append((tag, a))
        if tag == "table":
            self._table = a
        elif tag == "tr":
            self.rows.append((self._table, a))
        elif tag == "span" and "sw" in a.get("class", "").split() and self.rows:
            self.swatches.append((self.rows[-1][1].get("data-method"), a.get("style", "")))

    def methods(self, cls: str, benchmark: str | None = None) -> list[str]:
        """The data-method of each row of the tables of class ``cls`` (of ``benchmark``)."""
        return [tr["data-method"] for table, tr in self.rows if "data-method" in tr
                and cls in table.get("class", "").split()
                and benchmark in (None, table.get("data-benchmark"))]

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        return [a for t, a in self.elements if t == tag
                and all(k in a and v in a[k].split() + [a[k]] for k, v in attrs.items())]


@pytest.fixture(scope="module")
def report(ray_session, tmp_path_factory):
    """(results dir, the HTML file, Chromium's DOM of it, the screenshot)."""
    out = results_dir(tmp_path_factory.getbasetemp())
    page = tmp_path_factory.mktemp("html") / "r.html"
    code = cli.main(["report", str(out), "--html", str(page), "--against",
                     "multi_digits_loss_scale"])
    assert code == 0 and page.stat().st_size > 0
    tmp = page.parent
    r = _browse(page, tmp, "--dump-dom", "--virtual-time-budget=5000")
    assert r.returncode == 0, r.stderr[-2000:]
    dom = _Dom()
    dom.feed(r.stdout)
    shot = tmp / "r.png"
    r = _browse(page, tmp, f"--screenshot={shot}", "--window-size=1280,4000",
                "--virtual-time-budget=5000")
    assert r.returncode == 0, r.stderr[-2000:]
    if os.environ.get("MTLX_SCREENSHOT"):
        shutil.copy(shot, os.environ["MTLX_SCREENSHOT"])
    return out, page, dom, shot


def test_every_section_is_in_the_rendered_page(report):
    out, _, dom, _ = report
    ids = {a.get("id") for _, a in dom.elements}
    runs = pd.read_parquet(out / "runs")
    searches = [d.name for d in (out / "searches").iterdir()]
    assert {"bench-multi_digits", "bench-mt1", "reproduce-multi_digits_loss_scale"} <= ids
    assert len(searches) == 1 and f"search-{searches[0].replace('.', '-')}" in ids
    # the table of contents links every section
    links = {a["href"] for a in dom.find("a") if a.get("href", "").startswith("#")}
    assert {f"#{a['id']}" for a in dom.find("section")} == links
    assert set(runs.benchmark) == {"multi_digits", "mt1"}


def test_ranked_tables_have_one_row_per_method_group(report):
    out, _, dom, _ = report
    res = Results.load(out)
    (table,) = summarize(res, "multi_digits")
    rows = dom.methods("ranked", "multi_digits")
    assert rows == list(table.frame.method)  # in rank order
    assert sorted(rows) == ["ew", "imtl_g", "stl"]
    assert sorted(dom.methods("ranked", "mt1")) == ["cagrad", "ew"]
    # one colour per method in every table (the figures take theirs from the same map)
    colours: dict[str, set[str]] = {}
    for method, style in dom.swatches:
        colours.setdefault(method, set()).add(style)
    assert {"ew", "imtl_g", "stl", "cagrad"} <= set(colours)
    assert all(len(c) == 1 for c in colours.values())
    assert len({c.pop() for c in colours.values()}) == len(colours)
    text = "".join(dom.text)
    assert "Δm% ↓" in text and "Δp% ↑" in text and " ± " in text
    # the mt1 success table: one row per method (final and best success, learned seeds)
    assert "mt1: success rate" in text and "final success ↑" in text
    # the search's trials and the comparison's published and reproduced numbers
    assert "t0000 (default)" in text and "importance (Optuna fANOVA)" in text
    assert "EW ×10" in text and "Kendall τ" in text


def test_every_figure_decodes_in_the_browser(report):
    _, _, dom, _ = report
    (check,) = dom.find("p", id="image-check")
    kinds = [a["data-kind"] for a in dom.find("figure")]
    # curves, weights, gradient norms, cosines; mt1 success; the search; the reproduction
    assert {"curves", "weight", "grad_norm", "cosine", "success", "search", "reproduce"} <= set(kinds)
    assert kinds.count("weight") >= 2  # multi_digits' and the mt1 SAC losses' weights
    assert int(check["data-total"]) == len(kinds) == len(dom.find("img"))
    assert check["data-ok"] == check["data-total"]  # naturalWidth > 0 for every image


def test_the_file_is_self_contained(report):
    _, page, dom, _ = report
    text = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "@import" not in text and "url(" not in text
    assert all(a["src"].startswith("data:image/png;base64,") for a in dom.find("img"))
    assert not dom.find("link") and all("src" not in a for a in dom.find("script"))


def test_screenshot_is_written(report):
    *_, shot = report
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a page, not a blank


def test_markdown_subset_converts_and_escapes():
    out = markdown_html("### t <1>\n\n- a **b**\n- c\n\n| x | y |\n|---|---:|\n| 1 | <b> |\ntext")
    assert out.startswith("<h2>t &lt;1&gt;</h2>")
    assert "<ul><li>a <strong>b</strong></li><li>c</li></ul>" in out
    assert "<th>x</th><th>y</th>" in out and "<td>&lt;b&gt;</td>" in out and "---" not in out
    assert out.endswith("<p>text</p>")


def test_bad_html_arguments_are_clear_errors(report, tmp_path, capsys):
    out, *_ = report
    assert cli.main(["report", str(out), "--html", str(tmp_path)]) == 2
    assert "is a directory; fix: give a file name" in capsys.readouterr().err
    assert cli.main(["report", str(out), "--html", str(tmp_path / "r.html"), "--benchmark",
                     "nope"]) == 2
    assert "no runs of benchmark 'nope'" in capsys.readouterr().err
    assert cli.main(["report", str(tmp_path), "--html", str(tmp_path / "r.html")]) == 2
    assert "not an mtlx results directory" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_one_benchmark_only(report, tmp_path):
    out, *_ = report
    page = tmp_path / "mt1.html"
    assert cli.main(["report", str(out), "--html", str(page), "--benchmark", "mt1"]) == 0
    dom = _Dom()
    dom.feed(page.read_text())
    ids = [a["id"] for a in dom.find("section")]
    assert ids == ["bench-mt1"]  # the search and the comparison are of multi_digits


def test_palette_gives_each_method_one_colour_and_stl_black():
    from orchestrator.report.figures import COLOURS, Palette

    p = Palette(["pcgrad", "ew", "stl", "cagrad", "ew"])
    assert p.colour("stl") == "#000000"
    assert [p.colour(m) for m in ("cagrad", "ew", "pcgrad")] == COLOURS[:3]  # sorted labels
    assert Palette(["ew", "pcgrad", "cagrad"]).colour("ew") == p.colour("ew")  # order-free
    many = Palette([f"m{i:02d}" for i in range(len(COLOURS) + 1)])
    assert many.style(f"m{len(COLOURS):02d}")["ls"] == "--"  # past the palette: dashed
