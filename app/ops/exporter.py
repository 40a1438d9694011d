"""``agentq exporter``: the cluster's backlog and dead letters, and the rows prune passes
deleted (:mod:`app.ops.pruned`), read from Redis at scrape time.

One process serves it for the whole cluster (workers come and go; a queue's backlog is not
any one worker's). Prometheus scrapes it and KEDA's prometheus trigger scales each agent
type's workers on ``agentq_backlog{agent="..."}``, which, unlike the length of one Redis
list, counts every priority sub-list and the messages taken but not yet acknowledged, and the
parked runs whose timer or timeout has fallen due (read from the session store): with every
worker of an agent type scaled to zero, a due timer is work that must wake one. Parked runs
that are not due are not counted: they hold no worker and need none.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from app.agents.loader import load_registry
from app.agents.registry import AgentRegistry
from app.celery_ext.backlog import read_backlog
from app.config import Settings
from app.errors import AgentqError
from app.memory import waits
from app.memory.records import utc_now
from app.memory.sessions import SessionStore
from app.ops import pruned
from app.ops.http import Response, Served, json_response, serve
from app.ops.redis_clients import redis_client
from app.tasks import dead_letters as dlq

log = logging.getLogger(__name__)

METRIC_NAMES = (
    "agentq_backlog",
    "agentq_backlog_ready",
    "agentq_backlog_unacked",
    "agentq_backlog_due_waits",
    "agentq_dead_letters",
    "agentq_exporter_redis_up",
    "agentq_exporter_store_up",
    *pruned.METRIC_NAMES,
)


class BacklogCollector(Collector):
    """Every agent queue's backlog, the dead-letter count and the rows pruned, read when
    collected."""

    def __init__(
        self,
        broker: Any,
        store: Any,
        registry: AgentRegistry,
        due_waits: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.broker = broker  # the Redis holding the queues
        self.store = store  # the Redis of the dead letters and prune counts (often the same)
        self.registry = registry
        self.due_waits = due_waits  # parked runs due by agent type (the session store)

    def _due(self) -> tuple[dict[str, int], Metric]:
        """Due waits by agent type, and whether the session store could be read."""
        up = GaugeMetricFamily(
            "agentq_exporter_store_up", "1 when the last scrape could read the session store."
        )
        if self.due_waits is None:
            return {}, up
        try:
            due = self.due_waits()
        except AgentqError as exc:
            log.warning("exporter: cannot read the session store: %s", exc)
            up.add_metric([], 0.0)
            return {}, up
        up.add_metric([], 1.0)
        return due, up

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "agentq_exporter_redis_up", "1 when the last scrape could read Redis."
        )
        agents = {spec.name: spec.queue_name for spec in self.registry}
        try:
            backlog = read_backlog(self.broker, sorted(set(agents.values())))
            dead = dlq.count(self.store)
            pruned_rows = list(pruned.families(self.store))
        except redis.RedisError as exc:
            # No sample rather than a wrong one: KEDA falls back, an alert fires on redis_up.
            log.warning("exporter: cannot read Redis: %s", exc)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        due, store_up = self._due()
        yield store_up
        families = {
            "total": GaugeMetricFamily(
                "agentq_backlog",
                "Step messages of an agent queue not yet done: waiting at every priority "
                "plus taken but unacknowledged.",
                labels=["agent", "queue"],
            ),
            "ready": GaugeMetricFamily(
                "agentq_backlog_ready",
                "Step messages waiting in an agent queue's lists (every priority).",
                labels=["agent", "queue"],
            ),
            "unacked": GaugeMetricFamily(
                "agentq_backlog_unacked",
                "Step messages taken by a worker and not yet acknowledged.",
                labels=["agent", "queue"],
            ),
            "due": GaugeMetricFamily(
                "agentq_backlog_due_waits",
                "Parked runs of an agent type whose timer or timeout has fallen due (counted "
                "in agentq_backlog: a worker must wake to resume or end them).",
                labels=["agent", "queue"],
            ),
        }
        for agent, queue in sorted(agents.items()):
            b = backlog[queue]
            families["total"].add_metric([agent, queue], b.total + due.get(agent, 0))
            families["due"].add_metric([agent, queue], due.get(agent, 0))
            families["ready"].add_metric([agent, queue], b.ready)
            families["unacked"].add_metric([agent, queue], b.unacked)
        yield from families.values()
        yield GaugeMetricFamily(
            "agentq_dead_letters", "Runs in the dead-letter queue.", value=float(dead)
        )
        yield from pruned_rows


class Exporter(Served):
    """The exporter's clients, collector and HTTP server."""

    def __init__(self, settings: Settings, registry: AgentRegistry | None = None) -> None:
        timeout = settings.exporter.redis_timeout_s
        self._clients = {
            url: redis_client(settings, url, socket_timeout=timeout, socket_connect_timeout=timeout)
            for url in (settings.broker, settings.redis_url)
        }
        registry = registry if registry is not None else load_registry(settings)
        self._store: SessionStore | None = None
        self.collector = BacklogCollector(
            self._clients[settings.broker], self._clients[settings.redis_url], registry,
            self._due_waits,
        )  # fmt: skip
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.settings = settings

    def _due_waits(self) -> dict[str, int]:
        if self._store is None:
            self._store = SessionStore.from_url(self.settings.database_url, migrate=False)
        now = utc_now()
        return self._store.read(lambda conn: waits.due_by_agent(conn, now))

    def metrics(self) -> Response:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)

    def livez(self) -> Response:
        return json_response(200, {"live": True})

    def readyz(self) -> Response:
        try:
            self.collector.broker.ping()
        except redis.RedisError as exc:
            return json_response(503, {"ready": False, "detail": f"broker: {exc}"})
        return json_response(200, {"ready": True})

    def start(self, port: int | None = None) -> Exporter:
        """Serve /metrics, /livez and /readyz from a daemon thread."""
        routes = {"/metrics": self.metrics, "/livez": self.livez, "/readyz": self.readyz}
        s = self.settings.exporter
        self.server = serve(routes, s.host, s.port if port is None else port, "agentq exporter")
        return self

    def stop(self) -> None:
        self.stop_serving()
        for client in self._clients.values():
            client.close()
        if self._store is not None:
            self._store.close()


def run_exporter(settings: Settings, port: int | None = None) -> None:
    """Serve until the process is stopped (SIGTERM or Ctrl-C)."""
    exporter = Exporter(settings).start(port)
    stopped = threading.Event()
    # As a container's PID 1 the process has no default SIGTERM action: handle it explicitly.
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        exporter.stop()
