"""``mtlx architectures`` lists what ``envs.architectures.describe`` computes for the
benchmark, and refuses a benchmark it cannot open with the fix."""

from __future__ import annotations

import envs
from envs import architectures
from orchestrator.cli import main


def test_lists_every_architecture_with_its_counts(capsys):
    assert main(["architectures", "--benchmark", "multi_digits"]) == 0
    out = capsys.readouterr().out
    for row in architectures.describe(envs.create("multi_digits")):
        line = next(ln for ln in out.splitlines() if ln.startswith(row["arch"] + " "))
        if row["accepted"]:
            assert f"{row['parameters']:,}" in line and f"{row['shared']:,}" in line
        else:
            assert "not applicable" in line


def test_a_benchmark_without_its_data_names_the_fix(capsys):
    assert main(["architectures", "--benchmark", "office31"]) == 2
    assert "--data-root" in capsys.readouterr().err
