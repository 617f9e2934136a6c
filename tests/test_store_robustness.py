"""A results store that survives what users do to it: unreadable files are skipped and listed
with the fix, ``--rerun`` recovers a run whatever state its files are in, a checkpoint that
does not load falls back to the previous one, and dead writers' temporaries are removed."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from orchestrator import cli
from orchestrator.report import Results
from orchestrator.results import ResultsStore, read_table
from orchestrator.run.launch import run_experiment
from tests.test_run_states import SMALL, _exp

ARGS = ["run", "--benchmark", "multi_digits", "--methods", "ew", "--seeds", "0", "--workers",
        "0", "train.max_steps_per_epoch=2", *[f"bench_options.{k}={v}" for k, v in SMALL.items()]]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """One finished 2-epoch ew run (two checkpoints written)."""
    out = tmp_path_factory.mktemp("pristine")
    [o] = run_experiment(_exp(out, ["ew"], epochs=2, max_steps_per_epoch=2))
    assert o.status == "finished"
    return out, o.run_id


@pytest.fixture
def results(pristine, tmp_path):
    src, run_id = pristine
    out = tmp_path / "res"
    shutil.copytree(src, out)
    return out, run_id


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _reported(out, run_id):
    m = read_table(out, "metrics")
    m = m[(m.run_id == run_id) & (m.split == "reported")]
    return dict(zip(zip(m.task, m.metric), m.value))


def test_report_lists_a_truncated_runs_file_and_goes_on(results, capsys):
    out, run_id = results
    _truncate(out / "runs" / f"{run_id}.parquet")
    assert cli.main(["report", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"skipped unreadable {out / 'runs' / run_id}.parquet" in err
    assert f"--rerun (its id: {run_id})" in err


@pytest.mark.parametrize("table,part,damage", [
    ("metrics", "e00000", "zero"), ("metrics", "e00000", "truncate"),
    ("metrics", "reported", "truncate"), ("diagnostics", "e00000", "zero"),
])
def test_report_and_plots_survive_a_damaged_file(results, tmp_path, capsys, table, part, damage):
    out, run_id = results
    victim = out / table / run_id / f"{part}.parquet"
    assert victim.is_file()
    victim.write_bytes(b"") if damage == "zero" else _truncate(victim)
    assert cli.main(["report", str(out), "--plots", str(tmp_path / "plots")]) == 0
    captured = capsys.readouterr()
    assert f"skipped unreadable {victim}" in captured.err
    if part != "reported":
        assert "| 1 | ew |" in captured.out  # the run is still ranked from its other files
    else:  # without its reported numbers the run cannot be ranked, and the report says why
        assert "| 1 | ew |" not in captured.out and run_id in captured.out


def test_a_new_run_reports_despite_another_runs_corrupt_metrics(results, capsys):
    out, run_id = results
    _truncate(sorted((out / "metrics" / run_id).glob("*.parquet"))[0])
    assert cli.main([*ARGS, "--methods", "pcgrad", "--epochs", "1", "--out", str(out)]) == 0
    assert "skipped unreadable" in capsys.readouterr().err


@pytest.mark.parametrize("rerun", [False, True])
def test_run_recovers_a_truncated_runs_file(results, pristine, capsys, rerun):
    out, run_id = results
    _truncate(out / "runs" / f"{run_id}.parquet")
    code = cli.main([*ARGS, "--epochs", "2", "--out", str(out), "--no-report",
                     *(["--rerun"] if rerun else [])])
    assert code == 0
    assert ResultsStore(out).read_run(run_id)["status"] == "finished"
    assert _reported(out, run_id) == _reported(pristine[0], run_id)


def _interrupt(out, run_id):
    store = ResultsStore(out)
    store.write_run({**store.read_run(run_id), "status": "interrupted"})


def test_resume_falls_back_to_the_previous_checkpoint(results, pristine, capsys):
    out, run_id = results
    ckpt = out / "checkpoints" / run_id
    assert (ckpt / "state.prev.pt").is_file()
    _interrupt(out, run_id)
    _truncate(ckpt / "state.pt")
    leftover = ckpt / f".state.pt.{_dead_pid()}.tmp"  # the killed writer's half checkpoint
    leftover.write_bytes(b"half")
    assert cli.main([*ARGS, "--epochs", "2", "--out", str(out), "--no-report"]) == 0
    assert not leftover.exists()
    assert "resuming from the previous checkpoint" in capsys.readouterr().err
    assert _reported(out, run_id) == _reported(pristine[0], run_id)  # same numbers


def test_no_loadable_checkpoint_names_rerun_and_rerun_recovers(results, pristine, capsys):
    out, run_id = results
    ckpt = out / "checkpoints" / run_id
    _interrupt(out, run_id)
    (ckpt / "state.pt").write_bytes(b"")
    _truncate(ckpt / "state.prev.pt")
    assert cli.main([*ARGS, "--epochs", "2", "--out", str(out), "--no-report"]) == 1
    row = ResultsStore(out).read_run(run_id)
    assert row["status"] == "failed" and "no checkpoint loads" in row["error"]
    assert "--rerun" in row["error"] and "torch" not in row["error"].split(";")[-1]
    assert cli.main([*ARGS, "--epochs", "2", "--out", str(out), "--no-report", "--rerun"]) == 0
    assert _reported(out, run_id) == _reported(pristine[0], run_id)


def test_rerun_recovers_files_where_directories_belong_and_vice_versa(results, pristine):
    out, run_id = results
    shutil.rmtree(out / "metrics" / run_id)
    (out / "metrics" / run_id).write_text("not a directory")
    (out / "runs" / f"{run_id}.parquet").unlink()
    (out / "runs" / f"{run_id}.parquet").mkdir()
    shutil.rmtree(out / "checkpoints" / run_id)
    (out / "checkpoints" / run_id).write_bytes(b"\0")
    assert cli.main([*ARGS, "--epochs", "2", "--out", str(out), "--no-report", "--rerun"]) == 0
    assert _reported(out, run_id) == _reported(pristine[0], run_id)


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_temporaries_of_dead_writers_are_removed_live_ones_kept(results):
    import os

    out, run_id = results
    d = out / "metrics" / run_id
    dead = d / f".e00000.parquet.{_dead_pid()}.0123abcd.tmp"
    live = d / f".e00001.parquet.{os.getpid()}.0123abcd.tmp"
    dead_ckpt = out / "checkpoints" / run_id / f".state.pt.{_dead_pid()}.tmp"
    dead_row = out / "runs" / f".{run_id}.parquet.{_dead_pid()}.0123abcd.tmp"
    old_format = d / ".e00002.parquet.abcdef12.tmp"  # before the pid was in the name
    for f in (dead, live, dead_ckpt, dead_row, old_format):
        f.write_bytes(b"half")
    removed = ResultsStore(out).clean_temporaries(run_id)
    assert set(removed) == {dead, dead_ckpt, dead_row, old_format}
    assert live.exists() and not dead.exists()


def test_read_table_skips_and_lists_unreadable_files(results):
    out, run_id = results
    files = sorted((out / "metrics" / run_id).glob("*.parquet"))
    files[0].write_bytes(b"PAR1 garbage")
    problems = []
    m = read_table(out, "metrics", problems)
    assert [p.path for p in problems] == [str(files[0])] and len(m) > 0
    assert problems[0].run_id == run_id
    assert Results.load(out).problems == problems


def test_an_interrupt_while_checkpointing_never_leaves_a_run_without_state_pt(tmp_path,
                                                                               monkeypatch):
    """SIGINT/SIGTERM arrive as exceptions between any two statements; the newest checkpoint
    must exist at every moment of a checkpoint write (the previous one is kept by a second
    link, not moved away first)."""
    import os

    from orchestrator.results import storage

    store = ResultsStore(tmp_path)
    store.write_checkpoint("r", b"first")
    real = os.replace

    def interrupted(src, dst):
        if str(dst).endswith("/state.pt"):
            raise KeyboardInterrupt  # the signal lands just before the new file goes in
        return real(src, dst)

    monkeypatch.setattr(storage.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.write_checkpoint("r", b"second")
    monkeypatch.undo()
    assert store.read_checkpoint("r", "state.pt") == b"first"
    assert store.read_checkpoint("r", "state.prev.pt") == b"first"
    assert store.has_checkpoint("r")
    assert not [p for p in (tmp_path / "checkpoints" / "r").iterdir() if p.name.endswith(".tmp")]
    store.write_checkpoint("r", b"second")
    assert store.read_checkpoint("r", "state.pt") == b"second"
    assert store.read_checkpoint("r", "state.prev.pt") == b"first"
