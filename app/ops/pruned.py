"""Rows ``agentq maintenance prune`` deleted, kept in Redis for ``agentq exporter``.

A pass is a job of seconds (a CronJob, workers perhaps scaled to zero): no scrape would find
its process. Each pass adds its counts to a Redis hash instead, and the exporter, which runs
all the time, serves the hash as counters (``agentq_pruned_rows_total{agent,table}``) with the
time of the last pass (``agentq_prune_last_pass_timestamp_seconds``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from app.constants import PRUNED_LAST_PASS, PRUNED_ROWS
from app.memory.retention import PruneReport
from app.ops.metrics import label

METRIC_NAMES: Final = ("agentq_pruned_rows", "agentq_prune_last_pass_timestamp_seconds")


def record_pass(client: Any, report: PruneReport, at: float) -> None:
    """Add ``report``'s rows to the counts in Redis and set the last pass to ``at`` (Unix
    time), in one transaction. A dry run records nothing."""
    if report.dry_run:
        return
    pipe = client.pipeline(transaction=True)
    for (agent, table), rows in sorted(report.rows.items()):
        pipe.hincrby(PRUNED_ROWS, json.dumps([agent, table]), rows)
    pipe.set(PRUNED_LAST_PASS, repr(at))
    pipe.execute()


def read_counts(client: Any) -> tuple[dict[tuple[str, str], int], float | None]:
    """(agent, table) -> rows pruned so far, and the Unix time of the last pass (None: none
    yet); one round trip."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(PRUNED_ROWS)
    pipe.get(PRUNED_LAST_PASS)
    raw, last = pipe.execute()
    counts = {}
    for field, value in raw.items():
        agent, table = json.loads(field)
        counts[(str(agent), str(table))] = int(value)
    return counts, None if last is None else float(last)


def families(client: Any) -> Iterator[Metric]:
    """The two metric families, read from Redis now (raises RedisError when it cannot)."""
    counts, last = read_counts(client)
    rows = CounterMetricFamily(
        "agentq_pruned_rows",
        "Rows `agentq maintenance prune` deleted from the session store, by agent type (whose "
        "retention removed them) and table.",
        labels=["agent", "table"],
    )
    for (agent, table), value in sorted(counts.items()):
        rows.add_metric([label(agent), table], value)
    yield rows
    if last is not None:
        yield GaugeMetricFamily(
            "agentq_prune_last_pass_timestamp_seconds",
            "Unix time the last prune pass finished.",
            value=last,
        )
