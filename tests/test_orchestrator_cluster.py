"""cluster.yaml passes Ray's own cluster-config schema, offline (research/ray.md §10(c)8)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parent.parent / "cluster.yaml"


def _validate(config: dict) -> dict:
    util = pytest.importorskip("ray.autoscaler._private.util")  # private API: ray is pinned
    prepared = util.prepare_config(config)
    util.validate_config(prepared)
    return prepared


def test_cluster_yaml_is_valid():
    config = yaml.safe_load(CLUSTER.read_text())
    prepared = _validate(config)
    assert prepared["head_node_type"] in prepared["available_node_types"]
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"].get("driver_slot", 0) >= 1  # Tune trial drivers live here
    assert any("ray[default" in c for c in prepared["setup_commands"])  # State API (G7)


def test_the_validation_catches_mistakes():
    config = yaml.safe_load(CLUSTER.read_text())
    jsonschema = pytest.importorskip("jsonschema")
    with pytest.raises(ValueError, match="head_node_type"):
        _validate({**config, "head_node_type": "no_such_type"})
    with pytest.raises(jsonschema.ValidationError, match="unknown_key"):
        _validate({**config, "unknown_key": 1})
