"""A worker's HTTP endpoints: ``/livez`` (heartbeat), ``/readyz`` (dependencies), ``/metrics``.

``/livez`` fails when the worker is wedged, not when a dependency is down: when the consumer's
event loop has not stamped its heartbeat for ``heartbeat_misses`` intervals, or a step has
run longer than ``worker.step_timeout_s`` plus a grace. While the consumer (re)connects to
the broker the heartbeat is paused, not stale: a Redis outage is a readiness matter.
``/readyz`` pings the broker and the session store and asks whether at least one model
replica of each backend is ready and has every model the worker's agents use (the body's
``missing_models`` names those it lacks, by backend) and, when its agents declare MCP servers,
whether each is connected (the ``mcp_servers`` check names those that are not, and tries them
again); each check has a short deadline and results are reused for ``health.cache_s``. Both
answer 200 or 503 with a JSON body saying which check failed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from celery import Celery, bootsteps
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app.agents.registry import AgentSpec
from app.celery_ext.context import context_of
from app.celery_ext.worker import consumed_queues
from app.config import Settings
from app.inference.factory import agent_models
from app.ops import metrics
from app.ops.http import Response, Served, json_response, serve
from app.ops.masking import mask_text
from app.ops.redis_clients import redis_client

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's outcome; ``replicas`` maps replica -> ready for the replica checks, and
    ``missing_models`` names the agents' models no ready replica has."""

    ok: bool
    detail: str
    replicas: Mapping[str, bool] = field(default_factory=dict)
    missing_models: tuple[str, ...] = ()


# ---- liveness (pure) ----


def liveness(
    now: float,
    last_beat: float | None,
    interval_s: float,
    misses: int,
    steps: Sequence[metrics.StepInFlight],
    step_limit_s: float,
) -> dict[str, CheckResult]:
    """The heartbeat and in-flight step checks at ``now`` (monotonic seconds).

    ``last_beat`` None: the consumer is (re)connecting, so there is no loop to judge.
    """
    if last_beat is None:
        beat = CheckResult(True, "consumer is (re)connecting to the broker; heartbeat paused")
    else:
        age = now - last_beat
        stale = age > interval_s * misses
        beat = CheckResult(
            not stale,
            f"event loop last beat {age:.1f} s ago"
            + (f" (limit {interval_s * misses:.0f} s): the loop is wedged" if stale else ""),
        )
    if not steps:
        return {"heartbeat": beat, "steps": CheckResult(True, "no step in flight")}
    oldest = min(steps, key=lambda s: s.started)
    age = now - oldest.started
    stuck = age > step_limit_s
    detail = f"{len(steps)} step(s) in flight, oldest ({oldest.agent}) running {age:.1f} s"
    if stuck:
        detail += f", over the {step_limit_s:.0f} s limit: a step is wedged"
    return {"heartbeat": beat, "steps": CheckResult(not stuck, detail)}


class Heartbeat:
    """The consumer's event loop stamps it; None while the consumer is not running."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.last: float | None = None

    def beat(self) -> None:
        self.last = self._clock()

    def pause(self) -> None:
        self.last = None


# ---- readiness ----


class Checks:
    """Named checks run in parallel, each within ``timeout_s``, results reused ``cache_s``.

    A check still running from an earlier call (a hung connection) is not started again; it
    reports a timeout until it returns, so a dead dependency cannot pile up threads.
    """

    def __init__(
        self,
        checks: Mapping[str, Callable[[], CheckResult]],
        timeout_s: float,
        cache_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._checks = dict(checks)
        self._timeout_s = timeout_s
        self._cache_s = cache_s
        self._clock = clock
        self._pool = ThreadPoolExecutor(max(1, len(checks)), thread_name_prefix="agentq-health")
        self._running: dict[str, Future[CheckResult]] = {}
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, CheckResult]] | None = None

    def results(self) -> dict[str, CheckResult]:
        """Every check's latest result (run now unless the cached one is fresh)."""
        with self._lock:
            if self._cached is not None and self._clock() - self._cached[0] < self._cache_s:
                return self._cached[1]
            for name, check in self._checks.items():
                running = self._running.get(name)
                if running is None or running.done():
                    self._running[name] = self._pool.submit(_guarded, check)
            deadline = self._clock() + self._timeout_s
            results: dict[str, CheckResult] = {}
            for name, future in self._running.items():
                try:
                    results[name] = future.result(timeout=max(0.0, deadline - self._clock()))
                except FutureTimeout:
                    results[name] = CheckResult(False, f"no answer within {self._timeout_s:g} s")
            self._cached = (self._clock(), results)
            return results

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _guarded(check: Callable[[], CheckResult]) -> CheckResult:
    try:
        return check()
    except Exception as exc:  # a failing dependency is the check's answer, not a crash
        return CheckResult(False, mask_text(f"{type(exc).__name__}: {exc}", limit=300))


def redis_check(client: Any) -> Callable[[], CheckResult]:
    """PING ``client`` (built with short socket timeouts)."""

    def check() -> CheckResult:
        client.ping()
        return CheckResult(True, "PING answered")

    return check


def redis_checks(settings: Settings) -> tuple[list[Any], dict[str, Callable[[], CheckResult]]]:
    """Clients (short timeouts, no retry; close them) and PING checks of the broker and, when
    it is another server, the Redis of streams and state."""
    timeout = settings.health.check_timeout_s
    clients = [
        redis_client(
            settings, url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=None
        )
        for url in dict.fromkeys([settings.broker, settings.redis_url])
    ]
    checks: dict[str, Callable[[], CheckResult]] = {"broker": redis_check(clients[0])}
    if len(clients) > 1:
        checks["redis"] = redis_check(clients[1])
    return clients, checks


def replica_result(ready: Mapping[str, bool], missing_models: Sequence[str] = ()) -> CheckResult:
    """At least one replica ready, and no model missing (pure)."""
    up = [name for name, ok in ready.items() if ok]
    down = [name for name, ok in ready.items() if not ok]
    detail = f"ready: {', '.join(up) or 'none'}; not ready: {', '.join(down) or 'none'}"
    if missing_models:
        detail += f"; missing models: {', '.join(missing_models)}"
    ok = bool(up) and not missing_models
    return CheckResult(ok, detail, dict(ready), tuple(missing_models))


# ---- the worker's endpoints ----


class WorkerHealth(Served):
    """Heartbeat, checks and HTTP server of one worker process."""

    def __init__(self, app: Celery, settings: Settings, hostname: str = "") -> None:
        self.app = app
        self.settings = settings
        self.hostname = hostname
        self.heartbeat = Heartbeat()
        timeout = settings.health.check_timeout_s
        self._clients, checks = redis_checks(settings)
        checks["session_store"] = self._store_check
        checks.update({f"replicas.{kind}": self._replica_check(kind) for kind in self._kinds()})
        if any(s.mcp_servers for s in self._specs()):
            checks["mcp_servers"] = self._mcp_check
        self.checks = Checks(checks, timeout, settings.health.cache_s)

    def _specs(self) -> list[AgentSpec]:
        """The agent types this worker consumes (all of them before ``-Q``)."""
        consumed = consumed_queues(self.app)
        specs = context_of(self.app).registry
        return [s for s in specs if not consumed or s.queue_name in consumed]

    def _kinds(self) -> list[str]:
        """Backends of the agent types this worker consumes."""
        return sorted({s.backend for s in self._specs()})

    def _models(self, kind: str) -> frozenset[str]:
        """The models of backend ``kind`` the agent types this worker consumes use."""
        pairs = ((s.backend, s.model) for s in self._specs())
        return agent_models(self.settings, pairs).get(kind, frozenset())

    def _runtime(self) -> Any:
        from app.tasks.runtime import runtime_for

        return runtime_for(self.app, self.hostname)  # built here if the worker has not yet

    def _store_check(self) -> CheckResult:
        self._runtime().store.ping()
        return CheckResult(True, "SELECT 1 answered")

    def _mcp_check(self) -> CheckResult:
        pool = self._runtime().runner.tools.mcp
        down = pool.unreachable() if pool is not None else {"all": "no MCP pool"}
        if down:
            # Masked: a reason may quote a URL with credentials in it.
            reasons = "; ".join(f"{name} ({error})" for name, error in down.items())
            return CheckResult(False, mask_text(f"unreachable: {reasons}", limit=300))
        return CheckResult(True, "every MCP server connected")

    def _replica_check(self, kind: str) -> Callable[[], CheckResult]:
        def check() -> CheckResult:
            pool = self._runtime().pools.get(kind)
            if pool is None:
                return CheckResult(False, f"no {kind} replicas configured")
            # Replicas by host:port only: an OpenAI-compatible URL may carry credentials.
            ready = pool.readiness()
            # With no replica up, every model would read as missing: that says nothing more.
            missing = pool.missing_models(self._models(kind)) if any(ready.values()) else []
            labels = {metrics.replica_label(n): ok for n, ok in ready.items()}
            return replica_result(labels, missing)

        return check

    def live(self) -> dict[str, CheckResult]:
        s = self.settings
        return liveness(
            time.monotonic(),
            self.heartbeat.last,
            s.health.heartbeat_interval_s,
            s.health.heartbeat_misses,
            metrics.steps_in_flight(),
            s.worker.step_timeout_s + s.health.step_grace_s,
        )

    def livez(self) -> Response:
        return _verdict("live", self.live())

    def readyz(self) -> Response:
        return _verdict("ready", self.checks.results())

    def metrics_page(self) -> Response:
        body, content_type = metrics.exposition(
            self.settings.prometheus_multiproc_dir, [WorkerCollector(self)]
        )
        return 200, content_type, body

    def start(self) -> WorkerHealth:
        """Serve the endpoints from a daemon thread."""
        h = self.settings.health
        routes = {"/livez": self.livez, "/readyz": self.readyz, "/metrics": self.metrics_page}
        self.server = serve(routes, h.host, h.port, "agentq health", fallback=True)
        return self

    def stop(self) -> None:
        self.stop_serving()
        self.checks.close()
        for client in self._clients:
            client.close()


def _verdict(key: str, results: Mapping[str, CheckResult]) -> Response:
    ok = all(r.ok for r in results.values())
    checks = {name: {"ok": r.ok, "detail": r.detail} for name, r in results.items()}
    body: dict[str, Any] = {key: ok, "checks": checks}
    missing = {
        name.removeprefix("replicas."): list(r.missing_models)
        for name, r in results.items()
        if r.missing_models
    }
    if missing:
        body["missing_models"] = missing  # backend -> models no ready replica has
    return json_response(200 if ok else 503, body)


class WorkerCollector(Collector):
    """Scrape-time gauges: replica readiness, worker readiness and liveness."""

    def __init__(self, health: WorkerHealth) -> None:
        self.health = health

    def collect(self) -> Iterator[GaugeMetricFamily]:
        results = self.health.checks.results()
        replicas = GaugeMetricFamily(
            "agentq_replica_ready",
            "1 when a model replica answers ready and its breaker is closed (this worker's view).",
            labels=["backend", "replica"],
        )
        for name, result in results.items():
            if name.startswith("replicas."):
                kind = name.split(".", 1)[1]
                for replica, ready in result.replicas.items():
                    replicas.add_metric([kind, replica], float(ready))
        yield replicas
        yield GaugeMetricFamily(
            "agentq_worker_ready",
            "1 when every readiness check of this worker passes.",
            value=float(all(r.ok for r in results.values())),
        )
        yield GaugeMetricFamily(
            "agentq_worker_live",
            "1 when this worker's event loop beats and no step is wedged.",
            value=float(all(r.ok for r in self.health.live().values())),
        )


COLLECTOR_NAMES = ("agentq_replica_ready", "agentq_worker_ready", "agentq_worker_live")


# ---- bootsteps ----


class HealthServer(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: serve the endpoints before the consumer connects (so /livez answers
    while the broker is unreachable)."""

    def __init__(self, w: Any, **kwargs: Any) -> None:
        super().__init__(w, **kwargs)
        self.health: WorkerHealth | None = None

    def start(self, w: Any) -> None:
        context = context_of(w.app)
        if not context.settings.health.enabled:
            return
        self.health = WorkerHealth(w.app, context.settings, w.hostname or "").start()
        context.health = self.health

    def stop(self, w: Any) -> None:
        if self.health is not None:
            self.health.stop()
            self.health = None
            context = context_of(w.app)
            context.health = None
            metrics.process_exited(context.settings.prometheus_multiproc_dir, os.getpid())

    shutdown = stop


class HeartbeatStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer bootstep: stamp the heartbeat every interval from the worker's event loop
    (``hub``); without an event loop, from the worker's timer thread."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.tref: Any = None

    def start(self, c: Any) -> None:
        health = context_of(c.app).health
        if health is None:
            return
        interval = health.settings.health.heartbeat_interval_s
        health.heartbeat.beat()
        timer = c.hub if c.hub is not None else c.timer
        self.tref = timer.call_repeatedly(interval, health.heartbeat.beat)

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
        health = context_of(c.app).health
        if health is not None:
            health.heartbeat.pause()  # reconnecting or shutting down: not a wedged loop

    shutdown = stop


def install(app: Celery) -> None:
    """Add the health bootsteps to ``app`` (they do nothing when ``health.enabled`` is off)."""
    app.steps["worker"].add(HealthServer)
    app.steps["consumer"].add(HeartbeatStep)
