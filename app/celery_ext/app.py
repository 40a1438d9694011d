"""The Celery application: one queue per agent type, routes from the registry, JSON only."""

from __future__ import annotations

import gc

from celery import Celery
from celery.signals import worker_ready
from kombu import Exchange, Queue

from app.agents.loader import load_registry
from app.agents.registry import AgentRegistry
from app.celery_ext.context import AgentqContext, attach
from app.celery_ext.routes import AgentRouter
from app.celery_ext.transport import install as install_broker_transport
from app.celery_ext.worker import EnvelopeCheck, InternalsCheck
from app.config import Settings
from app.ops.redis_clients import celery_redis_options, sentinel_transport_options


def broker_transport_options(visibility_timeout_s: int) -> dict[str, int]:
    """Redis transport options: redeliver a lost step soon after its visibility timeout.

    kombu sweeps for expired unacked messages every ``unacked_restore_interval`` seconds but
    scans only on every ``unacked_restore_throttle``-th sweep (10 s x 10 by default), so a
    lost message would wait ~100 s beyond its timeout; sweep every quarter timeout instead.
    A sweep holds a Redis lock that expires after 300 s by default: a worker killed (or a Redis
    restarted) mid-sweep would stop every sweep that long, so it expires with the interval.
    """
    interval = max(1, min(30, visibility_timeout_s // 4))
    return {
        "visibility_timeout": visibility_timeout_s,
        "unacked_restore_interval": interval,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": interval,
    }


# A Redis restart takes seconds: a step's publishes (next step, retry) and result writes ride
# it out (~10 s each) rather than leave the step to its visibility timeout.
PUBLISH_RETRY_POLICY = {
    "max_retries": 12,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 1,
}
RESULT_BACKEND_RETRIES = 20  # exponential backoff from 10 ms, capped at 1 s, with jitter


def create_celery(settings: Settings, registry: AgentRegistry | None = None) -> Celery:
    """Build the Celery app for ``settings``; ``registry`` defaults to the one ``settings``
    name (:func:`app.agents.loader.load_registry`: included modules, entry points, agents file)."""
    registry = registry if registry is not None else load_registry(settings)
    install_broker_transport()  # kombu's Redis transport: atomic fetch, one client per channel
    app = Celery("agentq", broker=settings.broker, backend=settings.backend, set_as_current=False)
    queues = [
        Queue(spec.queue_name, Exchange(spec.queue_name, type="direct"), spec.queue_name)
        for spec in registry
    ]
    worker = settings.worker
    app.conf.update(
        # JSON only: a pickled (or any non-JSON) message is refused, never executed.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        event_serializer="json",
        task_queues=queues,
        task_routes=(AgentRouter(registry),),
        task_create_missing_queues=False,
        # A step is acknowledged only once committed; a lost worker's step comes back.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            **broker_transport_options(worker.visibility_timeout_s),
            "queued_ttl_s": settings.limits.queued_ttl_s,  # app.celery_ext.transport.Channel
            **sentinel_transport_options(settings, settings.broker),
        },
        result_backend_transport_options={
            "visibility_timeout": worker.visibility_timeout_s,
            **sentinel_transport_options(settings, settings.backend),
        },
        broker_connection_retry_on_startup=True,
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
        result_backend_always_retry=True,
        result_backend_max_retries=RESULT_BACKEND_RETRIES,
        result_backend_max_sleep_between_retries_ms=1000,
        result_expires=worker.result_expires_s,
        # Later steps' messages must not leave result keys behind: only the run id gets a
        # result (STARTED once its first step is committed, then the answer).
        result_extended=False,
        task_track_started=False,
        worker_send_task_events=worker.task_events,
        task_send_sent_event=False,
        worker_soft_shutdown_timeout=worker.soft_shutdown_timeout_s,
        worker_enable_soft_shutdown_on_idle=True,
        worker_hijack_root_logger=False,
        enable_utc=True,
        # Password and TLS for rediss:// (kept out of the URLs, so never in the banner).
        **celery_redis_options(settings),
    )
    attach(app, AgentqContext(settings, registry))
    from app.ops.health import install as install_health
    from app.tasks import register_tasks
    from app.tasks.admission import AdmissionControl
    from app.tasks.recovery import RecoveryStep
    from app.tasks.shutdown import GracefulShutdown
    from app.tasks.timers import TimerStep

    app.steps["worker"].add(InternalsCheck)  # Celery/kombu still have what the fence lists
    app.steps["worker"].add(EnvelopeCheck)  # what the fetch takes is checked, or quarantined
    app.steps["consumer"].add(AdmissionControl)
    app.steps["worker"].add(GracefulShutdown)  # SIGTERM: finish steps, hand back the rest
    app.steps["worker"].add(RecoveryStep)  # runs whose message Redis lost, published again
    app.steps["worker"].add(TimerStep)  # parked runs' timers and timeouts that fall due
    install_health(app)  # /livez /readyz /metrics of each worker (health.enabled)
    register_tasks(app)
    worker_ready.connect(_freeze_startup_objects, dispatch_uid="agentq.gc_freeze", weak=False)
    return app


def _freeze_startup_objects(**_: object) -> None:
    # What is alive once the worker is ready (modules, clients, the runtime) stays alive:
    # moved out of the collector's reach, a full collection no longer walks it. Without
    # this, each one held up every thread of the worker for 60-120 ms (bench latency p99).
    gc.freeze()
