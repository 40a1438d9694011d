"""The measurements behind ``bench.inference``: each takes its services as arguments."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from celery.utils.serialization import bytes_to_str

from app.celery_ext.backlog import UNACKED_KEY  # messages delivered to a worker, not acknowledged
from app.config import Settings
from app.config.paths import shipped_path
from app.inference.backend import ChatRequest
from app.inference.templates import LINES, load_template
from app.inference.triton import build_inputs
from app.producer.submit import submit, submit_many
from app.tasks.relay import TOKEN

BENCH_MODELS = ("ensemble", "ensemble_stream")
READY = {"SUCCESS", "FAILURE", "REVOKED"}


class BenchError(RuntimeError):
    """Raised when a measurement cannot be made (a model config without the expected field)."""


# ---- the bench's copy of the model repository ----


# The scripted model's scheduling parameter (models/scripted/ensemble/1/model.py).
INFLIGHT, BATCH = "inflight", "batch"
SCHEDULING = (INFLIGHT, BATCH)


def _parameter(name: str) -> str:
    return rf'(key:\s*"{name}"\s*value:\s*\{{\s*string_value:\s*)"[^"]*"'


def edit_config(text: str, delay_ms: int, max_batch_size: int, scheduling: str) -> str:
    """``config.pbtxt`` text with ``max_batch_size`` and the ``delay_ms`` and ``scheduling``
    parameters replaced."""
    text, batch = re.subn(
        r"^max_batch_size:\s*\d+", f"max_batch_size: {max_batch_size}", text, flags=re.M
    )
    text, delay = re.subn(_parameter("delay_ms"), rf'\1"{delay_ms}"', text)
    text, mode = re.subn(_parameter("scheduling"), rf'\1"{scheduling}"', text)
    if (batch, delay, mode) != (1, 1, 1):
        raise BenchError(
            "expected one max_batch_size, delay_ms and scheduling, "
            f"found {batch}, {delay} and {mode}"
        )
    return text


def bench_repository(
    source: Path, dest: Path, delay_ms: int, max_batch_size: int, scheduling: str = INFLIGHT
) -> Path:
    """A copy of ``source`` whose bench models have the given delay, batch size and
    scheduling (``inflight`` by default: a fixed per-call latency)."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"))
    for model in BENCH_MODELS:
        config = dest / model / "config.pbtxt"
        config.write_text(edit_config(config.read_text(), delay_ms, max_batch_size, scheduling))
    return dest


_COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
)
# A sample line of Triton's exposition: name{model="...",...} value
_SAMPLE = re.compile(r'^(nv_inference_\w+)\{model="([^"]*)"[^}]*\}\s+(\S+)$', re.MULTILINE)


def scrape(metrics_url: str, model: str) -> dict[str, float]:
    """Triton's cumulative counters of ``model``."""
    with urllib.request.urlopen(metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    return {
        name: float(value)
        for name, label, value in _SAMPLE.findall(text)
        if label == model and name in _COUNTERS
    }


def server_view(before: dict[str, float], after: dict[str, float], wall_s: float) -> dict[str, Any]:
    """Requests, mean batch, mean requests inside the server and mean queue wait in a window."""
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in _COUNTERS}
    requests = delta["nv_inference_request_success"]
    execs = delta["nv_inference_exec_count"]
    return {
        "requests": int(requests),
        "mean_batch": round(delta["nv_inference_count"] / execs, 1) if execs else None,
        # Little's law: total time requests spent in the server over the window's length.
        "mean_in_server": round(delta["nv_inference_request_duration_us"] / 1e6 / wall_s, 1)
        if wall_s > 0
        else None,
        "mean_queue_ms": round(delta["nv_inference_queue_duration_us"] / 1e3 / requests, 1)
        if requests
        else None,
    }


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) with linear interpolation; None when there are no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


# ---- (a) tritonclient directly ----


@dataclass
class Throughput:
    """Calls finished in a timed window."""

    calls: int
    wall_s: float
    failed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def per_s(self) -> float:
        return self.calls / self.wall_s if self.wall_s > 0 else 0.0


Probe = Callable[[], dict[str, float]]


async def _direct(
    url: str, model: str, request: ChatRequest, concurrency: int, calls: int, probe: Probe
) -> Throughput:
    from tritonclient.grpc.aio import InferenceServerClient

    client = InferenceServerClient(url)
    prompt, params = rendered(request, model), request.params
    latencies: list[float] = []
    failed = 0
    left = 0

    async def one() -> None:
        nonlocal failed
        started = time.perf_counter()
        try:
            await client.infer(model, build_inputs(prompt, params))
        except Exception:  # counted, and reported beside the figure
            failed += 1
        latencies.append(time.perf_counter() - started)

    async def lane() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one()

    try:
        # Warm-up: the channel is connected and each lane's first call is not timed.
        await asyncio.gather(*(one() for _ in range(concurrency)))
        latencies.clear()
        failed, left = 0, calls
        before = probe()
        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        seen = server_view(before, probe(), wall)
    finally:
        await client.close()
    extra = {
        "p50_ms": _ms(percentile(latencies, 0.5)),
        "p99_ms": _ms(percentile(latencies, 0.99)),
        "server": seen,
    }
    return Throughput(calls - failed, wall, failed, extra)


def rendered(request: ChatRequest, model: str) -> str:
    """``request`` as a worker renders it for ``model``: with the model's chat template
    (``AGENTQ_TRITON__CHAT_TEMPLATES``), else as lines."""
    spec = Settings().triton.chat_templates.get(model, LINES)
    return load_template(spec, shipped_path).render(request)


def direct_calls(
    url: str, model: str, request: ChatRequest, concurrency: int, calls: int, probe: Probe
) -> Throughput:
    """``calls`` unary calls of ``request`` (rendered as the worker renders it for Triton) to
    ``model`` from ``concurrency`` coroutines on one aio client, timed after a warm-up call
    per coroutine; ``probe`` reads Triton's counters at the window's edges."""
    return asyncio.run(_direct(url, model, request, concurrency, calls, probe))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


# ---- (b) agent runs through Redis and worker processes ----


class ResultWatch:
    """Runs whose result is ready, from the result backend's PUBLISH of each result (no polling).

    Subscribe before submitting: results published meanwhile wait on the socket.
    """

    def __init__(self, celery: Celery, client: redis.Redis) -> None:
        self.prefix = bytes_to_str(celery.backend.task_keyprefix)
        self.pubsub = client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe(self.prefix + "*")

    def wait(self, ids: set[str], timeout_s: float) -> dict[str, str]:
        """State of each of ``ids`` once all are ready, or those ready when the timeout passes."""
        states: dict[str, str] = {}
        deadline = time.monotonic() + timeout_s
        while len(states) < len(ids):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            msg = self.pubsub.get_message(timeout=min(left, 1.0))
            if msg is None or msg["type"] != "pmessage":
                continue
            run_id = bytes_to_str(msg["channel"])[len(self.prefix) :]
            status = json.loads(msg["data"]).get("status")
            if run_id in ids and status in READY:
                states[run_id] = status
        return states

    def close(self) -> None:
        self.pubsub.close()


class HeldSampler:
    """Mean number of step messages the workers hold (delivered, not yet acknowledged).

    Reads kombu's Redis transport bookkeeping (the ``unacked`` hash) every ``interval_s``
    from a thread of its own: below C x processes, the workers are not fed fast enough.
    """

    def __init__(self, client: redis.Redis, interval_s: float = 0.1) -> None:
        self.client, self.interval_s = client, interval_s
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-held", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append(int(self.client.hlen(UNACKED_KEY)))

    def __enter__(self) -> HeldSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def agent_runs(
    celery: Celery,
    client: redis.Redis,
    agent: str,
    text: str,
    calls: int,
    timeout_s: float,
    probe: Probe | None = None,
) -> Throughput:
    """Submit ``calls`` runs at once and time them from the submit to the last result."""
    watch = ResultWatch(celery, client)
    try:
        ids = [str(uuid.uuid4()) for _ in range(calls)]
        runs = [{"agent": agent, "input": text, "run_id": run_id} for run_id in ids]
        before = probe() if probe else {}
        with HeldSampler(client) as held:
            started = time.perf_counter()
            submit_many(runs, celery=celery)
            submitted = time.perf_counter() - started
            states = watch.wait(set(ids), timeout_s)
            wall = time.perf_counter() - started
        after = probe() if probe else {}
    finally:
        watch.close()
    ok = sum(1 for s in states.values() if s == "SUCCESS")
    extra: dict[str, Any] = {
        "submit_s": round(submitted, 3),
        "unfinished": calls - len(states),
        "mean_held_by_workers": held.mean,
    }
    if probe:
        extra["server"] = server_view(before, after, wall)
    return Throughput(ok, wall, len(states) - ok, extra)


# ---- streaming: relay overhead from the worker's write to the producer's read ----


@dataclass
class StreamOverhead:
    """Per token: the producer's clock when it saw the event minus the worker's write time."""

    runs: int = 0
    failed: int = 0
    first_ms: list[float] = field(default_factory=list)
    all_ms: list[float] = field(default_factory=list)
    # Split at the entry id's Redis time (ms resolution): worker -> Redis, Redis -> reader.
    write_ms: list[float] = field(default_factory=list)
    read_ms: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def summary(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 3)

        return {
            "runs": self.runs,
            "failed": self.failed,
            "tokens": len(self.all_ms),
            "first_token_p50_ms": r(percentile(self.first_ms, 0.5)),
            "first_token_p99_ms": r(percentile(self.first_ms, 0.99)),
            "all_tokens_p50_ms": r(percentile(self.all_ms, 0.5)),
            "all_tokens_p99_ms": r(percentile(self.all_ms, 0.99)),
            "split_note": "at the stream entry id's Redis time, 1 ms resolution",
            "worker_to_redis_p50_ms": r(percentile(self.write_ms, 0.5)),
            "worker_to_redis_p99_ms": r(percentile(self.write_ms, 0.99)),
            "redis_to_reader_p50_ms": r(percentile(self.read_ms, 0.5)),
            "redis_to_reader_p99_ms": r(percentile(self.read_ms, 0.99)),
        }


def _one_streamed(celery: Celery, agent: str, text: str, out: StreamOverhead | None) -> None:
    result = submit(agent, text, stream=True, celery=celery)
    first: float | None = None
    seen: list[float] = []
    written: list[float] = []
    read: list[float] = []
    status = None
    for event in result.events(timeout=60):
        now = time.time_ns()
        if event.kind == TOKEN:
            overhead = (now - event.ts_ns) / 1e6
            first = overhead if first is None else first
            seen.append(overhead)
            stored_ms = int(event.id.split("-", 1)[0])
            written.append(stored_ms - event.ts_ns / 1e6)
            read.append(now / 1e6 - stored_ms)
        elif event.kind == "end":
            status = (event.data or {}).get("status")
    if out is None:
        return
    with out.lock:
        out.runs += 1
        if status != "succeeded" or first is None:
            out.failed += 1
            return
        out.first_ms.append(first)
        out.all_ms.extend(seen)
        out.write_ms.extend(written)
        out.read_ms.extend(read)


def streamed_runs(
    celery: Celery, agent: str, text: str, runs: int, concurrency: int
) -> StreamOverhead:
    """``runs`` streamed runs, ``concurrency`` at a time, each read by its own thread."""
    out = StreamOverhead()
    pool = ThreadPoolExecutor(concurrency)
    try:
        # Warm-up: one run per thread opens its connections; not counted.
        list(pool.map(lambda _: _one_streamed(celery, agent, text, None), range(concurrency)))
        list(pool.map(lambda _: _one_streamed(celery, agent, text, out), range(runs)))
    finally:
        pool.shutdown(cancel_futures=True)  # on Ctrl-C, runs not started are not waited for
    return out
