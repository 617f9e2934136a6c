"""orchestrator/reproduce: table loader, grid expansion, verdict arithmetic, Kendall τ, report
against a stored result set, and `reproduce --smoke` end to end on a NYUv2 fixture."""

from __future__ import annotations

import csv
import io
import json
import math
import textwrap

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from envs.fixtures.dense import write_nyuv2
from orchestrator.reproduce.compare import Cmp, compare, kendall_tau, row_verdict
from orchestrator.reproduce.grid import GridError, expand, experiments, smoke_fixture
from orchestrator.reproduce.render import csv_text, markdown
from orchestrator.reproduce.tables import TableError, Value, get_table, load_table, table_paths

GOOD = """\
id: {id}
title: t
paper: {{title: p, authors: a, url: u}}
table: Tab. 1
benchmark: multi_digits
selection: last epoch
seeds: [0, 1]
columns:
  - {{key: left/accuracy, scale: 100, decimals: 1}}
  - {{key: right/accuracy, scale: 100, decimals: 1}}
delta: {{kind: delta_m, reference: STL, decimals: 2}}
rows:
  - {{id: STL, method: stl, values: [94.0, 93.5]}}
{rows}
"""


def _write(tmp_path, rows, name="bad", **repl):
    text = GOOD.format(id=name, rows=textwrap.indent(textwrap.dedent(rows), "  "))
    for k, v in repl.items():
        text = text.replace(k, v)
    p = tmp_path / f"{name}.yaml"
    p.write_text(text)
    return p


# ---------------------------------------------------------------------------------------
# loader
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows, repl, match", [
    ("- {id: A, method: ew_typo, values: [1, 2]}", {}, r"bad\.yaml, row 'A': unknown method 'ew_typo'"),
    ("- {id: A, method: ew, values: [1, 2, 3]}", {}, r"bad\.yaml, row 'A': 3 values for 2 columns"),
    ("- {id: A, method: ew, per_seed: [[1, 2], [3]]}", {}, r"row 'A': per_seed has 1 values"),
    ("- {id: A, method: cagrad, hparams: {cc: 1}, values: [1, 2]}", {},
     r"row 'A': methods.create rejects cagrad\(cc=1\)"),
    ("- {id: A, method: ew, values: [1, x]}", {}, r"row 'A': value 'x' is not a number"),
    ("- {id: A, method: ew, value: [1, 2]}", {}, r"row 'A': unknown key\(s\) \['value'\]"),
    ("- {id: STL, method: ew}", {}, r"row 'STL': duplicate row id"),
    ("- {id: A, method: ew}", {"left/accuracy": "left/acc"},
     r"bad\.yaml: unknown metric left/acc of benchmark 'multi_digits'"),
    ("- {id: A, method: ew}", {"benchmark: multi_digits": "benchmark: mnist"},
     r"bad\.yaml: unknown benchmark 'mnist'"),
    ("- {id: A, method: ew}", {"reference: STL": "reference: B"}, r"delta.reference 'B' is not a row"),
    ("- {id: A, method: ew}", {"id: bad": "id: other"}, r"id 'other' must equal the file name"),
    ("- {id: A, method: ew}", {"seeds: [0, 1]": "seeds: three"}, r"bad\.yaml: seeds must be"),
    ("- {id: A, method: ew}", {"paper: {title: p, authors: a, url: u}": "paper: x"},
     r"bad\.yaml: paper must be a mapping"),
])
def test_loader_errors_name_file_and_row(tmp_path, rows, repl, match):
    with pytest.raises(TableError, match=match):
        load_table(_write(tmp_path, rows, **repl))


def test_rows_needing_an_option_are_kept_not_expressible(tmp_path):
    t = load_table(_write(tmp_path, """\
        - {id: A, method: ew, values: [1, 2]}
        - {id: B, method: ew, hparams: {loss_transform: cube}, needs: "a cube loss transform"}
        - {id: C, method: fairgrad, needs: "FairGrad: not an mtlx method"}
        - {id: D, method: cagrad, hparams: {c: 0.2}, needs: "a reason that no longer holds"}
        - {id: E, method: mgda, needs: "an mgda variant without α ≥ 0"}
        """, name="ok"))
    assert [r.expressible for r in t.rows] == [True, True, False, False, False, False]
    assert t.row("B").blocker == "a cube loss transform"
    assert t.row("E").blocker == "an mgda variant without α ≥ 0"
    assert "methods.create now accepts" in t.row("D").blocker  # says so, still never runs it
    grid = expand(t)
    assert [c.rows for c in grid.cells] == [("A",)]
    assert [r.id for r in grid.blocked] == ["B", "C", "D", "E"]


def test_every_shipped_table_loads():
    paths = table_paths()
    assert len(paths) >= 20
    for tid in paths:
        t = get_table(tid)
        assert t.id == tid and t.rows
        for r in t.rows:
            assert r.expressible or r.blocker  # never silently dropped
        if t.needs is None:
            expand(t)  # every expressible table expands into a grid
        else:
            with pytest.raises(GridError, match="not expressible in mtlx yet"):
                expand(t)
    with pytest.raises(TableError, match="did you mean nyuv2_segnet_mtan"):
        get_table("nyuv2_segnet")


def test_tables_agree_with_their_configs_and_benchmark_references():
    """A table's experiment never contradicts its named config (benchmark; bench_options and
    train keys both set must agree — the table may add settings of the paper's own, such as
    multi_digits' parameter level), and a printed STL row equals the benchmark's single-task
    reference."""
    import envs
    from orchestrator.config import load_yaml

    for tid in table_paths():
        t = get_table(tid)
        if t.config is None or t.needs is not None:
            continue
        cfg = load_yaml(t.config)
        assert cfg["benchmark"] == t.benchmark, tid
        for part in ("bench_options", "train"):
            mine, theirs = t.experiment.get(part) or {}, cfg.get(part) or {}
            assert all(theirs.get(k, v) == v for k, v in mine.items()), (tid, part)
        assert (t.experiment.get("bench_options") or {}).get("model") == (
            cfg.get("bench_options") or {}).get("model"), tid
        stl = [r for r in t.rows if r.method == "stl" and t.printed(r)]
        model = (t.experiment.get("bench_options") or {}).get("model")
        cls = envs.get_class(t.benchmark)
        if model is not None:  # dense benchmarks: the reference of the model's protocol
            ref = cls.protocols[model].stl_reference
        else:  # the others hold it on the class, or build it without data (multi_digits)
            ref = cls.stl_reference or envs.create(t.benchmark).stl_reference
        for r in stl:
            for c, v in zip(t.columns, r.values):
                assert v.value / c.scale == pytest.approx(ref[c.task][c.metric], rel=1e-9), (tid, c.key)


# ---------------------------------------------------------------------------------------
# grid expansion
# ---------------------------------------------------------------------------------------


def test_grid_of_the_multi_digits_table():
    grid = expand(get_table("multi_digits_loss_scale"))
    runs = {(rows, m, json.dumps(hp), s) for rows, m, hp, s in grid.runs()}
    assert runs == {(r, m, "{}", s) for r, m in (("EW", "ew"), ("EW ×10", "ew"),
                                                  ("IMTL-G ×10", "imtl_g")) for s in (0, 1)}
    assert [r.id for r in grid.printed_only] == ["STL"]  # printed reference: no stl runs
    exps = experiments(grid, out="o", workers=0)
    assert len(exps) == 2  # ew twice (×1, ×10): two experiments
    plain, scaled = exps
    assert plain.methods == ["ew"] and plain.bench_options == {}
    assert scaled.methods == ["ew", "imtl_g"] and scaled.bench_options == {"loss_scale": [1.0, 10.0]}
    assert scaled.train.level == "param" and scaled.seeds == [0, 1] and scaled.workers == 0


def test_grid_includes_stl_runs_when_the_paper_trained_its_reference():
    t = get_table("db_mtl_tab5_office31")
    grid = expand(t, seeds=[3, 4])
    assert {(c.method, c.hparams) for c in grid.cells} == {
        ("stl", ()), ("ew", ()), ("ew", (("loss_transform", "log"),)),
        ("db_mtl", (("log_transform", False),)), ("db_mtl", ())}
    assert {s for *_, s in grid.runs()} == {3, 4} and not grid.blocked
    first, second = experiments(grid, out="o", smoke=True, overrides=["train.lr=0.5"])
    assert first.methods == ["stl", "ew", "db_mtl"] and first.seeds == [3, 4]
    assert first.hparams == {"db_mtl": {"log_transform": False}}
    assert second.methods == ["ew", "db_mtl"] and second.hparams == {"ew": {"loss_transform": "log"}}
    assert (first.train.epochs, first.train.max_steps_per_epoch, first.train.lr) == (1, 2, 0.5)
    nyu = expand(get_table("nyuv2_segnet_mtan"))
    assert "stl" not in {c.method for c in nyu.cells}  # compared with the printed STL row
    assert len(nyu.cells) == 14 and not nyu.blocked


def test_grid_of_a_hyperparameter_table_and_shared_configurations(tmp_path):
    grid = expand(get_table("cagrad_nyuv2_c_sensitivity"), seeds=[0])
    assert sorted(dict(c.hparams)["c"] for c in grid.cells) == [0.2, 0.4, 0.6, 0.8]
    exps = experiments(grid, out="o")
    assert [(e.methods, e.hparams) for e in exps] == [
        (["cagrad"], {"cagrad": {"c": c}}) for c in (0.2, 0.4, 0.6, 0.8)]
    t = load_table(_write(tmp_path, """\
        - {id: A, method: cagrad, hparams: {c: 0.4}}
        - {id: B, method: cagrad, hparams: {c: 0.4}}
        - {id: C, method: ew}
        """, name="dup"))
    g = expand(t)
    assert [c.rows for c in g.cells] == [("A", "B"), ("C",)] and len(g.waves) == 1


# ---------------------------------------------------------------------------------------
# verdict arithmetic and Kendall τ
# ---------------------------------------------------------------------------------------


def test_verdict_arithmetic_hand_computed():
    # values 10.5, 11.5, 12.5: mean 11.5, sample std 1.0; published 10.0 → diff 1.5 = 1.5 std,
    # 15 %; allowance 2σ + r = 2·1.0 + 0.05 (one printed decimal) = 2.05 ≥ 1.5 → within noise
    c = Cmp(Value(10.0), [10.5, 11.5, 12.5], True, 1)
    assert (c.mean, c.std, c.diff, c.z, c.pct) == pytest.approx((11.5, 1.0, 1.5, 1.5, 15.0))
    assert c.verdict == "within noise"
    # mean 14: diff 4 > 2.05 → better when higher is better, worse when lower is
    assert Cmp(Value(10.0), [13.0, 14.0, 15.0], True, 1).verdict == "better"
    assert Cmp(Value(10.0), [13.0, 14.0, 15.0], False, 1).verdict == "worse"
    # the paper's spread, if larger, sets σ: SEM 0.5 over 9 seeds = std 1.5 → 2·1.5 + 0.05
    near = Cmp(Value(10.0, 0.5), [12.0, 12.5, 13.0], True, 1, paper_std=0.5 * 3)
    assert near.std == pytest.approx(0.5) and near.sigma == 1.5 and near.verdict == "within noise"
    assert Cmp(Value(10.0), [12.0, 12.5, 13.0], True, 1).verdict == "better"  # σ = 0.5 alone
    # the boundary: σ = 1, r = 0.5 (no printed decimals): |diff| = 2.5 is within, 2.6 is not
    assert Cmp(Value(0.0), [1.5, 2.5, 3.5], True, 0).verdict == "within noise"
    assert Cmp(Value(0.0), [1.6, 2.6, 3.6], True, 0).verdict == "better"
    assert Cmp(Value(10.0), [11.0], True, 1).verdict == "n/a"  # one seed: no σ
    assert Cmp(Value(None), [1.0, 2.0], True, 1).verdict == "n/a"
    ms = [Cmp(Value(10.0), [13.0, 14.0, 15.0], h, 1) for h in (True, False)]
    assert row_verdict(None, ms) == "mixed"
    assert row_verdict(None, ms[:1] + [c]) == "better"
    assert row_verdict(Cmp(Value(0.0), [0.1, -0.1], False, 2), ms) == "within noise"


def test_kendall_tau_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 4, 7).astype(float)
        y = x + rng.integers(-2, 3, 7)
        ref = scipy.stats.kendalltau(x, y).statistic
        got = kendall_tau(list(x), list(y))
        assert (math.isnan(ref) and math.isnan(got)) or got == pytest.approx(ref, abs=1e-12)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    with pytest.raises(ValueError, match="3 vs 2"):
        kendall_tau([1, 2, 3], [1, 2])


# ---------------------------------------------------------------------------------------
# against stored results
# ---------------------------------------------------------------------------------------


def test_report_against_runs_made_with_mtlx_run(tmp_path, capsys):
    """Runs made with plain `mtlx run` (EW and IMTL-G with the right loss ×10) are found in
    the store and matched to the ×10 rows only; the reproduced numbers are the runs'
    reported values in the table's units."""
    from orchestrator import cli

    out = tmp_path / "res"
    code = cli.main(["run", "--benchmark", "multi_digits", "--methods", "ew,imtl_g,stl", "--seeds",
                     "0,1", "--epochs", "1", "--workers", "0", "--out", str(out), "--no-report",
                     "bench_options.loss_scale=[1,10]", "train.max_steps_per_epoch=3",
                     "train.level=param", "bench_options.n_train=256",
                     "bench_options.n_val=64", "bench_options.n_test=64"])
    assert code == 0
    capsys.readouterr()
    table = get_table("multi_digits_loss_scale")
    cmp = compare(table, out)
    by_row = {r.row.id: r for r in cmp.rows}
    assert by_row["EW"].seeds == []  # loss_scale (1, 1): no such runs
    assert by_row["EW ×10"].seeds == [0, 1] and by_row["IMTL-G ×10"].seeds == [0, 1]
    m = pd.read_parquet(out / "metrics")
    runs = pd.read_parquet(out / "runs")
    rep = m[(m.split == "reported") & m.run_id.isin(runs[runs.method == "ew"].run_id)]
    left = rep[rep.task == "left"].value.to_numpy() * 100
    ew = by_row["EW ×10"].metrics[0]
    assert ew.mean == pytest.approx(left.mean()) and ew.std == pytest.approx(left.std(ddof=1))
    # the CLI path writes the same view as Markdown, CSV and PNG
    assert cli.main(["report", str(out), "--against", "multi_digits_loss_scale", "--format",
                     "csv"]) == 0
    text = capsys.readouterr().out
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text == csv_text(cmp)
    ew_left = [r for r in rows if r["row"] == "EW ×10" and r["metric"] == "left/accuracy"]
    assert float(ew_left[0]["reproduced_mean"]) == pytest.approx(left.mean())
    assert (out / "reproduce" / "multi_digits_loss_scale.png").stat().st_size > 0
    md = markdown(cmp)
    assert "no finished runs yet: EW" in md and "Kendall τ" in md
    capsys.readouterr()
    assert cli.main(["report", str(out), "--against", "office31_resnet18"]) == 2  # none there
    assert "no finished run in" in capsys.readouterr().err
    # a reference the paper trained itself: its stl runs (one per task and seed) are found,
    # and each seed's Δm is taken against the mean of the reproduced single-task values
    text = table.path.read_text().replace("id: multi_digits_loss_scale", "id: own_stl")
    text = text.replace("reference: STL,", "reference: STL, reference_runs: true,")
    text = text.replace("{id: STL, method: stl,", "{id: STL, method: stl, bench_options: {loss_scale: [1.0, 10.0]},")
    (tmp_path / "own_stl.yaml").write_text(text)
    own = compare(get_table(str(tmp_path / "own_stl.yaml")), out)
    rows = {r.row.id: r for r in own.rows}
    assert rows["STL"].seeds == [0, 1]
    stl_runs = runs[runs.method == "stl"]
    ref = {t: 100 * m[(m.split == "reported") & m.run_id.isin(stl_runs.run_id) & (m.task == t)
                      ].value.mean() for t in ("left", "right")}
    for seed, dm in zip((0, 1), rows["EW ×10"].delta.values):
        ids = runs[(runs.method == "ew") & (runs.seed == seed)].run_id
        v = {t: 100 * rep[rep.run_id.isin(ids) & (rep.task == t)].value.item() for t in ref}
        assert dm == pytest.approx(100 * sum((ref[t] - v[t]) / ref[t] for t in ref) / 2)


def test_reproduce_smoke_of_a_nyuv2_table_on_a_fixture(tmp_path, capsys):
    """`mtlx reproduce cagrad_nyuv2_c_sensitivity --smoke` on a NYUv2 fixture: four CAGrad
    configurations (four experiments) × 2 seeds, run in-process, then the side-by-side view."""
    from orchestrator import cli

    root = write_nyuv2(tmp_path / "nyu", n_train=4, n_test=2)
    out = tmp_path / "res"
    argv = ["reproduce", "cagrad_nyuv2_c_sensitivity", "--smoke", "--workers", "0", "--seeds",
            "0,1", "--data-root", str(root), "--out", str(out), "bench_options.width=0.0625"]
    assert cli.main(argv) == 0  # the override after the flags reaches every run
    text = capsys.readouterr().out
    runs = pd.read_parquet(out / "runs")
    assert len(runs) == 8 and set(runs.status) == {"finished"}
    assert sorted(json.loads(h)["c"] for h in runs.hparams) == [0.2, 0.2, 0.4, 0.4, 0.6, 0.6, 0.8, 0.8]
    assert set(runs.max_steps_per_epoch) == {2}
    for c in ("c=0.2", "c=0.4", "c=0.6", "c=0.8"):
        assert f"| {c} | " in text
    assert "Kendall τ (published vs reproduced Δm% order)" in text
    assert "compared runs: 8, trained with epochs 1" in text and "(a smoke run)" in text
    assert (out / "reproduce" / "cagrad_nyuv2_c_sensitivity.csv").is_file()
    # rerunning skips the finished runs and prints the same comparison
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == text
    assert cli.main(["reproduce", "--list"]) == 0
    listing = capsys.readouterr().out
    assert all(f"| {tid} |" in listing for tid in table_paths())
    assert "| multi_digits_loss_scale | multi_digits | 4 (4 / 0) | stl, ew, imtl_g | CPU:" in listing
    assert cli.main(["reproduce", "no_such_table"]) == 2
    assert "no published table 'no_such_table'" in capsys.readouterr().err


def test_smoke_without_data_root_uses_a_fixture_of_the_published_layout(tmp_path):
    import envs

    root, extra = smoke_fixture("nyuv2", str(tmp_path))
    assert extra == [] and root == str(tmp_path / "nyuv2")
    assert len(envs.create("nyuv2", root=root).dataset("test")) == 3  # write_nyuv2's default
    (tmp_path / "nyuv2" / "marker").write_text("kept")
    assert smoke_fixture("nyuv2", str(tmp_path))[0] == root  # written once, then reused
    assert (tmp_path / "nyuv2" / "marker").exists()
    assert smoke_fixture("multi_digits", str(tmp_path)) is None  # its data ship with mtlx
