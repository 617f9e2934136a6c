"""Everything mtlx uses from Ray that is private or specific to the Ray version it is tested
with, in one place (docs/ray.md §2 lists the facts; pyproject pins ``ray==2.60.*``).

Upgrading Ray means re-checking this module and the facts in docs/ray.md, then moving
:data:`TESTED`. Anything else in the orchestrator uses Ray's public API only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

#: the Ray minor version mtlx is tested with (pyproject.toml pins ``ray[...]==2.60.*``)
TESTED = "2.60"

#: Environment for Ray test sessions (docs/ray.md §4): faster Train health checks and
#: finalisation, no preemption watcher, no state-actor reconciliation, a generous
#: worker-group start timeout on a loaded machine. Set before ``ray.init`` so that Train
#: actors inherit it. These are Ray Train's internal knobs, not public settings.
TEST_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION": "0",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "120",
}


class RayVersionWarning(UserWarning):
    """The installed Ray is not the minor version mtlx is tested with."""


def check_version(version: str | None = None) -> bool:
    """True if Ray ``version`` (default: the installed one) is the tested minor version;
    otherwise warn once with :class:`RayVersionWarning`, naming the fix."""
    if version is None:
        import ray

        version = ray.__version__
    if ".".join(version.split(".")[:2]) == TESTED:
        return True
    warnings.warn(
        f"mtlx is tested with Ray {TESTED}.x, but Ray {version} is installed; the private and "
        "version-specific Ray behaviour it relies on (orchestrator/run/ray_compat.py, "
        f"docs/ray.md) may differ. Fix: pip install 'ray[default,tune,train]=={TESTED}.*'",
        RayVersionWarning, stacklevel=2,
    )
    return False


def tune_environment(verbose: bool) -> dict[str, str]:
    """Environment for a ``Tuner.fit``: a trial without any result must not abort the
    search (Tune's strict metric checking raises in the driver), and Tune's new console
    output prints a header even at ``verbose=0`` unless it is switched off."""
    env = {"TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"}
    if not verbose:
        env["RAY_AIR_NEW_OUTPUT"] = "0"
    return env


def experiment_trials(state_dir: str | Path, filesystem: Any = None) -> list[Any]:
    """The Tune ``Trial`` objects (status, config, last result) of the experiment stored in
    ``state_dir`` (a path in ``filesystem``, a pyarrow filesystem; None: local), through the
    public ``ExperimentAnalysis`` (a ``ResultGrid`` has no public per-trial status in 2.60)."""
    from ray.tune import ExperimentAnalysis

    return list(ExperimentAnalysis(str(state_dir), storage_filesystem=filesystem).trials)


def trial_number(trial: Any) -> int | None:
    """The 1-based creation number of a Tune trial (the prefix of its ``experiment_tag``,
    e.g. ``"3_beta=0.9"``), kept on restore; None if the tag has none."""
    tag = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    return int(tag) if tag.isdigit() else None


def report_callback(transform: Callable[[Mapping[str, Any]], dict[str, Any]]) -> Any:
    """A Ray Train callback that forwards rank 0's metrics to Tune after ``transform``
    (``TuneReportCallback``, hooking its 2.60 ``after_report(run_context, metrics,
    checkpoint)``, where ``metrics`` holds one dict per rank)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class TransformingReportCallback(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            metrics = [transform(metrics[0]), *metrics[1:]]
            super().after_report(run_context, metrics, checkpoint)

    return TransformingReportCallback()


def autoscaler_max_resources() -> dict[str, float] | None:
    """The most of each resource the cluster can grow to, or None when the cluster has no
    autoscaler that says. Ray 2.60 has no public API for this. Two private sources:

    * the node types an autoscaler published in the GCS (Σ ``max_workers`` × resources,
      capped by ``max_resources``), read as Ray Data does through
      ``ray._private.state.state.get_max_resources_from_cluster_config``. Only KubeRay's
      and Anyscale's autoscalers publish them: nothing in Ray 2.60's Python code does,
      so a ``ray up`` cluster leaves this empty (checked on a local ``fake_multinode``
      cluster, docs/ray.md §8);
    * else the config file the cluster's autoscaler (the ``monitor`` process of this GCS,
      started by ``ray start --head --autoscaling-config=...``; ``ray up`` passes its
      bootstrapped config) was started with, when the driver runs on the head node, as
      ``ray job submit`` drivers do (:func:`max_resources_of_config`)."""
    from ray._private.state import state

    try:
        found = state.get_max_resources_from_cluster_config()
    except Exception:  # an older/newer GCS layout: behave as without an autoscaler
        found = None
    if found:
        return {k: float(v) for k, v in found.items()}
    config = _monitor_config()
    return None if config is None else max_resources_of_config(config)


def max_resources_of_config(config: Mapping[str, Any]) -> dict[str, float] | None:
    """Σ over an autoscaling config's node types of ``max_workers`` × their declared
    resources (the head type counted once), None if no worker type declares any."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    total: dict[str, float] = {}
    workers = False
    for name, t in types.items():
        count = 1 if name == head else int(t.get("max_workers", config.get("max_workers", 0)))
        workers = workers or (name != head and count > 0 and bool(t.get("resources")))
        for key, value in (t.get("resources") or {}).items():
            total[key] = total.get(key, 0.0) + count * float(value)
    return total if workers else None


def _monitor_config() -> dict[str, Any] | None:
    """The parsed ``--autoscaling-config`` of this cluster's monitor process if it runs on
    this node (matched by the GCS address it was given), else None."""
    import psutil
    import ray
    import yaml

    gcs = f"--gcs-address={ray.get_runtime_context().gcs_address}"
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if gcs not in cmd or not any(a.endswith("monitor.py") for a in cmd):
            continue
        for arg in cmd:
            if arg.startswith("--autoscaling-config="):
                path = Path(arg.split("=", 1)[1]).expanduser()
                try:
                    return yaml.safe_load(path.read_text())
                except (OSError, yaml.YAMLError):
                    return None
    return None


def node_ip_address() -> str:
    """This machine's IP as Ray picks it for its nodes (``ray start`` and the raylets an
    autoscaler starts here), for tests that start a cluster themselves."""
    from ray._private.services import get_node_ip_address

    return get_node_ip_address()


def ray_address_file() -> Path:
    """Where ``ray start`` and ``ray.cluster_utils.Cluster`` record the latest cluster's
    address (``/tmp/ray/ray_current_cluster``): ``ray.init()`` without an address joins it."""
    from ray._common.utils import get_ray_address_file

    return Path(get_ray_address_file(None))


def validate_cluster_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A cluster launcher config (``ray up`` YAML, parsed) after Ray's own defaults and
    schema validation, offline; raises on unknown keys or an invalid head node type. Ray has
    no public dry run for this (``ray.autoscaler._private.util``)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(dict(config))
    validate_config(prepared)
    return prepared
