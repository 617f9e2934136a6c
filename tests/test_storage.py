"""Locations without a server: parsing (local path, ``file://``, ``s3://``, a filesystem
object), the S3 settings from options and environment, the typed storage options, and the
store through an fsspec filesystem (not local, so the object-store code path)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from orchestrator.config import ConfigError, StorageConfig, experiment_from_dict, help_config
from orchestrator.results import ResultsStore, read_table
from orchestrator.results.storage import (
    credentials_source,
    is_local,
    open_storage,
    resolve_location,
    resolve_options,
    s3_settings,
    worker_env,
)

AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for v in AWS_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return monkeypatch


def test_local_paths_and_file_uris_are_the_same_local_storage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = open_storage("exp"), open_storage(f"file://{tmp_path}/exp")
    assert a.local and b.local and a.base == b.base == str(tmp_path / "exp")
    assert ResultsStore("exp").root == tmp_path / "exp"  # a Path, as before
    assert resolve_location("exp") == str(tmp_path / "exp")
    assert is_local("exp") and is_local("file:///x") and not is_local("s3://b/x")


def test_an_s3_uri_is_not_a_local_folder(clean_env):
    s = open_storage("s3://bucket/exp/")
    assert not s.local and isinstance(s.fs, pafs.S3FileSystem)
    assert (s.base, s.uri) == ("bucket/exp", "s3://bucket/exp")
    assert ResultsStore("s3://bucket/exp").root == "s3://bucket/exp"
    assert s.show("runs/x.parquet") == "s3://bucket/exp/runs/x.parquet"
    assert resolve_location("s3://bucket/exp/") == "s3://bucket/exp"
    with pytest.raises(ConfigError, match="names no bucket"):
        open_storage("s3://")


def test_endpoint_and_region_come_from_options_then_environment(clean_env):
    assert s3_settings(StorageConfig()) == {"endpoint": None, "endpoint_from": "default",
                                            "region": "us-east-1", "region_from": "default"}
    clean_env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    clean_env.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    s = s3_settings(StorageConfig())
    assert (s["endpoint"], s["endpoint_from"]) == ("http://127.0.0.1:9000", "AWS_ENDPOINT_URL")
    assert (s["region"], s["region_from"]) == ("eu-west-1", "AWS_DEFAULT_REGION")
    clean_env.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9001")  # the S3-specific wins
    assert s3_settings(StorageConfig())["endpoint"] == "http://127.0.0.1:9001"
    s = s3_settings(StorageConfig(endpoint_url="http://minio:9000", region="r1"))
    assert (s["endpoint"], s["endpoint_from"], s["region"]) == (
        "http://minio:9000", "storage.endpoint_url", "r1")
    # what travels to Ray workers: the endpoint and region fixed, never the credentials
    fixed = resolve_options("s3://b/x", StorageConfig())
    assert (fixed.endpoint_url, fixed.region) == ("http://127.0.0.1:9001", "eu-west-1")
    assert resolve_options("/local", StorageConfig()) == StorageConfig()


def test_credentials_sources_and_what_workers_get(clean_env, tmp_path):
    assert credentials_source(StorageConfig()) is None
    assert "anonymous" in credentials_source(StorageConfig(anonymous=True))
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "credentials").write_text("[default]\n")
    assert credentials_source(StorageConfig()).startswith("profile 'default' in ")
    clean_env.setenv("AWS_ACCESS_KEY_ID", "k")
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", "s")
    assert credentials_source(StorageConfig()).startswith("environment")
    assert worker_env("s3://b/x", StorageConfig()) == {
        "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
        **({"AWS_CA_BUNDLE": os.environ["AWS_CA_BUNDLE"]} if os.environ.get("AWS_CA_BUNDLE")
           else {})}
    assert worker_env("s3://b/x", StorageConfig(forward_credentials=False)) == {}
    assert worker_env(str(tmp_path), StorageConfig()) == {}


def test_storage_options_are_typed_and_checked():
    exp = experiment_from_dict({"out": "s3://b/x", "storage": {
        "endpoint_url": "http://127.0.0.1:9000", "retry_attempts": "2", "anonymous": "true"}})
    assert exp.storage == StorageConfig(endpoint_url="http://127.0.0.1:9000", retry_attempts=2,
                                        anonymous=True)
    with pytest.raises(ConfigError, match=r"unknown config key 'storage.regoin' \(did you mean "
                                          r"'region'\?\)"):
        experiment_from_dict({"storage": {"regoin": "x"}})
    with pytest.raises(ConfigError, match="storage.retry_attempts must be an integer"):
        experiment_from_dict({"storage": {"retry_attempts": "many"}})
    assert "storage.endpoint_url" in help_config()


def test_store_through_an_fsspec_filesystem(tmp_path):
    """A filesystem object from the Python API (fsspec's local one under a prefix, wrapped
    with PyFileSystem(FSSpecHandler)): the non-local code path, one write per file."""
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("file")
    root = (fs, str(tmp_path / "exp"))
    store = ResultsStore(root)
    assert not store.storage.local and isinstance(store.storage.fs, pafs.PyFileSystem)
    store.write_run({"run_id": "r", "status": "finished"})
    store.write_metrics("r", "e0", [{"run_id": "r", "benchmark": "b", "method": "m", "seed": 0,
                                     "split": "val", "epoch": 0, "step": 1, "task": "t",
                                     "metric": "acc", "value": 1.0, "higher_is_better": True}])
    store.write_checkpoint("r", b"one")
    store.write_checkpoint("r", b"two")
    assert store.read_run("r")["status"] == "finished"
    assert list(read_table(store.storage, "metrics").value) == [1.0]
    assert (store.read_checkpoint("r"), store.read_checkpoint("r", "state.prev.pt")) == (
        b"two", b"one")
    files = sorted(p.relative_to(tmp_path).as_posix() for p in Path(tmp_path).rglob("*")
                   if p.is_file())
    assert files == ["exp/checkpoints/r/state.prev.pt", "exp/checkpoints/r/state.pt",
                     "exp/metrics/r/e0.parquet", "exp/runs/r.parquet"]  # no temporaries
    store.clear_run("r")
    assert not any(p.is_file() for p in Path(tmp_path).rglob("*"))
