"""Several replicas behind one InferenceBackend: choice by strategy, retries, circuit breakers.

A call goes to a replica chosen by the agent's strategy
(:func:`app.inference.strategies.choose_replica`) among those whose breaker is closed. A
retryable failure (the replica did not serve the call) counts against its breaker and the call
is tried again on another replica after an exponential, jittered backoff, within the call's
deadline and ``attempts``; a call its run cancelled (ModelCallCancelledError) is neither retried
nor held against its replica's breaker. When no replica is left the pool raises at once: the
Celery task retries the step later instead of a thread spinning here. A background thread
scrapes each replica's load (queue depth, running requests, KV-cache use:
:mod:`app.inference.engine_metrics`) and probes open breakers' readiness
(``/v2/health/ready`` for Triton) before they close. The ``prefix`` strategy looks the
request's conversation up in a :class:`~app.inference.prefix.PrefixIndex` before the choice
and records it for the chosen replica after. ``models``, the models its agents use, are
what readiness asks for: a model is missing when no ready replica has it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Collection, Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeVar

from app.config import InferenceSettings, Strategy
from app.errors import (
    InferenceError,
    InferenceUnavailableError,
    ModelCallCancelledError,
    NoReplicaAvailableError,
)
from app.inference.backend import (
    ChatRequest,
    Completion,
    Delta,
    InferenceBackend,
    Route,
    Versioned,
)
from app.inference.breaker import CircuitBreaker
from app.inference.cancel import check
from app.inference.engine_metrics import parse_engine_metrics
from app.inference.prefix import PrefixIndex, chain_hashes
from app.inference.strategies import ReplicaView, choose_replica
from app.ops import metrics

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)
T = TypeVar("T")

_SCRAPE_TIMEOUT_S = 1.0


def error_kind(exc: BaseException) -> str:
    """A model call failure as a metric label: the replica did not serve it, or the model
    answered with an error, or its run cancelled it, or something else broke."""
    if isinstance(exc, InferenceUnavailableError):
        return "unavailable"
    if isinstance(exc, ModelCallCancelledError):
        return "cancelled"
    if isinstance(exc, InferenceError):
        return "model_error"
    return "other"


def backoff_delay(attempt: int, base_s: float, cap_s: float, rand: float) -> float:
    """Delay before try ``attempt + 1``: ``base * 2**attempt`` capped, with full jitter."""
    return rand * min(cap_s, base_s * 2.0**attempt)


@dataclass
class Replica:
    """One model server and what the pool knows of it (guarded by the pool's lock)."""

    name: str
    backend: InferenceBackend
    breaker: CircuitBreaker
    weight: float = 1.0
    health_url: str | None = None
    metrics_url: str | None = None
    in_flight: int = 0
    served: int = 0
    failures: int = 0
    queue_depth: float | None = None
    running: float | None = None
    kv_cache_usage: float | None = None

    def view(self, prefix_match: float = 0.0, held: float | None = None) -> ReplicaView:
        return ReplicaView(
            self.name,
            self.weight,
            self.in_flight,
            self.served,
            self.queue_depth,
            self.running,
            self.kv_cache_usage,
            prefix_match,
            held,
        )


@dataclass(frozen=True)
class ReplicaStatus:
    """A replica as operators and admission control see it."""

    name: str
    ready: bool  # breaker closed
    in_flight: int
    served: int
    failures: int
    queue_depth: float | None
    running: float | None = None  # requests running at the server (scraped)
    kv_cache_usage: float | None = None  # share of its KV cache in use (scraped)


class ReplicaPool:
    """An :class:`InferenceBackend` over ``replicas``; safe to call from many threads."""

    def __init__(
        self,
        replicas: Sequence[Replica],
        settings: InferenceSettings,
        *,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        kind: str = "triton",
        models: Collection[str] = (),
        prefix: PrefixIndex | None = None,
    ) -> None:
        if not replicas:
            raise ValueError("a replica pool needs at least one replica")
        self.replicas = list(replicas)
        self.kind = kind  # backend kind, the metrics' ``backend`` label
        self.models = frozenset(models)  # the models its agents use
        # Where conversations were sent (strategy prefix); this process's own unless given.
        self.prefix = prefix or PrefixIndex(
            None, kind, ttl_s=settings.prefix_ttl_s, max_blocks=settings.prefix_max_blocks
        )
        self.settings = settings
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._ticket = 0  # calls so far, for round robin
        self._rng = random.Random()
        self._own_http = http is None
        self._http = http  # built on the first probe or scrape (an echo pool makes none)
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # ---- choosing and accounting ----

    def _acquire(
        self, route: Route, avoid: Sequence[str], request: ChatRequest | None
    ) -> Replica | None:
        s = self.settings
        strategy = Strategy(route.strategy or s.strategy)
        hashes: list[str] = []
        matched: dict[str, float] = {}
        held: dict[str, int] = {}
        if strategy is Strategy.PREFIX and request is not None:
            hashes = chain_hashes(request, s.prefix_block_chars)
            # The lookup is I/O: outside the lock.
            counts, held = self.prefix.lookup(hashes, [r.name for r in self.replicas])
            if hashes:
                matched = {name: n / len(hashes) for name, n in counts.items()}
        with self._lock:
            ready = [r for r in self.replicas if r.breaker.closed]
            fresh = [r for r in ready if r.name not in avoid]
            candidates = fresh or ready
            self._ticket += 1
            index = choose_replica(
                strategy,
                [r.view(matched.get(r.name, 0.0), held.get(r.name)) for r in candidates],
                ticket=self._ticket,
                rand=self._rng.random(),
                session_id=route.session_id,
                scorers=s.scorers,
                max_imbalance=s.prefix_max_imbalance,
            )
            if index is None:
                return None
            replica = candidates[index]
            replica.in_flight += 1
            replica.served += 1
        if hashes:
            self.prefix.record(hashes, replica.name)
        return replica

    def _release(self, replica: Replica, *, available: bool | None) -> None:
        """The call left ``replica``: it served it (``available``), did not, or None: the
        call says nothing of the replica (its run cancelled it)."""
        with self._lock:
            replica.in_flight -= 1
            if available is None:
                return
            if available:
                replica.breaker.record_success()
                return
            replica.failures += 1
            if replica.breaker.record_failure(self._clock()):
                log.warning("replica %s: circuit breaker opened", replica.name)

    def _acquire_or_probe(
        self, route: Route, avoid: Sequence[str], request: ChatRequest | None
    ) -> Replica:
        replica = self._acquire(route, avoid, request)
        if replica is None:
            # Every breaker is open: probe the ones due now rather than wait for the poller.
            self.probe_due()
            replica = self._acquire(route, avoid, request)
        if replica is None:
            raise NoReplicaAvailableError(f"no model replica is available: {self._describe()}")
        return replica

    def _describe(self) -> str:
        return ", ".join(
            f"{s.name} ({'ready' if s.ready else 'circuit open'})" for s in self.status()
        )

    def _observe(self, replica: Replica, started: float, exc: BaseException | None) -> None:
        seconds = time.perf_counter() - started
        metrics.model_call(
            self.kind, replica.name, seconds, None if exc is None else error_kind(exc)
        )

    def _retry_pause(self, attempt: int, deadline: float) -> None:
        s = self.settings
        delay = backoff_delay(attempt, s.backoff_s, s.backoff_max_s, self._rng.random())
        self._sleep(max(0.0, min(delay, deadline - self._clock())))

    def _with_retries(
        self,
        route: Route,
        timeout_s: float | None,
        call: Callable[[Replica, float], T],
        *,
        request: ChatRequest | None = None,
        hold: bool = False,
        cancel: threading.Event | None = None,
    ) -> T:
        """``call`` on a chosen replica, retried on others; ``hold`` keeps it acquired on success
        (the caller releases it). ``request`` is what the prefix strategy places; ``cancel``
        set stops the tries."""
        deadline = self._clock() + (timeout_s or self.settings.deadline_s)
        tried: list[str] = []
        last: InferenceUnavailableError | None = None
        for attempt in range(self.settings.attempts):
            check(cancel, "the replica pool")
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            replica = self._acquire_or_probe(route, tried, request)
            started = time.perf_counter()
            try:
                result = call(replica, remaining)
            except BaseException as exc:
                self._observe(replica, started, exc)
                if isinstance(exc, ModelCallCancelledError):
                    self._release(replica, available=None)
                    raise
                if not isinstance(exc, InferenceUnavailableError):
                    self._release(replica, available=True)  # the replica answered (model error)
                    raise
                self._release(replica, available=False)
                last = exc
                tried.append(replica.name)
                if attempt + 1 < self.settings.attempts:
                    self._retry_pause(attempt, deadline)
                continue
            if not hold:
                self._observe(replica, started, None)
                self._release(replica, available=True)
            return result
        raise InferenceUnavailableError(
            f"model call failed on {', '.join(tried) or 'no replica'} "
            f"within {self.settings.attempts} tries: {last}"
        )

    # ---- InferenceBackend ----

    def generate(
        self,
        request: ChatRequest,
        *,
        route: Route | None = None,
        timeout_s: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Completion:
        """One reply from a replica chosen by ``route.strategy``, retried on another on failure
        (not once ``cancel`` is set: ModelCallCancelledError)."""
        return self._with_retries(
            route or Route(),
            timeout_s,
            lambda replica, remaining: replica.backend.generate(
                request, timeout_s=remaining, cancel=cancel
            ),
            request=request,
            cancel=cancel,
        )

    def stream(
        self,
        request: ChatRequest,
        *,
        route: Route | None = None,
        timeout_s: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[Delta]:
        """Pieces of one reply. Retried on another replica only until the first piece arrives
        (not once ``cancel`` is set). Read it to the end or close it: either frees the
        replica."""

        def first_piece(
            replica: Replica, remaining: float
        ) -> tuple[Replica, Iterator[Delta], Delta | None, float]:
            started = time.perf_counter()
            pieces = replica.backend.stream(request, timeout_s=remaining, cancel=cancel)
            try:
                return replica, pieces, next(pieces, None), started
            except BaseException:
                _close(pieces)
                raise

        # Once the first piece is in, the rest of the stream is the caller's to read: a failure
        # then is not retried here (the pieces are out), and the replica stays counted in flight.
        replica, pieces, first, started = self._with_retries(
            route or Route(), timeout_s, first_piece, request=request, hold=True, cancel=cancel
        )
        return _HeldStream(
            self._rest(replica, first, pieces, started), self._ended(replica, pieces)
        )

    def _rest(
        self, replica: Replica, first: Delta | None, pieces: Iterator[Delta], started: float
    ) -> Generator[Delta, None, None]:
        failure: BaseException | None = None
        try:
            if first is not None:
                yield replace(first, replica=replica.name)
            yield from pieces
        except GeneratorExit:
            raise  # the reader stopped early: not the replica's failure
        except BaseException as exc:
            failure = exc
            raise
        finally:
            _close(pieces)
            self._observe(replica, started, failure)
            self._release(replica, available=_served(failure))

    def _ended(self, replica: Replica, pieces: Iterator[Delta]) -> Callable[[], None]:
        """What closing an unread stream owes: the server's stream closed (the request
        cancelled), the call no longer in flight on its replica."""

        def end() -> None:
            _close(pieces)
            self._release(replica, available=True)

        return end

    def cache_identity(self, request: ChatRequest) -> tuple[str, str]:
        """What identifies ``request``'s reply (the replicas serve the same models):
        :class:`ValueError` when the replicas cannot say."""
        backend = self.replicas[0].backend
        if not isinstance(backend, Versioned):
            raise ValueError(f"{self.kind} replicas cannot identify a request")
        return backend.cache_identity(request)

    def model_version(self, request: ChatRequest) -> str | None:
        """Every version the replicas serve (``|``-joined: while a new version rolls out the
        value changes); None when one does not say."""
        versions = set()
        for replica in self.replicas:
            backend = replica.backend
            version = backend.model_version(request) if isinstance(backend, Versioned) else None
            if version is None:
                return None
            versions.add(version)
        return "|".join(sorted(versions))

    def health(self) -> bool:
        """True when at least one replica's breaker is closed and it answers ready."""
        return any(r.breaker.closed and self._ready(r) for r in self.replicas)

    def missing_models(self, models: Collection[str] | None = None) -> list[str]:
        """Those of ``models`` (default: :attr:`models`) that no replica with a closed breaker
        has ready, sorted; every one of them when no replica answers."""
        wanted = sorted(self.models if models is None else set(models))
        if not wanted:
            return []
        with self._lock:
            closed = [r for r in self.replicas if r.breaker.closed]
        missing = set(wanted)
        for replica in closed:
            missing &= set(replica.backend.missing_models(wanted))
            if not missing:
                break
        return sorted(missing)

    def close(self) -> None:
        """Stop the poller and close every replica's client and the prefix index's."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
        for replica in self.replicas:
            replica.backend.close()
        if self._own_http and self._http is not None:
            self._http.close()
        self.prefix.close()

    # ---- observing replicas ----

    def status(self) -> list[ReplicaStatus]:
        """Every replica's readiness, load, queue depth and scraped engine load."""
        with self._lock:
            return [
                ReplicaStatus(
                    r.name,
                    r.breaker.closed,
                    r.in_flight,
                    r.served,
                    r.failures,
                    r.queue_depth,
                    r.running,
                    r.kv_cache_usage,
                )
                for r in self.replicas
            ]

    def readiness(self) -> dict[str, bool]:
        """Each replica: its breaker is closed and it answers ready now (probes every such
        replica; the health endpoints cache the answer)."""
        with self._lock:
            closed = {r.name: r.breaker.closed for r in self.replicas}
        return {r.name: closed[r.name] and self._ready(r) for r in self.replicas}

    def _ready(self, replica: Replica) -> bool:
        if replica.health_url is None:
            return replica.backend.health()
        resp = self._get(replica.health_url)
        return resp is not None and resp.status_code == 200

    def _get(self, url: str) -> httpx.Response | None:
        """``GET url`` with the pool's scrape client; None when it failed."""
        import httpx

        with self._lock:
            if self._http is None:
                self._http = httpx.Client(timeout=_SCRAPE_TIMEOUT_S)
            client = self._http
        try:
            return client.get(url)
        except httpx.HTTPError:
            return None

    def probe_due(self) -> None:
        """Probe the readiness of each replica whose breaker's cooldown is over."""
        now = self._clock()
        with self._lock:
            due = [r for r in self.replicas if r.breaker.probe_due(now)]
        for replica in due:
            ready = self._ready(replica)
            with self._lock:
                replica.breaker.record_probe(ready, self._clock())
            if ready:
                log.warning("replica %s: ready again, circuit breaker closed", replica.name)

    def scrape(self) -> None:
        """Read each replica's queue depth, running requests and KV-cache use from its
        metrics endpoint (None when unreadable or not exported)."""
        for replica in self.replicas:
            if replica.metrics_url is None:
                continue
            resp = self._get(replica.metrics_url)
            load = None
            if resp is not None and resp.status_code == 200:
                load = parse_engine_metrics(resp.text)
            with self._lock:
                replica.queue_depth = load.waiting if load else None
                replica.running = load.running if load else None
                replica.kv_cache_usage = load.kv_cache_usage if load else None

    def start(self) -> ReplicaPool:
        """Scrape metrics and probe open breakers every ``metrics_interval_s`` in a thread."""
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll, name="agentq-replicas", daemon=True)
            self._poller.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.scrape()
                self.probe_due()
            except Exception:  # the poller must outlive any one bad scrape
                log.exception("replica poller")
            self._stop.wait(self.settings.metrics_interval_s)


class _HeldStream(Iterator[Delta]):
    """The rest of a stream whose replica the pool holds in flight: released when it is read
    to its end, fails or is closed, closed before its first read included (a generator's
    ``finally`` does not run when it is closed unstarted)."""

    def __init__(self, pieces: Generator[Delta, None, None], unread: Callable[[], None]) -> None:
        self._pieces = pieces
        self._unread: Callable[[], None] | None = unread

    def __next__(self) -> Delta:
        self._unread = None  # from now on the generator's finally releases the replica
        return next(self._pieces)

    def close(self) -> None:
        """Stop reading: the server is told (its pieces are closed) and the replica freed."""
        unread, self._unread = self._unread, None
        self._pieces.close()
        if unread is not None:
            unread()


def _served(failure: BaseException | None) -> bool | None:
    """What a call's end says of its replica: it served the call (or answered with an error),
    it did not, or nothing (the run cancelled the call)."""
    if isinstance(failure, ModelCallCancelledError):
        return None
    return not isinstance(failure, InferenceUnavailableError)


def _close(pieces: Iterator[Delta]) -> None:
    close = getattr(pieces, "close", None)
    if close is not None:
        close()
