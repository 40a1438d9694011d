"""Where a conversation's prefix was last sent: the index behind the ``prefix`` strategy.

An engine that caches the KV of earlier prompts (vLLM's and TensorRT-LLM's block reuse,
llama.cpp's prompt cache) only processes the new tokens of a growing conversation when the
call lands on the replica that served its beginning. The router learns where prefixes live
from what it sent, without engine support (llm-d's approximate prefix scorer): a request's
conversation, serialised canonically (:func:`conversation_text`: the tools, then each turn),
is cut into blocks whose hashes form a chain (block i's hash covers blocks 0..i), and the
index remembers which replica was sent which hashes. A replica's match is the length of the
longest run of leading hashes it was sent.

Every worker process of a pool must agree, so the index lives in Redis: one script call
reads the matches of every replica (``lua/prefix_match.lua``), one records the chosen
replica's hashes with a TTL and trims the index to a cap (``lua/prefix_record.lua``). When
Redis does not answer, a per-process index stands in (it learns every send of its process
anyway) and Redis is tried again after a pause: routing never fails a call for the index.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis

from app.constants import prefix_key
from app.inference.chat import ChatRequest
from app.ops.redis_scripts import Script

log = logging.getLogger(__name__)

MATCH = Script("app.inference", "lua/prefix_match.lua")
RECORD = Script("app.inference", "lua/prefix_record.lua")
MAX_REQUEST_BLOCKS = 1024  # blocks of one request looked up (its first ones)
REDIS_RETRY_S = 5.0  # after a failure, the per-process index alone for this long


def conversation_text(request: ChatRequest) -> str:
    """The request's conversation as one canonical string: the tools offered (as the server
    puts them in the prompt, first), then each turn with its role, text, tool calls and the
    call it answers. Equal conversations give equal text; a grown one extends it."""
    parts = []
    if request.tools:
        parts.append(_dumps([t.function_spec() for t in request.tools]))
    for m in request.messages:
        calls = [[c.id, c.name, c.args] for c in m.tool_calls]
        parts.append(_dumps([m.role, m.content, calls, m.tool_call_id, m.name]))
    return "\n".join(parts) + "\n"


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hashes(request: ChatRequest, block_chars: int) -> list[str]:
    """Hashes of the whole ``block_chars``-long blocks of the request's conversation, chained
    from the model's name: the i-th covers the model and blocks 0..i. A trailing partial block
    is left out (it changes as the conversation grows)."""
    text = conversation_text(request)
    hashes = []
    previous = (request.model or "").encode()
    for start in range(0, min(len(text), MAX_REQUEST_BLOCKS * block_chars), block_chars):
        block = text[start : start + block_chars]
        if len(block) < block_chars:
            break
        digest = hashlib.blake2b(previous + block.encode(), digest_size=8).hexdigest()
        hashes.append(digest)
        previous = digest.encode()
    return hashes


def leading_matches(sent: Sequence[bool]) -> int:
    """How many leading blocks were sent (the first gap ends the match)."""
    for i, hit in enumerate(sent):
        if not hit:
            return i
    return len(sent)


class LocalPrefixIndex:
    """The index in this process's memory: block hash -> replica -> last send time, at most
    ``max_blocks`` hashes (least recently sent dropped), each forgotten after ``ttl_s``."""

    def __init__(
        self, ttl_s: float, max_blocks: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.ttl_s = ttl_s
        self.max_blocks = max_blocks
        self._clock = clock
        self._blocks: OrderedDict[str, dict[str, float]] = OrderedDict()
        # Per replica, the blocks it was sent (hash -> time), oldest first: what it holds.
        self._held: dict[str, OrderedDict[str, float]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._blocks)

    def match(self, hashes: Sequence[str], replicas: Sequence[str]) -> dict[str, int]:
        """Each replica's count of leading ``hashes`` it was sent within the TTL."""
        oldest = self._clock() - self.ttl_s
        with self._lock:
            sent = [self._blocks.get(h, {}) for h in hashes]
        return {r: leading_matches([s.get(r, -math.inf) >= oldest for s in sent]) for r in replicas}

    def held(self, replicas: Sequence[str]) -> dict[str, int]:
        """How many blocks each replica was sent within the TTL."""
        oldest = self._clock() - self.ttl_s
        with self._lock:
            for blocks in self._held.values():
                while blocks and next(iter(blocks.values())) < oldest:
                    blocks.popitem(last=False)
            return {r: len(self._held.get(r, ())) for r in replicas}

    def record(self, hashes: Sequence[str], replica: str) -> None:
        """``replica`` was sent ``hashes`` now."""
        now = self._clock()
        with self._lock:
            held = self._held.setdefault(replica, OrderedDict())
            for h in hashes:
                self._blocks.setdefault(h, {})[replica] = now
                self._blocks.move_to_end(h)
                held[h] = now
                held.move_to_end(h)
            while len(self._blocks) > self.max_blocks:
                self._blocks.popitem(last=False)
            while len(held) > self.max_blocks:
                held.popitem(last=False)


class PrefixIndex:
    """The prefix index of the replica pool ``pool`` (its backend kind), shared by every
    process through ``client`` (a Redis client; None: this process's own index only)."""

    def __init__(
        self,
        client: Any | None,
        pool: str,
        *,
        ttl_s: float = 600,
        max_blocks: int = 200_000,
        clock: Callable[[], float] = time.time,
        retry_s: float = REDIS_RETRY_S,
    ) -> None:
        self.client = client
        self.pool = pool
        self.ttl_s = ttl_s
        self.max_blocks = max_blocks
        self.local = LocalPrefixIndex(ttl_s, max_blocks, clock)
        self._clock = clock
        self._retry_s = retry_s
        self._down_until = 0.0

    def _key(self, block: str) -> str:
        return prefix_key(self.pool, f"b:{block}")

    def _shared(self) -> bool:
        return self.client is not None and self._clock() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        if self._clock() >= self._down_until:  # once per outage, not once per call
            log.warning(
                "prefix index in Redis unreachable (%s): routing on this process's own index "
                "for %.0f s",
                exc,
                self._retry_s,
            )
        self._down_until = self._clock() + self._retry_s

    def match(self, hashes: Sequence[str], replicas: Sequence[str]) -> Mapping[str, int]:
        """Each of ``replicas``' count of leading ``hashes`` it was sent within the TTL."""
        return self.lookup(hashes, replicas)[0]

    def lookup(
        self, hashes: Sequence[str], replicas: Sequence[str]
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Each of ``replicas``' count of leading ``hashes`` it was sent within the TTL, and
        how many blocks of any conversation it was sent within the TTL (what its cache holds
        of this pool's conversations, as far as the router knows): one script call."""
        if not replicas:
            return {}, {}
        if self._shared():
            try:
                counts = MATCH(
                    self.client,
                    [self._held_key(r) for r in replicas] + [self._key(h) for h in hashes],
                    [self._clock() - self.ttl_s, *replicas],
                )
                n = len(replicas)
                matched = {r: int(c) for r, c in zip(replicas, counts[:n], strict=True)}
                return matched, {r: int(c) for r, c in zip(replicas, counts[n:], strict=True)}
            except redis.RedisError as exc:
                self._failed(exc)
        matched = self.local.match(hashes, replicas) if hashes else dict.fromkeys(replicas, 0)
        return matched, self.local.held(replicas)

    def _held_key(self, replica: str) -> str:
        return prefix_key(self.pool, f"held:{replica}")

    def record(self, hashes: Sequence[str], replica: str) -> None:
        """``replica`` was sent ``hashes`` now (in Redis, and in this process's index)."""
        if not hashes:
            return
        self.local.record(hashes, replica)
        if self._shared():
            keys = [
                prefix_key(self.pool, "lru"),
                self._held_key(replica),
                *(self._key(h) for h in hashes),
            ]
            args = [replica, self._clock(), int(self.ttl_s), self.max_blocks]
            try:
                RECORD(self.client, keys, args)
            except redis.RedisError as exc:
                self._failed(exc)

    def close(self) -> None:
        """Close the Redis client."""
        if self.client is not None:
            self.client.close()
