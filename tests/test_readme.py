"""The README's method table lists every registered method (it cannot drift silently)."""

from pathlib import Path

import methods

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_lists_every_method():
    missing = [n for n in methods.available() if f"| `{n}` |" not in README]
    assert not missing, f"add these methods to README.md's method table: {missing}"
