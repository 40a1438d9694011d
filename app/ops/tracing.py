"""OpenTelemetry spans of a run: ``agentq.submit`` → ``agentq.step`` (one per step, each the
parent of the next) → ``agentq.model_call`` and ``agentq.tool_call``.

The trace context travels in the step messages' headers (W3C ``traceparent``), so a run is one
trace across the producer and every worker that runs one of its steps. Tracing is off by default
(``AGENTQ_TRACING__EXPORTER=none``): then every helper here is a no-op and this module never
imports OpenTelemetry (the ``[otel]`` extra).

    with tracing.span("agentq.tool_call", tool="calculator") as span:
        ...
        span.set(cache_hit=True)
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager, contextmanager
from typing import IO, Any, TypeVar

from celery.exceptions import Ignore, Reject, Retry

from app.config import TracingSettings
from app.errors import ConfigurationError

# How a step hands its message back to Celery: not an error of the step.
_CONTROL_FLOW = (Ignore, Reject, Retry)
_HEADERS = ("traceparent", "tracestate")


class _NoSpan(AbstractContextManager["_NoSpan"]):
    """What :func:`span` returns while tracing is off: does nothing, costs nothing."""

    def __exit__(self, *exc: object) -> None:
        return None

    def set(self, **attrs: Any) -> None:
        """Add attributes to the span (here: none)."""


NO_SPAN = _NoSpan()


class _Span:
    """A live span as the code sees it: only attributes can be added."""

    __slots__ = ("_span",)

    def __init__(self, span: Any) -> None:
        self._span = span

    def set(self, **attrs: Any) -> None:
        """Add attributes (``agentq.<name>``; None values are left out)."""
        self._span.set_attributes(_attributes(attrs))


class _Tracing:
    """The tracer of this process and what exports its spans."""

    def __init__(self, settings: TracingSettings, exporter: Any = None) -> None:
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
            from opentelemetry.trace import SpanKind, Status, StatusCode
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError as exc:
            raise ConfigurationError(
                f"AGENTQ_TRACING__EXPORTER={settings.exporter} needs OpenTelemetry: "
                "install agentq[otel] (or set the exporter to none)"
            ) from exc
        self._file: IO[str] | None = None
        if exporter is not None:
            processor: Any = SimpleSpanProcessor(exporter)
        elif settings.exporter == "console":
            # Synchronous: the console exporter is for debugging and tests, where a span
            # should be readable the moment it ends.
            processor = SimpleSpanProcessor(self._console_exporter(settings))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint))
        resource = Resource.create({"service.name": settings.service_name})
        # A provider of our own rather than the global one, which can be set only once per
        # process; spans still join the caller's current trace through the shared context.
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("agentq")
        self.propagator = TraceContextTextMapPropagator()
        self.kinds = {
            "producer": SpanKind.PRODUCER,
            "consumer": SpanKind.CONSUMER,
            "client": SpanKind.CLIENT,
            "internal": SpanKind.INTERNAL,
        }
        self.error_status = Status(StatusCode.ERROR)

    def _console_exporter(self, settings: TracingSettings) -> Any:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        if settings.console_file is not None:
            self._file = settings.console_file.open("a", encoding="utf-8")
        lock = threading.Lock()

        class LineExporter(ConsoleSpanExporter):  # type: ignore[misc]
            def export(self, spans: Any) -> Any:
                with lock:  # one whole line per span, whichever thread ends it
                    return super().export(spans)

        return LineExporter(
            out=self._file or sys.stdout, formatter=lambda s: s.to_json(indent=None) + "\n"
        )

    @contextmanager
    def span(self, name: str, parent: Any, kind: str, attrs: Mapping[str, Any]) -> Iterator[_Span]:
        with self.tracer.start_as_current_span(
            name,
            context=parent,
            kind=self.kinds[kind],
            attributes=_attributes(attrs),
            record_exception=False,
            set_status_on_exception=False,
        ) as otel_span:
            try:
                yield _Span(otel_span)
            except _CONTROL_FLOW as exc:
                if isinstance(exc, Retry):
                    otel_span.set_attribute("agentq.outcome", "retry")
                raise
            except BaseException as exc:
                # The type, not the message: messages may quote inputs.
                otel_span.set_status(self.error_status)
                otel_span.add_event("exception", {"exception.type": type(exc).__qualname__})
                raise

    def shutdown(self) -> None:
        self.provider.shutdown()
        if self._file is not None:
            self._file.close()


def _attributes(attrs: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in attrs.items():
        if value is None:
            continue
        out[key if "." in key else f"agentq.{key}"] = (
            value if isinstance(value, (str, bool, int, float)) else str(value)
        )
    return out


_lock = threading.Lock()
_tracing: _Tracing | None = None
_set_up = False


def setup(settings: TracingSettings) -> None:
    """Turn tracing on as ``settings`` say, once per process (later calls return at once)."""
    if _set_up:
        return
    with _lock:
        if not _set_up:
            _install(settings, None)


def configure(settings: TracingSettings, exporter: Any = None) -> None:
    """Set tracing up again now; ``exporter`` (an SDK SpanExporter) replaces the configured one."""
    with _lock:
        _install(settings, exporter)


def shutdown() -> None:
    """Export what is pending and turn tracing off (a later :func:`setup` may turn it on)."""
    global _tracing, _set_up
    with _lock:
        if _tracing is not None:
            _tracing.shutdown()
        _tracing, _set_up = None, False


def _install(settings: TracingSettings, exporter: Any) -> None:
    global _tracing, _set_up
    if _tracing is not None:
        _tracing.shutdown()
    on = exporter is not None or settings.exporter != "none"
    _tracing = _Tracing(settings, exporter) if on else None
    _set_up = True


def enabled() -> bool:
    """Whether spans are recorded in this process."""
    return _tracing is not None


def span(
    name: str, parent: Any = None, kind: str = "internal", **attrs: Any
) -> AbstractContextManager[Any]:
    """A span named ``name`` around a block (child of ``parent`` or the current span).

    ``kind`` is producer, consumer, client or internal; ``attrs`` become ``agentq.<key>``
    attributes. An exception marks the span as failed, except Celery's retry and ignore.
    """
    tracing = _tracing
    if tracing is None:
        return NO_SPAN
    return tracing.span(name, parent, kind, attrs)


H = TypeVar("H", bound=MutableMapping[str, Any])


def inject(headers: H) -> H:
    """Put the current span's context (``traceparent``) into message ``headers``; return them."""
    tracing = _tracing
    if tracing is not None:
        tracing.propagator.inject(headers)
    return headers


def extract(request: Any) -> Any:
    """The trace context a Celery task ``request`` carries in its headers (None: none)."""
    tracing = _tracing
    if tracing is None:
        return None
    # Celery 5 (protocol 2) merges custom headers into the message headers, which become
    # attributes of the task's request.
    carrier = {k: v for k in _HEADERS if isinstance(v := getattr(request, k, None), str)}
    if not carrier:
        return None
    return tracing.propagator.extract(carrier)
