"""Two agents on one worker, each naming its own model on one Triton, are each served by
that model (counted by Triton's per-model statistics); an agent whose model the server does
not have fails its runs with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.celery_ext.app import create_celery
from app.config import TritonSettings
from app.errors import RunFailedError
from app.local.triton import TritonServer
from app.producer.submit import submit
from tests.fixtures.triton import ALT_MODEL, served_counts
from tests.fixtures.waiting import wait_for

pytestmark = pytest.mark.e2e

AGENTS = f"""\
agents:
  - name: plain
  - name: alt
    model: {ALT_MODEL}
  - name: ghost
    model: no_such_model
"""
MODELS = ["ensemble", "ensemble_stream", ALT_MODEL]


def test_each_agent_is_served_by_its_own_model(
    settings, tmp_path: Path, start_worker, triton_two_models: TritonServer
) -> None:
    agents_file = tmp_path / "agents.yaml"
    agents_file.write_text(AGENTS)
    triton = TritonSettings(replicas=[triton_two_models.replica()])
    configured = settings.model_copy(update={"agents_file": agents_file, "triton": triton})
    celery = create_celery(configured)
    try:
        start_worker(["plain", "alt", "ghost"], settings=configured, celery=celery)
        before = served_counts(triton_two_models, MODELS)
        plain = [submit("plain", f"plain {i}", celery=celery) for i in range(2)]
        alt = [submit("alt", f"alt {i}", celery=celery) for i in range(3)]
        assert [r.get(timeout=60) for r in plain] == ["Answer: PLAIN 0", "Answer: PLAIN 1"]
        assert [r.get(timeout=60) for r in alt][-1] == "Answer: ALT 2"
        with pytest.raises(RunFailedError, match="has no model 'no_such_model'"):
            submit("ghost", "hi", celery=celery).get(timeout=60)
    finally:
        celery.close()
    served: dict[str, int] = {}

    def counted() -> bool:
        after = served_counts(triton_two_models, MODELS)
        served.update({m: after[m] - before[m] for m in MODELS})
        return served == {"ensemble": 2, "ensemble_stream": 0, ALT_MODEL: 3}

    wait_for(counted, 10, f"each model's own runs counted (so far {served})")
