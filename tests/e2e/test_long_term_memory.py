"""Long-term memory through real workers, the scripted model and the real embedding model on
one Triton: a run of tenant acme remembers a fact in one session; a later run of acme in
another session recalls it (by a question worded otherwise), with the recall tool and by
automatic retrieval into its prompt; runs of tenant globex, asking the same, get nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.celery_ext.app import create_celery
from app.config import Settings, TritonSettings
from app.producer.submit import submit
from tests.fixtures.embedding import triton_embedding  # noqa: F401

pytestmark = pytest.mark.e2e

AGENTS = """\
agents:
  - name: memo
    tools: [remember, recall]
  - name: recaller
    memory: {recall: true, scope: tenant, k: 3, max_tokens: 128}
"""
FACT = "The user's favourite colour is teal."
REMEMBER = json.dumps({"text": FACT})
ASK = "What colour does the user like?"


def test_a_fact_one_session_keeps_is_recalled_in_another_by_its_tenant_only(
    settings: Settings,
    tmp_path: Path,
    start_worker,
    store,
    triton_embedding,  # noqa: F811
) -> None:
    agents_file = tmp_path / "agents.yaml"
    agents_file.write_text(AGENTS)
    triton = TritonSettings(urls=[triton_embedding.grpc_url])
    configured = settings.model_copy(update={"agents_file": agents_file, "triton": triton})
    celery = create_celery(configured)
    try:
        start_worker(["memo", "recaller"], settings=configured, celery=celery)

        def run(agent: str, text: str, session: str, tenant: str) -> str:
            result = submit(agent, text, session, tenant=tenant, celery=celery)
            return str(result.get(timeout=90))

        kept = run("memo", f"keep this [tool:remember {REMEMBER}]", "acme-1", "acme")
        assert json.loads(kept.removeprefix("Answer: ")) == {"stored": 1}
        shared = json.dumps({"text": FACT, "scope": "tenant"})
        run("memo", f"keep it for all [tool:remember {shared}]", "acme-1", "acme")

        asked = json.dumps({"query": ASK})
        recalled = json.loads(run("memo", f"[tool:recall {asked}]", "acme-2", "acme")[8:])
        assert recalled[0]["text"] == FACT and recalled[0]["score"] > 0.5
        theirs = json.loads(run("memo", f"[tool:recall {asked}]", "globex-1", "globex")[8:])
        assert theirs == []

        # Automatic retrieval: the scripted model answers with its system prompt ([system]).
        told = run("recaller", f"{ASK} [system]", "acme-3", "acme")
        assert FACT in told
        assert FACT not in run("recaller", f"{ASK} [system]", "globex-2", "globex")
    finally:
        celery.close()
    memories = store.list_runs(tenant="globex")
    assert len(memories) == 2 and all(r.status == "succeeded" for r in memories)
