"""``agentq bench embedding`` end to end at tiny counts: the embedding model in-process and
on Triton, texts/s of both and their ratio, a cache hit beside the model call. Skipped
without the embedding extra."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from app.cli import main
from app.config import REPO_ROOT
from app.local import embedding
from tests.fixtures.services import service_missing

sys.path.insert(0, str(REPO_ROOT))
from bench.embedding import make_texts

pytestmark = pytest.mark.integration


def test_make_texts_are_distinct_and_reproducible() -> None:
    texts = make_texts(50)
    assert len(set(texts)) == 50 and texts == make_texts(50)
    assert all(8 <= len(t.split()) - 1 <= 40 for t in texts)


def test_both_sides_embed_every_text_and_the_cache_hits(tmp_path) -> None:
    if not embedding.available():
        service_missing("the embedding extra is not installed")
    out = tmp_path / "embedding.json"
    args = ["bench", "embedding", "--texts", "16", "--threads", "2", "--big-batch", "4"]
    result = CliRunner().invoke(main, [*args, "--samples", "3", "--rounds", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert [s["texts_per_request"] for s in doc["scenarios"]] == [1, 4]
    for scenario in doc["scenarios"]:
        assert scenario["triton"]["errors"] == []
        assert scenario["direct"]["texts_per_s"] > 0 and scenario["triton"]["texts_per_s"] > 0
        assert scenario["ratio"] > 0
        assert len(scenario["rounds"]["direct"]) == len(scenario["rounds"]["triton"]) == 2
        assert scenario["triton"]["rows_per_model_run"] >= 1
    assert doc["cache"]["cache_hit_ms"] > 0 and doc["cache"]["model_call_ms"] > 0
    assert doc["machine"]["cpu_count"] and doc["versions"]["python"]
