"""The orchestrator's layout: every module imports, imports point downward through the
layers (cli → tune/reproduce → run → trainers/report → results → config), no cycles, and
files and functions stay readable."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "orchestrator"

#: layer of each part of ``orchestrator`` (the first name after ``orchestrator.``); a module
#: may import modules of its own part or of a lower layer, never of a higher one
LAYERS = {
    "packages": 0, "config": 0, "results": 1, "trainers": 2, "report": 2, "trackers": 2, "run": 3,
    "tune": 4, "reproduce": 5, "cli": 6, "__main__": 7,
}  # fmt: skip
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Every ``orchestrator.*`` module ``path`` imports, at top level or inside functions."""
    found = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # submodules imported by name
    known = {m for m, _ in _modules()}
    return {m for m in found if m in known and m != name}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "packages"


MODULES = _modules()


@pytest.mark.parametrize("name", [m for m, _ in MODULES if not m.endswith("__main__")])
def test_every_module_imports(name):
    importlib.import_module(name)


def test_every_part_has_a_layer():
    missing = sorted({_part(m) for m, _ in MODULES} - set(LAYERS))
    assert not missing, f"add {missing} to LAYERS (and to README's layout table)"


def test_imports_point_downward():
    upward = []
    for name, path in MODULES:
        here = _part(name)
        for target in _imports(name, path):
            there = _part(target)
            if there != here and LAYERS[there] >= LAYERS[here] and target != "orchestrator":
                upward.append(f"{name} imports {target}")
    assert not upward, "imports that do not point downward:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = {name: _imports(name, path) - {"orchestrator"} for name, path in MODULES}
    # an ``__init__`` re-exporting its submodules is not a cycle with them
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" → ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from orchestrator.cli import main\n")
    assert "orchestrator.cli" in _imports("orchestrator.results.x", bad)


def test_files_and_functions_stay_readable():
    long_files = [f"{p.relative_to(ROOT)}: {n} lines" for _, p in MODULES
                  if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    long_functions = []
    for _, path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} "
                                          f"{node.name}: {n} lines")
    assert not long_files, f"files over {MAX_FILE_LINES} lines: {long_files}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


def test_one_runs_config_goes_downward_from_the_cli_to_parquet(tmp_path, monkeypatch):
    """Trace ``mtlx run`` in-process: at every call that receives a config object, the
    orchestrator files on the call stack (root first, consecutive repeats merged) go down
    through the layers and never return to a file already left (a → b → a), and the path
    reaches the Parquet writer."""
    import sys

    import tests.orchestrator_bench as toy
    from orchestrator import cli
    from orchestrator.config import ExperimentConfig, RunConfig, TrainConfig

    configs = (ExperimentConfig, RunConfig, TrainConfig)
    pkg = str(PKG)
    returns, visited = [], []

    def files_on_stack(frame) -> list[str]:
        out = []
        while frame is not None:
            f = frame.f_code.co_filename
            if f.startswith(pkg) and (not out or out[-1] != f):
                out.append(f)
            frame = frame.f_back
        return out[::-1]

    def profile(frame, event, arg):
        if event != "call" or not frame.f_code.co_filename.startswith(pkg):
            return
        if not any(isinstance(v, configs) for v in frame.f_locals.values()):
            return
        stack = [str(Path(f).relative_to(ROOT)) for f in files_on_stack(frame)]
        visited.append(stack[-1])
        layers = [LAYERS[_part(f.removesuffix(".py").replace("/", "."))] for f in stack]
        if len(set(stack)) != len(stack) or layers != sorted(layers, reverse=True):
            returns.append(" → ".join(stack))

    monkeypatch.chdir(tmp_path)
    argv = ["run", "--benchmark", toy.NAME, "--methods", "ew", "--seeds", "0", "--workers", "0",
            "--out", "res", "--no-report", "plugins=[tests.orchestrator_bench]"]
    sys.setprofile(profile)
    try:
        assert cli.main(argv) == 0
    finally:
        sys.setprofile(None)
    assert not returns, "config paths that return to a file already left:\n" + "\n".join(
        sorted(set(returns)))
    for part in ("run/launch.py", "run/plan.py", "run/execute.py", "trainers/supervised.py",
                 "results/schemas.py"):
        assert f"orchestrator/{part}" in visited, part
    assert (tmp_path / "res" / "runs").is_dir()
