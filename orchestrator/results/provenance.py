"""Provenance of a run (package versions, git commit, host, device) and its runs-table row."""

from __future__ import annotations

import datetime as _dt
import functools
import platform
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.config import RunConfig
from orchestrator.results.schemas import config_columns

if TYPE_CHECKING:  # torch is imported when a run starts, not by `mtlx --help`
    import torch

#: the mtlx checkout (methods/, envs/, orchestrator/ side by side)
REPO = Path(__file__).resolve().parents[2]


def now() -> str:
    """The current UTC time, ISO 8601 to the second (the runs table's timestamps)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str | None:
    """HEAD of the mtlx checkout, with ``+dirty`` if it has uncommitted changes."""
    if not (REPO / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


@functools.lru_cache(maxsize=1)
def _static_provenance() -> dict[str, Any]:
    import torch

    try:
        from importlib.metadata import version

        mtlx_version = version("mtlx")
    except Exception:  # not installed as a distribution
        mtlx_version = "unknown"
    try:
        import ray

        ray_version = ray.__version__
    except ImportError:
        ray_version = None
    return {
        "mtlx_version": mtlx_version, "git_commit": git_commit(),
        "torch_version": torch.__version__, "ray_version": ray_version,
        "python_version": platform.python_version(), "hostname": socket.gethostname(),
    }  # fmt: skip


def provenance(device: torch.device) -> dict[str, Any]:
    """The :data:`~orchestrator.results.schemas.PROVENANCE_COLUMNS` of a run on ``device``."""
    import torch

    name = str(device)
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    return {**_static_provenance(), "device": name}


def run_row(cfg: RunConfig, device: torch.device) -> dict[str, Any]:
    """The runs-table row of ``cfg`` before training: its config columns and provenance."""
    return {**config_columns(cfg), **provenance(device)}
