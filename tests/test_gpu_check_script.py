"""bench/gpu_check.sh: syntactically valid, and on a machine without CUDA it refuses with a
clear message (exit 2) before doing anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.sh"


def test_gpu_check_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_check_refuses_without_cuda():
    res = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True,
                         env={"PY": sys.executable, "PATH": "/usr/bin:/bin"}, timeout=120)
    assert res.returncode == 2
    assert "no CUDA device" in res.stderr and "GPU machine" in res.stderr
    assert "===" not in res.stdout  # nothing ran
