"""Routing bench: multi-turn sessions on two llama.cpp replicas, every strategy in one run.

Each session is an agent run as the model server sees it: a shared system prompt, then one
turn per step that re-sends the whole conversation grown by the step's tool result (a user
turn) and the model's reply. The replicas are two llama-cpp-python OpenAI servers
(:class:`app.local.llama_server.LlamaServer`, SmolLM2-135M-Instruct) with their prompt cache
on: a turn that lands where its session's previous turn was processed only evaluates the new
tokens; elsewhere it evaluates whatever that replica's cache does not hold. The cache is sized
(``cache_mib``) to hold about half the sessions' conversations, as a GPU's KV cache holds a
share of the sessions in flight: keeping a session on one replica is then what keeps its
prefix cached.

The callers are two processes, each a :class:`~app.inference.pool.ReplicaPool` over both
replicas driving half the sessions on threads (a worker process's pool, without Celery
around it: the routing is what is measured, and two full workers would take the CPU the
engines need on a 2-core machine). The prefix index is shared through a Redis the bench
starts. Per strategy, every session runs all its turns; each strategy gets its own system
prompt so no strategy reuses another's cache.

Figures per strategy: time to first token (p50/p95), turn latency, turns/s and runs/s
(sessions finished per second of the strategy's wall time), prompt tokens the engines
evaluated and reused (from their logs), and how often a turn stayed on its session's
previous replica. ``agentq bench routing`` or ``python -m bench.routing``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from app.config import REPO_ROOT, InferenceSettings, Strategy, child_env
from app.errors import AgentqError
from app.inference.backend import ChatRequest, Delta, GenerationParams, Message, Route
from app.inference.breaker import CircuitBreaker
from app.inference.openai_compat import OpenAICompatBackend
from app.inference.pool import Replica, ReplicaPool
from app.inference.prefix import PrefixIndex
from app.local.llama_server import LlamaServer
from app.local.redis import RedisServer
from bench.measure import percentile
from bench.plots import finish
from bench.report import environment, write

MODEL = "smollm2"
# Round robin and the cache-aware ones first and side by side: on a shared machine the load
# drifts over a run, least between neighbours.
STRATEGIES = ["round_robin", "prefix", "session_affinity"]
STRATEGIES += [s.value for s in Strategy if s.value not in STRATEGIES]
PROCESSES = 2
TARGET_TTFT_SPEEDUP = 2.0  # p50 TTFT of round robin over the best cache-aware strategy's
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "routing.json"
SYSTEM = (
    "You are the data-quality agent of a retail company. Each step you receive the result "
    "of the check you asked for, as rows of the table it ran on, and you answer with the "
    "next check to run, in one short line. Checks you may ask for: count rows, count "
    "nulls per column, compare totals with yesterday, list duplicate ids, sample ten rows."
)
_PROMPT_EVAL = re.compile(r"prompt eval time =\s*[\d.]+ ms /\s*(\d+) tokens")
_PREFIX_HIT = re.compile(r"(\d+) prefix-match hit")


@dataclass(frozen=True)
class Plan:
    """What one run measures."""

    sessions: int = 6
    turns: int = 6
    max_tokens: int = 2
    cache_mib: int | None = None  # None: about half the sessions' last prompts
    strategies: tuple[str, ...] = tuple(STRATEGIES)
    tool_ms: int = 1000  # each step's tool time between turns, up to this (varies per step)

    def cache_bytes(self) -> int:
        """Each replica's prompt cache: ``cache_mib``, else room for the states of about
        half the sessions at their last turn (SmolLM2-135M keeps 23 KiB of KV per token)."""
        if self.cache_mib is not None:
            return self.cache_mib << 20
        last = len(SYSTEM) + sum(len(tool_result(0, t)) + 16 for t in range(self.turns))
        tokens = last // 3 + 64
        return (self.sessions // 2) * (tokens * 23 * 1024 + (1 << 20))


@dataclass(frozen=True)
class TurnRecord:
    """One turn as a caller saw it."""

    session: int
    turn: int
    replica: str
    ttft_s: float
    latency_s: float
    error: str | None = None


def tool_result(session: int, turn: int) -> str:
    """The user turn of a step: the result of the check the model asked for (unique)."""
    rows = "; ".join(
        f"id={session * 1000 + turn * 10 + r}, amount={(session * 37 + turn * 11 + r) % 500}, "
        f"region=r{(session + r) % 7}"
        for r in range(2)
    )
    return f"Result of check {turn} on table orders_{session}: {rows}."


class _Tagged(OpenAICompatBackend):
    """An OpenAI client that notes, per thread, which replica it streamed from."""

    local = threading.local()

    def stream(self, request: ChatRequest, **kwargs: Any) -> Any:
        _Tagged.local.replica = self.base_url
        return super().stream(request, **kwargs)


def tool_seconds(session: int, turn: int, most_ms: int) -> float:
    """A step's tool time: spread over 0..``most_ms`` by session and turn, the same for every
    strategy, so that sessions do not advance in lockstep."""
    return ((session * 7919 + turn * 104729) % 1000) / 1000 * most_ms / 1000


def _session(
    pool: ReplicaPool, plan: Plan, system: str, strategy: str, session: int
) -> list[TurnRecord]:
    messages = [Message("system", system)]
    records = []
    for turn in range(plan.turns):
        time.sleep(tool_seconds(session, turn, plan.tool_ms))
        messages.append(Message("user", tool_result(session, turn)))
        request = ChatRequest(
            tuple(messages), GenerationParams(plan.max_tokens, temperature=0.0, random_seed=1)
        )
        started = time.perf_counter()
        try:
            pieces = pool.stream(request, route=Route(f"s{session}", strategy))
            first: Delta | None = next(pieces, None)
            ttft = time.perf_counter() - started
            text = (first.text if first else "") + "".join(d.text for d in pieces)
        except AgentqError as exc:
            records.append(TurnRecord(session, turn, "", 0.0, 0.0, str(exc)))
            return records
        records.append(
            TurnRecord(session, turn, _Tagged.local.replica, ttft, time.perf_counter() - started)
        )
        messages.append(Message("assistant", text))
    return records


def drive(
    urls: Sequence[str],
    redis_url: str,
    plan: Plan,
    system: str,
    strategy: str,
    sessions: Sequence[int],
    start_at: float,
) -> list[dict[str, Any]]:
    """One caller process: a pool over ``urls`` running ``sessions`` side by side from
    ``start_at`` (wall clock, so both processes start together); the turns' records."""
    import redis

    settings = InferenceSettings(strategy=Strategy(strategy), deadline_s=600)
    replicas = [Replica(u, _Tagged(u, MODEL, timeout_s=600), CircuitBreaker(3, 5)) for u in urls]
    index = PrefixIndex(redis.Redis.from_url(redis_url), "openai")
    pool = ReplicaPool(replicas, settings, kind="openai", prefix=index)
    results: dict[int, list[TurnRecord]] = {}
    threads = [
        threading.Thread(
            target=lambda s=s: results.__setitem__(s, _session(pool, plan, system, strategy, s))
        )
        for s in sessions
    ]
    time.sleep(max(0.0, start_at - time.time()))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pool.close()
    return [asdict(r) for s in sessions for r in results.get(s, [])]


def engine_tokens(log: str) -> dict[str, int]:
    """Prompt tokens a llama-cpp-python server evaluated and reused, from its verbose log."""
    return {
        "evaluated": sum(int(n) for n in _PROMPT_EVAL.findall(log)),
        "reused": sum(int(n) for n in _PREFIX_HIT.findall(log)),
    }


def summarise(records: Sequence[dict[str, Any]], wall_s: float, turns: int) -> dict[str, Any]:
    """A strategy's figures from its turns' records (``turns``: of a whole run)."""
    ok = [r for r in records if r["error"] is None]
    ttft = [r["ttft_s"] for r in ok]
    latency = [r["latency_s"] for r in ok]
    by_session: dict[int, list[dict[str, Any]]] = {}
    for r in sorted(ok, key=lambda r: (r["session"], r["turn"])):
        by_session.setdefault(r["session"], []).append(r)
    pairs = [(a, b) for turns in by_session.values() for a, b in itertools.pairwise(turns)]
    stayed = sum(a["replica"] == b["replica"] for a, b in pairs)
    per_replica: dict[str, int] = {}
    for r in ok:
        per_replica[r["replica"]] = per_replica.get(r["replica"], 0) + 1

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 1)

    finished = sum(1 for done in by_session.values() if len(done) == turns)
    return {
        "turns": len(ok),
        "failed": len(records) - len(ok),
        "wall_s": round(wall_s, 2),
        "ttft_p50_ms": ms(percentile(ttft, 0.5)),
        "ttft_p95_ms": ms(percentile(ttft, 0.95)),
        "latency_p50_ms": ms(percentile(latency, 0.5)),
        "turns_per_s": round(len(ok) / wall_s, 3) if wall_s > 0 else None,
        "runs": finished,
        "runs_per_s": round(finished / wall_s, 4) if wall_s > 0 else None,
        "stayed_on_replica": round(stayed / len(pairs), 3) if pairs else None,
        "turns_per_replica": sorted(per_replica.values(), reverse=True),
    }


def run(plan: Plan, console: Console) -> dict[str, Any]:
    """Start Redis and the two replicas, run every strategy; the report's measurements."""
    import redis

    rows: dict[str, Any] = {}
    with ExitStack() as stack:
        redis_server = RedisServer()
        stack.callback(redis_server.cleanup)
        redis_server.start()
        client = redis.Redis.from_url(redis_server.url)
        stack.callback(client.close)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agentq-routing-")))
        env = child_env(
            {
                "CACHE_SIZE": str(plan.cache_bytes()),
            }
        )
        servers = [
            LlamaServer(alias=MODEL, n_threads=1, cache=True, log_path=tmp / f"r{i}.log", env=env)
            for i in range(2)
        ]
        with console.status("starting two llama-cpp-python servers (prompt cache on)"):
            for server in servers:
                stack.callback(server.stop)
                server.start()
        console.print(
            f"[green]✓[/green] replicas {', '.join(s.base_url for s in servers)} "
            f"(pids {', '.join(str(s.pid) for s in servers)}), "
            f"prompt cache {plan.cache_bytes() >> 20} MiB each"
        )
        urls = [s.base_url for s in servers]
        executor = stack.enter_context(
            ProcessPoolExecutor(max_workers=PROCESSES, mp_context=get_context("spawn"))
        )
        # Warm-up: the callers' imports and each server's first call (its pages of the model).
        list(executor.map(_noop, range(PROCESSES)))
        _warm(urls)
        for strategy in plan.strategies:
            client.flushdb()
            offsets = [s.log_path.stat().st_size for s in servers]
            system = f"Bench pass of {strategy}. {SYSTEM}"
            parts = [list(range(p, plan.sessions, PROCESSES)) for p in range(PROCESSES)]
            load = os.getloadavg()[0]
            start_at = time.time() + 1.0
            with console.status(f"{strategy}: {plan.sessions} sessions x {plan.turns} turns"):
                futures = [
                    executor.submit(
                        drive, urls, redis_server.url, plan, system, strategy, part, start_at
                    )
                    for part in parts
                ]
                records = [r for f in futures for r in f.result()]
            wall = time.time() - start_at
            tokens = {"evaluated": 0, "reused": 0}
            for server, offset in zip(servers, offsets, strict=True):
                with server.log_path.open("rb") as f:
                    f.seek(offset)
                    found = engine_tokens(f.read().decode(errors="replace"))
                for key in tokens:
                    tokens[key] += found[key]
            row = {**summarise(records, wall, plan.turns), "prompt_tokens": tokens}
            row["load_average_at_start"] = round(load, 2)
            rows[strategy] = row
            console.print(_line(strategy, row))
    return {"strategies": rows}


def _noop(_: int) -> None:
    import app.inference.pool  # noqa: F401  (the callers' imports, before the clock runs)


def _warm(urls: Sequence[str]) -> None:
    for url in urls:
        backend = OpenAICompatBackend(url, MODEL, timeout_s=120)
        backend.generate(ChatRequest.of_prompt("Hello.", GenerationParams(2)))
        backend.close()


def _line(strategy: str, row: dict[str, Any]) -> str:
    failed = f", [red]{row['failed']} failed[/red]" if row["failed"] else ""
    return (
        f"  {strategy:<16} TTFT p50 {row['ttft_p50_ms']} ms / p95 {row['ttft_p95_ms']} ms, "
        f"{row['turns_per_s']} turns/s, evaluated {row['prompt_tokens']['evaluated']} "
        f"prompt tokens, stayed {row['stayed_on_replica']}{failed}"
    )


CACHE_AWARE = ("prefix", "session_affinity")


def verdict(rows: dict[str, Any]) -> dict[str, Any]:
    """The issue's target: the better cache-aware strategy's p50 TTFT at least
    ``TARGET_TTFT_SPEEDUP`` times lower than round robin's, and more runs/s."""
    rr = rows.get("round_robin")
    aware = [rows[s] for s in CACHE_AWARE if s in rows and rows[s]["ttft_p50_ms"]]
    if not rr or not aware or not rr["ttft_p50_ms"]:
        return {"ttft_speedup": None, "runs_per_s_gain": None, "met": None}
    best = min(aware, key=lambda r: r["ttft_p50_ms"])
    speedup = round(rr["ttft_p50_ms"] / best["ttft_p50_ms"], 2)
    gain = round(best["runs_per_s"] / rr["runs_per_s"], 2) if rr["runs_per_s"] else None
    return {
        "ttft_speedup": speedup,
        "runs_per_s_gain": gain,
        "met": speedup >= TARGET_TTFT_SPEEDUP and gain is not None and gain > 1,
    }


def show(report: dict[str, Any], console: Console) -> None:
    """The table of every strategy and the target."""
    plan = report["plan"]
    table = Table(
        title=f"{plan['sessions']} sessions x {plan['turns']} turns, 2 llama.cpp replicas "
        f"(prompt cache {report['cache_mib']} MiB each), {PROCESSES} caller processes"
    )
    columns = ("strategy", "TTFT p50 ms", "TTFT p95 ms", "turn p50 ms", "turns/s", "runs/s",
               "prompt tokens evaluated", "reused", "stayed", "turns per replica")  # fmt: skip
    for name in columns:
        table.add_column(name, justify="left" if name == "strategy" else "right")
    for strategy, row in report["strategies"].items():
        table.add_row(
            strategy + (f" [red]({row['failed']} failed)[/red]" if row["failed"] else ""),
            str(row["ttft_p50_ms"]),
            str(row["ttft_p95_ms"]),
            str(row["latency_p50_ms"]),
            str(row["turns_per_s"]),
            str(row["runs_per_s"]),
            f"{row['prompt_tokens']['evaluated']:,}",
            f"{row['prompt_tokens']['reused']:,}",
            f"{row['stayed_on_replica']:.0%}" if row["stayed_on_replica"] is not None else "—",
            "/".join(str(n) for n in row["turns_per_replica"]),
        )
    console.print(table)
    v = report["target"]
    if v["ttft_speedup"] is not None:
        mark = "[green]✓[/green]" if v["met"] else "[red]✗[/red]"
        console.print(
            f"{mark} best cache-aware strategy vs round robin: p50 TTFT {v['ttft_speedup']}x "
            f"lower (target ≥ {TARGET_TTFT_SPEEDUP:g}x), runs/s x{v['runs_per_s_gain']}"
        )


def plot(report: dict[str, Any], path: Path) -> Path:
    """TTFT p50/p95 and turns/s per strategy (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["strategies"]
    names = list(rows)
    x = range(len(names))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    try:
        p50 = [rows[n]["ttft_p50_ms"] or 0 for n in names]
        p95 = [rows[n]["ttft_p95_ms"] or 0 for n in names]
        left.bar([i - 0.2 for i in x], p50, width=0.4, label="p50", color="#1f77b4")
        left.bar([i + 0.2 for i in x], p95, width=0.4, label="p95", color="#aec7e8")
        left.set_title("time to first token (ms, lower is better)")
        left.legend(fontsize=8)
        right.bar(list(x), [rows[n]["turns_per_s"] or 0 for n in names], color="#ff7f0e")
        right.set_title("turns/s (higher is better)")
        for ax in (left, right):
            ax.set_xticks(list(x), names, rotation=30, ha="right", fontsize=8)
        machine = report.get("machine", {})
        return finish(
            fig,
            path,
            f"{machine.get('cpu_model')}, {machine.get('cpu_count')} cores, "
            f"{report.get('date', '')} (shared machine: compare strategies, not absolutes)",
        )
    finally:
        plt.close(fig)


def main(plan: Plan, out: str | None, console: Console) -> int:
    """Run the bench; print the table, write the JSON and the PNG beside it (exit code)."""
    unknown = sorted(set(plan.strategies) - set(STRATEGIES))
    if unknown or plan.sessions < PROCESSES or plan.turns < 2 or plan.max_tokens < 1:
        console.print(
            f"[red]strategies must be among {', '.join(STRATEGIES)}; at least {PROCESSES} "
            "sessions, 2 turns and 1 token[/red]"
        )
        return 2
    started = time.monotonic()
    try:
        measured = run(plan, console)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; every process the bench started is stopped[/yellow]")
        return 130
    except AgentqError as exc:
        console.print(f"[red]bench failed:[/red] {exc}")
        return 1
    report = {
        "bench": "routing",
        "plan": {**asdict(plan), "strategies": list(plan.strategies)},
        "cache_mib": plan.cache_bytes() >> 20,
        "replicas": "2 x llama-cpp-python server, SmolLM2-135M-Instruct Q4_1, 1 thread each",
        "callers": f"{PROCESSES} processes, each a ReplicaPool driving half the sessions",
        **measured,
        "target": verdict(measured["strategies"]),
        **environment(REPO_ROOT),
        "duration_s": round(time.monotonic() - started, 1),
    }
    show(report, console)
    path = Path(out) if out else DEFAULT_OUT
    write(report, path)
    png = plot(report, path.with_suffix(".png"))
    console.print(f"bench took {report['duration_s']:.0f} s; results in {path}, plot in {png}")
    return 1 if any(r["failed"] for r in report["strategies"].values()) else 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__)
    parser.add_argument("--sessions", type=int, default=Plan.sessions)
    parser.add_argument("--turns", type=int, default=Plan.turns)
    parser.add_argument("--max-tokens", type=int, default=Plan.max_tokens)
    parser.add_argument("--cache-mib", type=int, default=None, help="default: half the sessions")
    parser.add_argument("--tool-ms", type=int, default=Plan.tool_ms)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--out", default=None, help=f"JSON results (default {DEFAULT_OUT})")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse(None)
    chosen = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
    plan = Plan(args.sessions, args.turns, args.max_tokens, args.cache_mib, chosen, args.tool_ms)
    sys.exit(main(plan, args.out, Console()))
