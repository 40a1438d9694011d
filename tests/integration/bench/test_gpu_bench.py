"""The GPU inference bench (bench/gpu/run.py) on a CPU: against a real OpenAI-compatible server
(llama-cpp-python on SmolLM2, the llm extra) at two small concurrencies, both sides measured
and written; and the random-weight model's tokenizer (bench/gpu/model.py)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest

from app.config import REPO_ROOT
from app.local.llama_server import LlamaServer
from tests.fixtures.llama_server import LLAMA_MODEL

sys.path.insert(0, str(REPO_ROOT))
from bench.gpu.model import END, WORDS, build_tokenizer

pytestmark = pytest.mark.integration


def test_the_bench_measures_both_sides_through_the_same_server(
    llama_openai: LlamaServer, tmp_path
) -> None:
    args = [
        sys.executable, str(REPO_ROOT / "bench" / "gpu" / "run.py"),
        "--device", "cpu", "--server-url", llama_openai.base_url, "--model", LLAMA_MODEL,
        "--concurrency", "1,4", "--rounds", "2", "--max-tokens", "8", "--out-dir", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["complete"] and report["worker_log_errors"] == []
    assert [row["concurrency"] for row in report["levels"]] == [1, 4]
    for row in report["levels"]:
        direct, agentq = row["direct"], row["agentq"]
        for side in (direct, agentq):
            assert (side["calls"], side["failed"]) == (8, 0)
            assert 0 < side["tokens_out"] <= 8 * 8  # the server's counts, cut at max_tokens
            assert side["tokens_per_s"] > 0 and side["requests_per_s"] > 0
            if shutil.which("nvidia-smi") is None:
                assert side["gpu"] == "n/a"
        # Both sides send the same conversation: the same prompt tokens per call.
        assert agentq["tokens_in"] == direct["tokens_in"] > 0
        assert row["ratio_tokens"] is not None and row["ratio_requests"] is not None
    assert report["levels"][1]["agentq"]["threads_per_process"] == 4
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "gpu.png").stat().st_size > 0


def test_the_random_models_tokenizer_decodes_every_id_and_knows_the_prompt() -> None:
    tokenizer = build_tokenizer(4096)
    assert tokenizer.get_vocab_size() == 4096
    prompt = f"<|im_start|>user\n{' '.join(WORDS)}{END}\n<|im_start|>assistant\n"
    ids = tokenizer.encode(prompt).ids
    assert tokenizer.token_to_id("<unk>") not in ids
    # Whatever id a random model samples is a word of the reply.
    assert all(tokenizer.id_to_token(i) for i in range(4096))
    assert len(tokenizer.decode([4095, 100]).split()) == 2
