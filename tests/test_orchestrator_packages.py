"""Package shadowing: another project's ``methods`` first on sys.path is named, with the fix,
by ``import orchestrator`` and the CLI; ``mtlx.methods`` / ``mtlx.envs`` always give mtlx's own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import envs
import mtlx
from orchestrator.packages import REPO, ShadowedPackageError, check_own_packages, origin

# importing mtlx asks processes started later (Ray workers) to import it too; this session's
# Ray tests must not depend on that (a checkout's older editable install lacks `mtlx`)
os.environ.pop("MTLX_OWN_PACKAGES", None)


def test_mtlx_paths_are_the_same_module_objects():
    import mtlx.methods.engine as engine

    import methods.engine

    assert mtlx.methods is methods and mtlx.envs is envs
    assert engine is methods.engine  # an alias, never a second copy of a module
    assert origin("methods") == REPO / "methods" / "__init__.py"
    check_own_packages()


def test_an_imported_foreign_package_is_named(monkeypatch, tmp_path):
    fake = tmp_path / "methods" / "__init__.py"
    fake.parent.mkdir()
    fake.write_text("")
    monkeypatch.setitem(sys.modules, "methods", type(sys)("methods"))
    sys.modules["methods"].__file__ = str(fake)
    with pytest.raises(ShadowedPackageError, match="already imported from .*tmp.*methods"):
        check_own_packages()


def _shadowed(tmp_path: Path, code: list[str]) -> subprocess.CompletedProcess:
    """Run python with a fake ``methods`` package first on sys.path."""
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "__init__.py").write_text("NASH = True\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    env.pop("MTLX_OWN_PACKAGES", None)
    return subprocess.run([sys.executable, *code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("code", [["-c", "import orchestrator"], ["-m", "orchestrator", "methods"]])
def test_import_and_cli_name_the_shadowing_file(tmp_path, code):
    r = _shadowed(tmp_path, code)
    assert r.returncode != 0
    assert "ShadowedPackageError" in r.stderr
    assert str(tmp_path / "methods" / "__init__.py") in r.stderr  # which file shadows
    assert "python -m mtlx" in r.stderr and str(REPO) in r.stderr  # and how to fix it


def test_mtlx_loads_its_own_despite_the_shadow(tmp_path):
    r = _shadowed(tmp_path, ["-c", "import mtlx, methods, orchestrator.cli; "
                                   "print(methods.__file__, hasattr(methods, 'NASH'), "
                                   "mtlx.methods is methods)"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(REPO / "methods" / "__init__.py"), "False", "True"]


def test_python_m_mtlx_runs_the_cli_despite_the_shadow(tmp_path):
    r = _shadowed(tmp_path, ["-m", "mtlx", "methods"])
    assert r.returncode == 0, r.stderr
    assert "cagrad" in r.stdout and "pcgrad" in r.stdout  # mtlx's registry, not the fake's
