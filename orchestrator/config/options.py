"""Option groups of an experiment beyond training: how to reach an object-store ``--out``
(:class:`StorageConfig`) and the experiment trackers' options (:class:`TrackerOptions`)."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.config.fields import _COUNT, _POSITIVE, Valid, _f


@dataclass(frozen=True)
class StorageConfig:
    """How to reach the object store of an ``s3://`` (or other URI) ``--out``: YAML
    ``storage: {...}`` or ``--storage-option KEY=VALUE``. Credentials are never config: they
    come from the environment or ``~/.aws`` (docs/storage.md), so they stay out of results."""

    endpoint_url: str | None = _f(
        help="S3-compatible endpoint, e.g. http://127.0.0.1:9000 (MinIO, Ceph, moto); None = "
        "AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL, else AWS itself")
    region: str | None = _f(help="S3 region; None = AWS_REGION, else AWS_DEFAULT_REGION, "
                            "else us-east-1")
    anonymous: bool = _f(False, help="unsigned requests (public buckets; no credentials)")
    force_virtual_addressing: bool = _f(
        False, help="bucket.host addressing with an endpoint_url (servers that need it)")
    connect_timeout: float | None = _f(help="seconds to connect; None = the AWS SDK's (1 s)",
                                       valid=_POSITIVE)
    request_timeout: float | None = _f(help="seconds per request; None = the AWS SDK's",
                                       valid=_POSITIVE)
    retry_attempts: int = _f(3, help="attempts per request before an error", valid=_COUNT)
    forward_credentials: bool = _f(
        True, help="pass this process's AWS_* credential variables to the run's Ray workers "
        "(runtime_env env_vars, readable by who can read the cluster's state); false: the "
        "nodes' own environment, ~/.aws or instance roles provide them")


#: experiment trackers a run can also log to (orchestrator.trackers; pip install 'mtlx[<name>]')
TRACKERS = ("mlflow", "tensorboard", "wandb")
WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class MlflowOptions:
    tracking_uri: str | None = _f(help="MLflow tracking URI (http://host:5000, sqlite:///x.db "
                                  "...); None = sqlite:///<out>/trackers/mlflow.db")
    experiment: str | None = _f(help="MLflow experiment name; None = the benchmark name")


@dataclass
class TensorBoardOptions:
    log_dir: str | None = _f(help="event files go to <log_dir>/<run_id>/; None = "
                             "<out>/trackers/tensorboard")


@dataclass
class WandbOptions:
    project: str = _f("mtlx", help="W&B project")
    entity: str | None = _f(help="W&B entity (user or team); None = the logged-in default")
    mode: str | None = _f(help=f"one of {list(WANDB_MODES)}; None = W&B's own (WANDB_MODE, "
                          "else online)", valid=Valid(choices=WANDB_MODES))
    dir: str | None = _f(help="W&B's local run files; None = <out>/trackers/wandb")


@dataclass
class TrackerOptions:
    """Options of each tracker (``tracker_options.<tracker>.<key>``; docs/trackers.md)."""

    mlflow: MlflowOptions = _f(factory=MlflowOptions, help="MLflow options")
    tensorboard: TensorBoardOptions = _f(factory=TensorBoardOptions, help="TensorBoard options")
    wandb: WandbOptions = _f(factory=WandbOptions, help="W&B options")
