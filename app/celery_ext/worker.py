"""Reads and writes of a running Celery worker's own state, beyond Celery's public API."""

from __future__ import annotations

import ctypes
import logging
import sys
from typing import Any

from celery import Celery, bootsteps
from celery.utils.nodenames import host_format
from celery.worker import state

from app.celery_ext import check_internals
from app.celery_ext.context import context_of
from app.celery_ext.intake import Intake
from app.celery_ext.transport import IntakeRules, check_envelopes
from app.errors import CeleryInternalsError

log = logging.getLogger(__name__)


class InternalsCheck(bootsteps.Step):  # type: ignore[misc]
    """Worker bootstep: stop at start, with one line, when the installed Celery or kombu
    lacks a private name agentq relies on (:func:`app.celery_ext.check_internals`)."""

    label = "agentq internals check"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        try:
            check_internals()
        except CeleryInternalsError as exc:
            raise SystemExit(f"agentq: {exc}") from None  # one line, no traceback


class EnvelopeCheck(bootsteps.Step):  # type: ignore[misc]
    """Worker bootstep: check each message the worker fetches against the envelope schema,
    with the app's tasks and the worker's limits; quarantine under the worker's node name."""

    label = "agentq envelope check"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        settings = context_of(worker.app).settings.worker
        intake = Intake(
            tasks=worker.app.tasks,
            headers_max_chars=settings.envelope_headers_max_bytes,
            body_max_chars=settings.envelope_body_max_bytes,
        )
        check_envelopes(IntakeRules(intake, worker.hostname, settings.quarantine_keep_bytes))


def requeue_unacknowledged() -> int:
    """Put every message this worker holds unacknowledged (steps in flight, retries waiting
    for their countdown) back on its queue at once; how many went back."""
    requests = [*state.active_requests, *state.reserved_requests]
    handed = 0
    for request in {id(r): r for r in requests}.values():
        if request.acknowledged:
            continue
        try:
            # Straight to the broker: Celery's own reject is queued for the event loop,
            # which no longer runs once a warm shutdown has begun.
            request.message.reject(requeue=True)
            request.acknowledged = True  # the step's thread must not ack it when it ends
            handed += 1
        except Exception as exc:  # the message comes back after its visibility timeout
            log.error("could not hand back step %s: %s", request.id, exc)
    return handed


def delivery_tag(task: Any) -> str | None:
    """The delivery tag of the message ``task`` is running (None: run eagerly, or no tag)."""
    request = task.request
    if request.is_eager:
        return None
    tag = (getattr(request, "properties", None) or {}).get("delivery_tag")
    return tag if isinstance(tag, str) else None


def consumed_queues(app: Celery) -> set[str]:
    """The queues this worker was started to consume (``-Q``)."""
    return set(app.amqp.queues.consume_from or {})


def node_name(template: str) -> str:
    """A worker's node name from ``template``, ``%h`` (host), ``%n`` and ``%d`` expanded as
    ``celery worker -n`` expands them."""
    return str(host_format(template))


M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def cap_malloc_arenas(arenas: int) -> bool:
    """Let this process's malloc use at most ``arenas`` arenas (0: leave glibc's default);
    whether it took effect (not where the C library is not glibc)."""
    if arenas <= 0:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no dlopen of the process, or no mallopt (musl)
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))


def build_worker(
    app: Celery,
    *,
    queues: list[str],
    pool: str,
    concurrency: int,
    hostname: str,
    loglevel: str,
    quiet: bool = False,
) -> Any:
    """The worker ``celery worker -Q QUEUES -P POOL -c CONCURRENCY -n HOSTNAME -l LOGLEVEL
    --without-mingle --without-gossip`` builds, built directly (``app.Worker``): Celery's
    command line would first import all its commands and its plugins' (Flower, a REPL),
    about a second of a cold start."""
    return app.Worker(
        hostname=hostname,
        pool=pool,
        concurrency=concurrency,
        queues=queues,
        loglevel=loglevel.upper(),
        quiet=quiet,
        optimization="default",
        without_mingle=True,
        without_gossip=True,
    )


def run_worker(worker: Any) -> tuple[int, str | None]:
    """Run ``worker`` (:func:`build_worker`) until it stops: its exit code and, when an error
    stopped it, that error in one line."""
    # Before the pool's threads allocate: each would otherwise keep an arena of its own.
    cap_malloc_arenas(context_of(worker.app).settings.worker.malloc_arenas)
    fatal = _LastCritical()
    celery_log = logging.getLogger("celery")  # Celery's loggers all hang below it
    celery_log.addHandler(fatal)
    try:
        worker.start()
    finally:
        celery_log.removeHandler(fatal)
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__  # Celery sent them to its log
    code = worker.exitcode
    if not isinstance(code, int):  # SystemExit("why") stops a worker with a text
        code = 1 if code else 0
    return code, fatal.reason


class _LastCritical(logging.Handler):
    """Keeps the first line of the last CRITICAL record (Celery's "Unrecoverable error")."""

    def __init__(self) -> None:
        super().__init__(logging.CRITICAL)
        self.reason: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.reason = record.getMessage().strip().splitlines()[0]
