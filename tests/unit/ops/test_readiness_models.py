"""Readiness with a model missing: not ready, and the body names the model by backend."""

from __future__ import annotations

import json

from app.ops.health import _verdict, replica_result


def test_a_missing_model_fails_the_replica_check_and_is_listed_by_backend() -> None:
    missing = replica_result({"t:1": True}, ["llama"])
    assert not missing.ok and missing.detail.endswith("missing models: llama")
    fine = replica_result({"t:1": True})
    status, _, body = _verdict("ready", {"replicas.triton": missing, "replicas.echo": fine})
    assert status == 503
    assert json.loads(body)["missing_models"] == {"triton": ["llama"]}
    status, _, body = _verdict("ready", {"replicas.echo": fine})
    assert status == 200 and "missing_models" not in json.loads(body)
