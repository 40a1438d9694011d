"""Requests waiting at a model server, parsed from its Prometheus exposition. Pure, no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prometheus_client.parser import text_string_to_metric_families

QueueGauge = tuple[str, tuple[tuple[str, str], ...]]
"""A gauge of waiting requests: its name and the labels a sample must have to count."""

QUEUE_METRICS: tuple[tuple[QueueGauge, ...], ...] = (
    # Triton: requests in its own queues (every model), plus those TensorRT-LLM's in-flight
    # batcher holds waiting: its backend takes each request at once (decoupled), so Triton's
    # queue stays near empty in front of it and the wait is inside.
    (
        ("nv_inference_pending_request_count", ()),
        ("nv_trt_llm_request_metrics", (("request_type", "waiting"),)),
    ),
    (("vllm:num_requests_waiting", ()),),  # vLLM (NIM exports vLLM's)
)
"""Per kind of model server, the gauges whose samples add up to the requests waiting there;
the first kind found in a server's exposition is its kind."""


def parse_queue_depth(
    text: str, servers: Sequence[Sequence[QueueGauge]] = QUEUE_METRICS
) -> float | None:
    """Requests waiting at a model server, from its Prometheus exposition ``text``.

    Sums every matching sample of the gauges of the first kind of ``servers`` present (a
    Triton replica: ``nv_inference_pending_request_count`` of every model plus TensorRT-LLM's
    ``nv_trt_llm_request_metrics{request_type="waiting"}``; vLLM:
    ``vllm:num_requests_waiting``). None when none is present or the text does not parse.
    """
    totals: dict[int, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                for kind, gauges in enumerate(servers):
                    if any(_counts(sample.name, sample.labels, g) for g in gauges):
                        totals[kind] = totals.get(kind, 0.0) + sample.value
    except ValueError:
        return None
    return totals[min(totals)] if totals else None


def _counts(name: str, labels: Mapping[str, str], gauge: QueueGauge) -> bool:
    wanted, required = gauge
    return name == wanted and all(labels.get(k) == v for k, v in required)
