"""Recovery: runs whose next message Redis lost are found in SQL and published again.

Every step is committed to SQL, but a run moves on only through one Redis message. A Redis
that loses writes (``FLUSHALL``, a failover to a replica that lagged, a restart without the
last second of an ``appendfsync everysec`` log) would leave such runs ``running`` forever.
A recovery pass (:meth:`Recoverer.run_once`, every ``durability.recovery_interval_s`` in
each worker, or ``agentq maintenance recover`` from a CronJob):

1. takes the pass lock (one recoverer at a time; a pass past its lock's lifetime stops);
2. reads from SQL the runs that have not moved for ``durability.recovery_grace_s``
   (:mod:`app.memory.recovery`): running runs by their last step, accepted runs not started;
3. asks Redis which of them still have their message: a later step's "published" marker
   (written in the MULTI that pushed the message, on the broker's Redis), a new run's entry
   in the queued-runs index (pushed with its message), else a scan of the agent's queue
   lists and of the unacknowledged messages for the step's task id;
4. publishes each missing message again, with its marker, in one MULTI per batch, after a
   per-step claim (``SET NX``) so that two recoverers never publish one step twice.

A message published twice all the same (a marker that expired, a worker's message on its way
back from a restart) is harmless: the step's commit guard runs a step once.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from celery import Celery

from app.agents.registry import AgentRegistry
from app.celery_ext import queued
from app.celery_ext.backlog import UNACKED_KEY, priority_lists
from app.celery_ext.context import context_of
from app.celery_ext.envelope import message_headers, reply_to_of, run_message, step_task_id
from app.config import Settings
from app.constants import KEY_PREFIX, published_key, queued_key
from app.memory.records import utc_now
from app.memory.recovery import Waiting, accepted_waiting, stalled_runs, still_waiting
from app.memory.sessions import SessionStore
from app.ops import metrics
from app.tasks.periodic import Periodic, PeriodicStep

log = logging.getLogger(__name__)

LOCK_KEY = f"{KEY_PREFIX}recovery:lock"
_SCAN_PAGE = 1_000
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"


def claim_key(task_id: str) -> str:
    """Redis key a recoverer sets (NX) before publishing the step of ``task_id`` again."""
    return f"{KEY_PREFIX}recovered:{task_id}"


@dataclass(slots=True)
class PassReport:
    """What one recovery pass found and did."""

    stalled: int = 0  # running runs that had not moved for the grace period
    waiting: int = 0  # accepted runs not started within the grace period
    lost: list[Waiting] = field(default_factory=list)  # of those, the ones with no message
    published: list[Waiting] = field(default_factory=list)  # published again by this pass
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The figures as a dict of JSON types."""
        return {
            "stalled": self.stalled,
            "waiting": self.waiting,
            "lost": len(self.lost),
            "published": [{"run_id": w.run_id, "step": w.step} for w in self.published],
            "seconds": round(self.seconds, 4),
        }


def task_id_of(waiting: Waiting) -> str:
    """The task id of the message ``waiting`` waits for (step 0's is the run id)."""
    return waiting.run_id if waiting.step == 0 else step_task_id(waiting.run_id, waiting.step)


def message_task_id(raw: bytes | str) -> str | None:
    """The task id in the headers of a queued kombu message, or of an unacknowledged one
    (``[message, exchange, routing key]``); None when it is neither."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):
            message = message[0]
        headers = message["headers"]
        return str(headers["id"]) if isinstance(headers, dict) else None
    except (ValueError, TypeError, KeyError, IndexError):
        return None


def _texts(values: Iterable[bytes | str]) -> Iterator[str]:
    for value in values:
        yield value.decode() if isinstance(value, bytes) else value


def messages_present(broker: Any, queues: Iterable[str], task_ids: set[str]) -> set[str]:
    """Which of ``task_ids`` have a message in ``queues`` (every priority list) or among the
    unacknowledged messages (taken by a worker, or waiting in one for a countdown)."""
    found: set[str] = set()
    # The needles are searched as text first: parsing every message would cost more.
    needles = {f'"{task_id}"': task_id for task_id in task_ids}

    def look(raw: bytes | str) -> None:
        text = raw.decode() if isinstance(raw, bytes) else raw
        if any(needle in text for needle in needles):
            task_id = message_task_id(text)
            if task_id in task_ids:
                found.add(task_id)

    for queue in sorted(set(queues)):
        for name in priority_lists(queue):
            start = 0
            while True:
                chunk = broker.lrange(name, start, start + _SCAN_PAGE - 1)
                for raw in chunk:
                    look(raw)
                if len(chunk) < _SCAN_PAGE:
                    break
                start += _SCAN_PAGE
    for _, raw in broker.hscan_iter(UNACKED_KEY, count=_SCAN_PAGE):
        look(raw)
    return found


class Recoverer:
    """Recovery passes over one store and one broker, publishing for ``celery``'s agents."""

    def __init__(
        self,
        celery: Celery,
        settings: Settings,
        registry: AgentRegistry,
        store: SessionStore,
        broker: Any,
    ) -> None:
        self.celery, self.settings, self.registry = celery, settings, registry
        self.store, self.broker = store, broker
        # Markers are written in the MULTI that pushes the message only when the broker is
        # the Redis they live in; elsewhere the queues are searched instead.
        self.trust_markers = settings.broker == settings.redis_url

    @classmethod
    def for_app(cls, celery: Celery, store: SessionStore) -> Recoverer:
        """A recoverer for ``celery``'s settings, agents and broker, on ``store``."""
        context = context_of(celery)
        return cls(celery, context.settings, context.registry, store, context.broker)

    def run_once(self) -> PassReport | None:
        """One pass; None when another recoverer holds the lock."""
        durability = self.settings.durability
        token = uuid.uuid4().hex
        lock_ms = int(durability.recovery_interval_s * 1000 * 2)
        if not self.broker.set(LOCK_KEY, token, nx=True, px=lock_ms):
            return None
        started = time.monotonic()
        try:
            report = self._pass(started + lock_ms / 1000 / 2)
        finally:
            self.broker.eval(_RELEASE, 1, LOCK_KEY, token)
        report.seconds = time.monotonic() - started
        for waiting in report.published:
            metrics.run_recovered(waiting.agent, "first" if waiting.step == 0 else "step")
        metrics.recovery_pass(len(report.lost), report.seconds)
        if report.published:
            log.warning(
                "recovery: published %d lost step message(s) again (%d run(s) stalled, %d "
                "accepted run(s) not started for %ss)",
                len(report.published), report.stalled, report.waiting,
                durability.recovery_grace_s,
            )  # fmt: skip
        return report

    def _pass(self, deadline: float) -> PassReport:
        durability = self.settings.durability
        before = utc_now() - timedelta(seconds=durability.recovery_grace_s)
        batch = durability.recovery_batch
        stalled = [w for w in stalled_runs(self.store, before, batch) if w.agent in self.registry]
        firsts = [
            w for w in accepted_waiting(self.store, before, batch) if w.agent in self.registry
        ]
        report = PassReport(stalled=len(stalled), waiting=len(firsts))
        unknown = self._without_marker(stalled) + self._not_indexed(firsts)
        if not unknown:
            return report
        queues = {self.registry.spec(w.agent).queue_name for w in unknown}
        present = messages_present(self.broker, queues, {task_id_of(w) for w in unknown})
        lost = [w for w in unknown if task_id_of(w) not in present]
        # Moved while Redis was read (committed, or started): not lost after all.
        report.lost = still_waiting(self.store, lost)
        if report.lost and time.monotonic() < deadline:
            report.published = self._publish(report.lost)
        return report

    def _without_marker(self, stalled: list[Waiting]) -> list[Waiting]:
        if not stalled or not self.trust_markers:
            return stalled
        with self.broker.pipeline(transaction=False) as pipe:
            for w in stalled:
                pipe.exists(published_key(w.run_id, w.step))
            marked = pipe.execute()
        return [w for w, mark in zip(stalled, marked, strict=True) if not mark]

    def _not_indexed(self, firsts: list[Waiting]) -> list[Waiting]:
        if not firsts:
            return []
        indexed: set[str] = set()
        for agent in {w.agent for w in firsts}:
            indexed.update(_texts(self.broker.lrange(queued_key(agent), 0, -1)))
        return [w for w in firsts if w.run_id not in indexed]

    def _publish(self, lost: list[Waiting]) -> list[Waiting]:
        """Publish each of ``lost``'s message again, unless another recoverer claimed it."""
        claim_s = max(1, int(self.settings.durability.recovery_grace_s))
        with self.broker.pipeline(transaction=False) as pipe:
            for w in lost:
                pipe.set(claim_key(task_id_of(w)), 1, nx=True, ex=claim_s)
            claims = pipe.execute()
        mine = [w for w, claimed in zip(lost, claims, strict=True) if claimed]
        if not mine:
            return []
        reply_to = reply_to_of(self.celery)
        marker_ttl = 2 * self.settings.worker.visibility_timeout_s
        ttl = self.settings.limits.queued_ttl_s
        with self.broker.pipeline(transaction=True) as pipe:
            for w in mine:
                queue = self.registry.spec(w.agent).queue_name
                task_id = task_id_of(w)
                first = w.step == 0
                message = run_message(
                    task_id,
                    w.kwargs,
                    queue,
                    message_headers(new_run=first),
                    reply_to=reply_to,
                    root_id=None if first else w.run_id,
                )
                pipe.lpush(queue, message)
                if first:
                    queued.add_one(pipe, w.run_id, w.kwargs, ttl)
                else:
                    pipe.set(published_key(w.run_id, w.step), 1, ex=marker_ttl)
            pipe.execute()
        return mine


class RecoveryStep(PeriodicStep):
    """Worker bootstep: run recovery passes while the worker runs (``durability.recovery``)."""

    label = "agentq recovery"

    def periodic(self, worker: Any) -> Periodic | None:
        settings = context_of(worker.app).settings
        if not settings.durability.recovery:
            return None
        app, hostname = worker.app, worker.hostname or ""

        made: list[Recoverer] = []  # at the first pass, on the worker's clients by then

        def run_pass() -> None:
            if not made:
                from app.tasks.runtime import runtime_for

                made.append(Recoverer.for_app(app, runtime_for(app, hostname).store))
            made[0].run_once()

        return Periodic("recovery pass", run_pass, settings.durability.recovery_interval_s)
