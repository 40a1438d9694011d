"""The backlog metric counts every priority sub-list and the unacked messages of a queue.

Runs are enqueued at mixed priorities on a real Redis, a few are taken and held unacked by a
kombu consumer (as a worker in the middle of a step holds them), and ``agentq exporter``,
a real process, is scraped over HTTP.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.celery_ext.backlog import priority_lists
from app.config import Settings, child_env, settings_env
from app.constants import TASK_RUN_AGENT
from app.errors import LocalServiceError
from app.local.processes import free_port, log_tail, stop_process, wait_until
from app.local.redis import RedisServer
from app.tasks import dead_letters as dlq

pytestmark = pytest.mark.integration

QUEUE = "agent.research"
PRIORITIES = {0: 4, 3: 3, 6: 5, 9: 2}  # priority -> runs enqueued at it


@contextmanager
def exporter(settings: Settings, log_dir: Path) -> Iterator[str]:
    """``agentq exporter`` on a free port; yields its /metrics URL; stopped by PID after."""
    port = free_port()
    log = log_dir / f"exporter-{port}.log"
    env = child_env({**settings_env(settings), "PYTHONUNBUFFERED": "1"})
    args = [sys.executable, "-m", "app.cli", "exporter", "--port", str(port)]
    with log.open("ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{base}/livez", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        if not wait_until(answers, 30, proc):
            raise LocalServiceError(f"exporter did not start:\n{log_tail(log)}")
        yield f"{base}/metrics"
    finally:
        code = stop_process(proc)
    # SIGTERM must stop it cleanly: in a pod it is PID 1, which has no default SIGTERM action.
    assert code == 0, log_tail(log)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page: (name, sorted labels) -> value."""
    text = httpx.get(url, timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def gauge(samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_backlog_counts_every_priority_and_the_unacked_while_llen_does_not(
    celery_app, settings, redis_client, tmp_path
) -> None:
    task = celery_app.tasks[TASK_RUN_AGENT]
    for priority, count in PRIORITIES.items():
        for i in range(count):
            task.apply_async(
                kwargs={"agent": "research", "input": f"p{priority} #{i}"},
                queue=QUEUE,
                priority=priority,
            )
    enqueued = sum(PRIORITIES.values())
    # kombu keeps priority > 0 messages in sub-lists of their own.
    lists = priority_lists(QUEUE)
    assert [redis_client.llen(name) for name in lists] == [4, 3, 5, 2]

    held = 3
    with celery_app.connection_for_read() as conn:
        channel = conn.default_channel
        taken = [channel.basic_get(QUEUE, no_ack=False) for _ in range(held)]
        assert all(m is not None for m in taken)
        assert redis_client.hlen("unacked") == held  # delivered, not acknowledged

        with exporter(settings, tmp_path) as url:
            samples = scrape(url)
        labels = {"agent": "research", "queue": QUEUE}
        assert gauge(samples, "agentq_backlog", **labels) == enqueued
        assert gauge(samples, "agentq_backlog_ready", **labels) == enqueued - held
        assert gauge(samples, "agentq_backlog_unacked", **labels) == held
        assert gauge(samples, "agentq_backlog", agent="coder", queue="agent.coder") == 0
        assert gauge(samples, "agentq_dead_letters") == dlq.count(redis_client)
        assert gauge(samples, "agentq_exporter_redis_up") == 1
        # What KEDA's redis trigger reads: one list, far from the truth.
        assert redis_client.llen(QUEUE) == PRIORITIES[0] - held
        assert redis_client.llen(QUEUE) != enqueued
    # The consumer went away without acking: kombu put its messages back; none was lost.
    assert sum(redis_client.llen(name) for name in lists) == enqueued


def test_the_exporter_reports_redis_down_instead_of_a_wrong_backlog(tmp_path, sqlite_url) -> None:
    with RedisServer() as server:
        settings = Settings(_env_file=None, redis_url=server.url, database_url=sqlite_url)
        with exporter(settings, tmp_path) as url:
            assert gauge(scrape(url), "agentq_exporter_redis_up") == 1
            server.stop()
            samples = scrape(url)
            assert gauge(samples, "agentq_exporter_redis_up") == 0
            assert not any(name == "agentq_backlog" for name, _ in samples)
            server.start()
            assert gauge(scrape(url), "agentq_exporter_redis_up") == 1
