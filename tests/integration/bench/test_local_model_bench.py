"""``agentq bench local-model`` end to end at tiny counts: the real local model on Triton,
asked directly and through Redis and a worker, both sides timed and written to JSON and PNG.
Skipped without the llm extra."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from app.cli import main
from app.config import REPO_ROOT

pytest.importorskip("llama_cpp")

sys.path.insert(0, str(REPO_ROOT))
from bench.report import check_shape

pytestmark = pytest.mark.integration


def test_both_sides_stream_the_same_prompt_and_are_timed(tmp_path) -> None:
    args = ["bench", "local-model", "--requests", "2", "--max-tokens", "12"]
    result = CliRunner().invoke(main, [*args, "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "local-model.json").read_text())
    assert check_shape(doc) == []
    assert (tmp_path / "local-model.png").stat().st_size > 0
    for side in ("direct", "agentq"):
        figures = doc["sides"][side]
        assert figures["failed"] == 0
        assert figures["stream"]["requests"] == figures["unary"]["requests"] == 2
        assert figures["stream"]["first_token_ms"]["p50"] > 0
        assert figures["stream"]["decode_tokens_per_s"]["p50"] > 0
        assert figures["unary"]["total_ms"]["p50"] > 0
    queued = doc["sides"]["agentq"]["stream"]
    assert queued["to_model_call_ms"]["p50"] > 0 and queued["first_token_relay_ms"]["p50"] >= 0
    # Counted with the model's tokenizer: greedy answers of 12 tokens at most.
    assert all(0 < s["tokens"] <= 12 for s in doc["samples"])
    # The worker sent the prompt the direct side sent, token for token (its step's record).
    same = doc["same_on_both_sides"]
    assert same["compared"] >= 1 and same["same_prompt"] == same["compared"]
    assert doc["ratio"] is not None and doc["first_token_overhead_ms"] is not None
