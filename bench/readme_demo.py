"""Regenerate (or check) the README's demo table from a run of the current code.

    .venv/bin/python bench/readme_demo.py --check    # exit 1 if the README's table differs
    .venv/bin/python bench/readme_demo.py --write    # rewrite the table in README.md

It runs exactly what the README says (`mtlx run` on configs/multi_digits.yaml: 9 methods ×
2 seeds × 10 epochs, one Ray task per run) into a temporary results folder and renders
`mtlx report` of it; the table between the README's ``<!-- demo-table -->`` markers is
that output. Runs are deterministic (seeded data, model, methods), so the table changes
only when the code changes what a run computes. Takes a few minutes (`make readme-demo`).
The fast guard in CI is tests/test_readme_numbers.py, which reruns the `ew` row.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BEGIN, END = "<!-- demo-table -->", "<!-- /demo-table -->"


def demo_report(out: Path, extra: list[str] | None = None) -> str:
    """Run the demo config into ``out`` and return `mtlx report`'s markdown."""
    sys.path.insert(0, str(ROOT))
    from orchestrator.cli import main

    cfg = str(ROOT / "configs" / "multi_digits.yaml")
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(["run", cfg, "--out", str(out), *(extra or [])])
    if rc != 0:
        raise SystemExit(f"mtlx run failed (rc {rc})")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main(["report", str(out)])
    return buf.getvalue().strip()


def readme_table(text: str) -> str:
    m = re.search(re.escape(BEGIN) + r"\n```\n(.*?)\n```\n" + re.escape(END), text, re.S)
    if not m:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} block")
    return m.group(1).strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true")
    mode.add_argument("--write", action="store_true")
    ap.add_argument("--out", help="results folder to (re)use instead of a temporary one")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        table = demo_report(Path(a.out or tmp))
    text = README.read_text()
    if a.check:
        if readme_table(text) != table:
            print("README demo table differs from a run of the current code:\n" + table)
            return 1
        print("README demo table matches a run of the current code")
        return 0
    new = re.sub(re.escape(BEGIN) + r"\n```\n.*?\n```\n" + re.escape(END),
                 lambda _: f"{BEGIN}\n```\n{table}\n```\n{END}", text, flags=re.S)
    README.write_text(new)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
