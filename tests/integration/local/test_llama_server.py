"""llama-cpp-python's OpenAI-compatible server, started and stopped by PID around the real
SmolLM2-135M-Instruct: it lists its model, answers a chat completion with its usage, and
leaves no process behind."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from app.errors import LocalServiceError
from app.local.llama_server import LlamaServer

pytest.importorskip("llama_cpp")


def test_the_server_answers_and_is_gone_after_stop(tmp_path: Path) -> None:
    server = LlamaServer(alias="smol", n_ctx=512, log_path=tmp_path / "llama.log")
    with server:
        pid = server.pid
        assert pid is not None
        models = httpx.get(f"{server.base_url}/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["smol"]
        reply = httpx.post(
            f"{server.base_url}/chat/completions",
            json={
                "model": "smol",
                "messages": [{"role": "user", "content": "Say hello."}],
                "max_tokens": 8,
            },
            timeout=60,
        ).json()
        (choice,) = reply["choices"]
        assert choice["message"]["role"] == "assistant"
        assert isinstance(choice["message"]["content"], str)
        usage = reply["usage"]
        assert usage["prompt_tokens"] > 0
        assert 0 < usage["completion_tokens"] <= 8
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_server_that_cannot_start_fails_with_its_log(tmp_path: Path) -> None:
    not_a_model = tmp_path / "broken.gguf"
    not_a_model.write_bytes(b"not a gguf file")
    server = LlamaServer(not_a_model, log_path=tmp_path / "llama.log")
    with pytest.raises(LocalServiceError, match="exited with code") as failed:
        server.start()
    assert str(server.log_path) in str(failed.value)
    assert server.proc is not None and server.proc.poll() is not None
