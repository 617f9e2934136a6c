"""cluster.yaml passes Ray's own cluster-config schema, offline (docs/ray.md §5)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.run.ray_compat import validate_cluster_config

CLUSTER = Path(__file__).resolve().parent.parent / "cluster.yaml"


def test_cluster_yaml_is_valid():
    config = yaml.safe_load(CLUSTER.read_text())
    prepared = validate_cluster_config(config)
    assert prepared["head_node_type"] in prepared["available_node_types"]
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"].get("driver_slot", 0) >= 1  # Tune trial drivers live here
    # the State API (ray[default]) frees stopped trials' placement groups: docs/ray.md §1.7
    assert any("ray[default" in c for c in prepared["setup_commands"])


def test_the_validation_catches_mistakes():
    config = yaml.safe_load(CLUSTER.read_text())
    jsonschema = pytest.importorskip("jsonschema")
    with pytest.raises(ValueError, match="head_node_type"):
        validate_cluster_config({**config, "head_node_type": "no_such_type"})
    with pytest.raises(jsonschema.ValidationError, match="unknown_key"):
        validate_cluster_config({**config, "unknown_key": 1})
