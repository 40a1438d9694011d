"""What the caches key on (pure), and a tool-cache waiter that stops waiting."""

from __future__ import annotations

import dataclasses

import fakeredis
import pytest

from app.agents.tools import tool, tool_spec
from app.config import CacheSettings
from app.constants import tool_cache_key
from app.errors import ConfigurationError
from app.inference.backend import ChatRequest, GenerationParams
from app.memory.response_cache import reply_key
from app.memory.tool_cache import ToolCache, call_identity

SPEC = tool_spec("word_count")


def test_equivalent_arguments_have_one_identity_and_versions_and_tools_their_own():
    same = call_identity(SPEC, SPEC.validate({"text": "a b"}))
    assert same == call_identity(SPEC, {"text": "a b"})
    assert same.startswith("word_count:1:")
    assert same != call_identity(SPEC, {"text": "a  b"})
    assert same != call_identity(dataclasses.replace(SPEC, version="2"), {"text": "a b"})
    assert same != call_identity(dataclasses.replace(SPEC, name="other"), {"text": "a b"})


def test_a_reply_key_changes_with_each_part():
    request = ChatRequest.of_prompt("hi", GenerationParams(max_tokens=8, temperature=0))
    base = reply_key("triton", "ensemble", "1/1", "User: hi", request)
    assert base == reply_key("triton", "ensemble", "1/1", "User: hi", request)
    other_params = dataclasses.replace(request, params=GenerationParams(8, 0, top_k=1))
    assert (
        len(
            {
                base,
                reply_key("openai", "ensemble", "1/1", "User: hi", request),
                reply_key("triton", "ensemble_alt", "1/1", "User: hi", request),
                reply_key("triton", "ensemble", "2/2", "User: hi", request),
                reply_key("triton", "ensemble", "1/1", "User: ho", request),
                reply_key("triton", "ensemble", "1/1", "User: hi", other_params),
            }
        )
        == 6
    )


def test_a_waiter_whose_owner_holds_the_lock_too_long_runs_the_tool_itself():
    client = fakeredis.FakeRedis()
    values = {"text": "a b c"}
    lock = tool_cache_key(call_identity(SPEC, values), "lock")
    client.set(lock, "someone-else", px=60_000)  # an owner alive but stuck
    cache = ToolCache(client, CacheSettings(tool_wait_s=0.05))
    assert cache.call(SPEC, values, 1.0, lambda: 3) == 3
    assert cache.call(SPEC, values, 1.0, lambda: 4) == 3  # stored for the next call
    assert client.get(lock) == b"someone-else"  # not its lock to release


def test_a_cache_ttl_must_be_positive():
    with pytest.raises(ConfigurationError, match="cache_ttl_s"):
        tool("bad_ttl", deterministic=True, cache_ttl_s=0)
