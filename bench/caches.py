"""``agentq bench caches``: what the tool-result and response caches save, side by side.

- Single-flight: ``calls`` identical calls of a slow deterministic tool at once, from two
  worker processes (:mod:`bench.cache_tools`), through the tool cache and without it: how
  many times the tool ran and the time until every call had its result.
- Response cache: a deterministic model call on a real Triton on CPU (the scripted model,
  and the local model SmolLM2-135M when the llm extra is installed) beside a response-cache
  hit for the same request: median latency of each and their ratio.

Redis is a server of the bench's own (embedded, stopped after).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from app.agents.registry import AgentSpec
from app.config import REPO_ROOT, CacheSettings, Settings, TritonSettings
from app.errors import ConfigurationError
from app.inference.backend import ChatRequest, GenerationParams
from app.inference.factory import build_pools
from app.local import llm
from app.local.redis import RedisServer
from app.local.triton import TritonServer, install_triton
from app.memory.response_cache import ResponseCache
from bench import cache_tools

PROCESSES = 2
QUESTION = "What is the capital of France? Answer in one word."


@dataclass(frozen=True)
class Plan:
    """The bench's sizes."""

    calls: int = 100  # identical tool calls, split over the processes
    tool_s: float = 0.5  # how long one execution of the tool takes
    samples: int = 20  # model calls (and cache hits) per model
    max_tokens: int = 16


def tool_side(url: str, plan: Plan, cached: bool) -> dict[str, Any]:
    """``plan.calls`` identical calls from two processes at once: executions and seconds."""
    client = redis.Redis.from_url(url)
    client.delete(cache_tools.EXECUTIONS_KEY, cache_tools.READY_KEY, cache_tools.GO_KEY)
    for key in client.scan_iter("agentq:toolcache:*"):
        client.delete(key)
    options = ["--threads", str(plan.calls // PROCESSES), "--sleep-s", str(plan.tool_s)]
    options += ["--margin-s", "30", "--wait-go"] + ([] if cached else ["--no-cache"])
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.cache_tools", url, *options],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
        )
        for _ in range(PROCESSES)
    ]
    try:
        cache_tools.go(client, PROCESSES)
        done = [d for proc in procs for d in json.loads(proc.communicate(timeout=300)[0])]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    executions = int(client.get(cache_tools.EXECUTIONS_KEY) or 0)
    client.close()
    return {
        "calls": len(done),
        "answered": sum("result" in d for d in done),
        "executions": executions,
        "all_answered_s": round(max(d["ended_s"] for d in done), 3),
    }


def response_side(url: str, settings: Settings, plan: Plan, model: str) -> dict[str, Any]:
    """Median latency of the model call and of a response-cache hit for the same request."""
    client = redis.Redis.from_url(url)
    pool = build_pools(settings, kinds=["triton"])["triton"]
    spec = AgentSpec(name="bench", temperature=0, response_cache=True)
    cache = ResponseCache(client, CacheSettings())
    request = ChatRequest.of_prompt(QUESTION, GenerationParams(plan.max_tokens, temperature=0))
    try:
        pool.generate(request)  # warm: connections, the model's first call
        calls, hits = [], []
        for _ in range(plan.samples):
            started = time.perf_counter()
            pool.generate(request)
            calls.append(time.perf_counter() - started)
        cache.answer(spec, pool, request, lambda: pool.generate(request))  # stored
        for _ in range(plan.samples):
            started = time.perf_counter()
            reply, hit = cache.answer(spec, pool, request, lambda: pool.generate(request))
            hits.append(time.perf_counter() - started)
            if not hit:
                raise RuntimeError("the response cache missed an identical request")
    finally:
        pool.close()
        client.close()
    call_ms, hit_ms = statistics.median(calls) * 1000, statistics.median(hits) * 1000
    return {
        "model": model,
        "model_call_ms": round(call_ms, 3),
        "cache_hit_ms": round(hit_ms, 3),
        "speedup": round(call_ms / hit_ms, 1),
        "reply": reply.text[:60],
    }


def run(plan: Plan, tmp: Path, console: Any) -> dict[str, Any]:
    """The bench's document."""
    with ExitStack() as stack:
        server = stack.enter_context(RedisServer())
        console.print("single-flight: through the cache, then without it", highlight=False)
        tools = {
            "cache": tool_side(server.url, plan, cached=True),
            "no_cache": tool_side(server.url, plan, cached=False),
        }
        replies: list[dict[str, Any]] = []
        home = install_triton(Settings().triton.home)
        repos = {"scripted": Settings().triton.model_repository}
        try:
            gguf = llm.gguf_path()
            repos["SmolLM2-135M (llama.cpp)"] = llm.llm_repository(tmp / "llm", gguf=gguf)
        except ConfigurationError as exc:
            console.print(f"[yellow]local model skipped: {exc}[/yellow]")
        for name, repo in repos.items():
            console.print(f"response cache: {name} on Triton (CPU)", highlight=False)
            triton = TritonServer(home, repo, log_path=tmp / f"triton-{len(replies)}.log")
            triton.start()
            try:
                settings = Settings(triton=TritonSettings(urls=[triton.grpc_url]))
                if name != "scripted":
                    folder = llm.prepare_model(tmp / "smollm2")
                    settings = llm.with_local_model(settings, folder)
                replies.append(response_side(server.url, settings, plan, name))
            finally:
                triton.stop()
    return {"plan": asdict(plan), "tools": tools, "responses": replies}


def main(plan: Plan, out: str | None, console: Any) -> int:
    """``agentq bench caches``: run, print the tables, write caches.json."""
    from rich.table import Table

    with tempfile.TemporaryDirectory(prefix="agentq-caches-") as tmp:
        doc = run(plan, Path(tmp), console)
    path = Path(out) if out else Path(__file__).parent / "results" / "caches.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    cached, plain = doc["tools"]["cache"], doc["tools"]["no_cache"]
    table = Table(f"{plan.calls} identical tool calls, 2 processes", "cache", "no cache", "ratio")
    table.add_row("tool executions", str(cached["executions"]), str(plain["executions"]),
                  f"1/{plain['executions'] / max(cached['executions'], 1):.0f}")  # fmt: skip
    table.add_row("calls answered", str(cached["answered"]), str(plain["answered"]), "")
    table.add_row("all answered (s)", str(cached["all_answered_s"]), str(plain["all_answered_s"]),
                  f"{cached['all_answered_s'] / plain['all_answered_s']:.2f}")  # fmt: skip
    console.print(table)
    table = Table("model (Triton, CPU)", "model call (ms)", "cache hit (ms)", "call / hit")
    for r in doc["responses"]:
        table.add_row(
            r["model"], str(r["model_call_ms"]), str(r["cache_hit_ms"]), f"{r['speedup']}x"
        )
    console.print(table)
    console.print(f"results in {path}", highlight=False)
    return 0 if cached["executions"] == 1 and cached["answered"] == plan.calls else 1
