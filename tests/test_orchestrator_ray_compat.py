"""Ray compatibility lives in one module: the pinned version, the version check, and no
private Ray access anywhere else in the orchestrator."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from orchestrator.run import ray_compat

ROOT = Path(__file__).resolve().parent.parent


def test_the_pin_the_installed_ray_and_the_tested_version_agree():
    import ray

    pin = re.search(r'"ray\[default,tune,train\]==([0-9.]+)\.\*"', (ROOT / "pyproject.toml").read_text())
    assert pin is not None and pin.group(1) == ray_compat.TESTED
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ray_compat.check_version() is True  # the installed Ray is the tested one
    assert ray.__version__.startswith(ray_compat.TESTED + ".")


def test_another_ray_version_warns_with_the_fix():
    assert ray_compat.check_version("2.60.3") is True
    with pytest.warns(ray_compat.RayVersionWarning, match=r"Ray 2\.61\.0 .*==2\.60\.\*"):
        assert ray_compat.check_version("2.61.0") is False


def test_trial_numbers_come_from_the_experiment_tag():
    class Trial:
        def __init__(self, tag: str) -> None:
            self.experiment_tag, self.trial_id = tag, "abc"

    assert ray_compat.trial_number(Trial("3_beta=0.9,lr=0.01")) == 3
    assert ray_compat.trial_number(Trial("weird")) is None
    from orchestrator.tune.results import trial_name

    assert trial_name(Trial("1_x=1")) == "t0000" and trial_name(Trial("weird")) == "abc"


def test_no_private_or_version_specific_ray_access_outside_ray_compat():
    private = re.compile(r"ray[\w.]*\._private|\._experiment_analysis|RAY_AIR_NEW_OUTPUT|"
                         r"TUNE_DISABLE_STRICT|RAY_TRAIN_[A-Z_]+|after_report\(")
    offenders = []
    for path in sorted((ROOT / "orchestrator").rglob("*.py")) + sorted((ROOT / "tests").glob("*.py")):
        if path.name in ("ray_compat.py", Path(__file__).name):
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if private.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "move these into orchestrator/run/ray_compat.py:\n" + "\n".join(offenders)
