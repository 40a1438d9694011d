"""A worker process for the tool cache's single-flight bench and tests: threads making the
same call of a slow deterministic tool that counts its executions in Redis.

    python -m bench.cache_tools REDIS_URL --threads 50 --sleep-s 0.5 [--wait-go] [--no-cache]

prints one JSON line: each call's result or error, and the seconds from the start to its end.
With ``--wait-go`` the process counts itself in :data:`READY_KEY` and its threads start
together once :data:`GO_KEY` is set (by :func:`go`), so that several processes call at once.
The tool's sleep is this process's (not an argument), so every process makes the same call
whatever it sleeps: a test kills one owner stuck in a long sleep while the others wait.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

import redis

from app.agents.tools import ToolContext, tool, tool_spec
from app.config import CacheSettings
from app.errors import ToolError
from app.memory.tool_cache import ToolCache

TOOL = "bench_cache_probe"
EXECUTIONS_KEY = "agentq:bench:cache_probe:executions"
READY_KEY = "agentq:bench:cache_probe:ready"
GO_KEY = "agentq:bench:cache_probe:go"
DEADLINE_S = 1.0
_SLEEP_S = [0.0]
_FAIL = [False]


@tool(TOOL, deterministic=True, deadline_s=DEADLINE_S)
def cache_probe(ctx: ToolContext, city: str, days: int = 3) -> dict[str, Any]:
    """Count this execution in Redis, sleep, answer (a stand-in for a slow lookup).

    Args:
        city: Any text.
        days: Any number.
    """
    ctx.redis.incr(EXECUTIONS_KEY)
    time.sleep(_SLEEP_S[0])
    if _FAIL[0]:
        raise RuntimeError("the probe was told to fail")
    return {"city": city, "days": days, "forecast": "sunny"}


def go(client: Any, processes: int, timeout_s: float = 60.0) -> float:
    """Once ``processes`` are ready, let their calls start; the start time (wall clock)."""
    deadline = time.monotonic() + timeout_s
    while int(client.get(READY_KEY) or 0) < processes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{processes} call processes not ready in {timeout_s} s")
        time.sleep(0.02)
    started = time.time()
    client.set(GO_KEY, started)
    return started


def calls(
    url: str,
    threads: int,
    *,
    wait_go: bool = False,
    cached: bool = True,
    args: dict[str, Any] | None = None,
    margin_s: float = 0.5,
) -> list[dict[str, Any]]:
    """``threads`` identical calls at once (after :data:`GO_KEY` with ``wait_go``): each
    one's result or error and when it ended (seconds after the start)."""
    client = redis.Redis.from_url(url)
    spec = tool_spec(TOOL)
    values = spec.validate(args or {"city": "Paris"})
    cache = ToolCache(client, CacheSettings(lock_margin_s=margin_s))
    ctx = ToolContext("bench", 0, "bench", client)
    done: list[dict[str, Any]] = [{} for _ in range(threads)]
    start_at = time.time()
    if wait_go:
        client.incr(READY_KEY)
        while not client.exists(GO_KEY):
            time.sleep(0.005)
        start_at = float(client.get(GO_KEY) or start_at)

    def one(i: int) -> None:
        try:
            run = lambda: spec.invoke(values, ctx)  # noqa: E731
            result = cache.call(spec, values, DEADLINE_S, run) if cached else run()
            done[i] = {"result": result}
        except ToolError as exc:
            done[i] = {"error": str(exc)}
        done[i]["ended_s"] = time.time() - start_at

    workers = [threading.Thread(target=one, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    client.close()
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("redis_url")
    parser.add_argument("--threads", type=int, default=50)
    parser.add_argument("--sleep-s", type=float, default=0.5)
    parser.add_argument("--wait-go", action="store_true", help="start on GO_KEY")
    parser.add_argument("--margin-s", type=float, default=0.5)
    parser.add_argument("--fail", action="store_true", help="the tool raises after its sleep")
    parser.add_argument("--no-cache", action="store_true")
    options = parser.parse_args()
    _SLEEP_S[0], _FAIL[0] = options.sleep_s, options.fail
    done = calls(
        options.redis_url,
        options.threads,
        wait_go=options.wait_go,
        cached=not options.no_cache,
        margin_s=options.margin_s,
    )
    print(json.dumps(done), flush=True)


if __name__ == "__main__":
    main()
