"""What a model server says of its load, parsed from its Prometheus exposition. Pure, no I/O.

Each engine kind names its gauges differently; :data:`ENGINES` maps them onto one
:class:`EngineMetrics`: requests waiting, requests running and the share of the KV cache in
use. The first kind whose gauges appear in a scrape is the server's kind.

- Triton with TensorRT-LLM: ``nv_inference_pending_request_count`` (every model) plus
  ``nv_trt_llm_request_metrics{request_type="waiting"}`` waiting (the decoupled backend takes
  each request at once, so Triton's own queue stays near empty and the wait is inside the
  in-flight batcher); ``request_type="scheduled"`` running; the KV cache from
  ``nv_trt_llm_kv_cache_block_metrics``: ``kv_cache_block_type="fraction"`` where exported,
  else ``used / max`` blocks.
- vLLM (and NIM, which exports vLLM's): ``vllm:num_requests_waiting``,
  ``vllm:num_requests_running``, ``vllm:kv_cache_usage_perc`` (a fraction despite its name;
  ``vllm:gpu_cache_usage_perc`` before vLLM 0.10).
- llama.cpp's server (``--metrics``): ``llamacpp:requests_deferred`` waiting,
  ``llamacpp:requests_processing`` running; its KV-cache gauge
  (``llamacpp:kv_cache_usage_ratio``) is read where an older server still exports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

Gauge = tuple[str, tuple[tuple[str, str], ...]]
"""A gauge: its name and the labels a sample must have to count."""


@dataclass(frozen=True, slots=True)
class EngineGauges:
    """Where one kind of model server exports each figure; samples of a field's gauges add up."""

    kind: str
    waiting: tuple[Gauge, ...]
    running: tuple[Gauge, ...] = ()
    kv_usage: tuple[Gauge, ...] = ()  # fractions: averaged over samples (engines, models)
    kv_used_blocks: tuple[Gauge, ...] = ()  # else used / max blocks
    kv_max_blocks: tuple[Gauge, ...] = ()


def _trt(block_type: str) -> Gauge:
    return ("nv_trt_llm_kv_cache_block_metrics", (("kv_cache_block_type", block_type),))


ENGINES: tuple[EngineGauges, ...] = (
    EngineGauges(
        "triton",
        waiting=(
            ("nv_inference_pending_request_count", ()),
            ("nv_trt_llm_request_metrics", (("request_type", "waiting"),)),
        ),
        running=(("nv_trt_llm_request_metrics", (("request_type", "scheduled"),)),),
        kv_usage=(_trt("fraction"),),
        kv_used_blocks=(_trt("used"),),
        kv_max_blocks=(_trt("max"),),
    ),
    EngineGauges(
        "vllm",
        waiting=(("vllm:num_requests_waiting", ()),),
        running=(("vllm:num_requests_running", ()),),
        kv_usage=(("vllm:kv_cache_usage_perc", ()), ("vllm:gpu_cache_usage_perc", ())),
    ),
    EngineGauges(
        "llamacpp",
        waiting=(("llamacpp:requests_deferred", ()),),
        running=(("llamacpp:requests_processing", ()),),
        kv_usage=(("llamacpp:kv_cache_usage_ratio", ()),),
    ),
)
"""The model servers agentq reads, in the order a scrape is matched against them."""


@dataclass(frozen=True, slots=True)
class EngineMetrics:
    """A model server's load at one scrape; None where its kind does not export the figure."""

    kind: str
    waiting: float
    running: float | None = None
    kv_cache_usage: float | None = None  # share of the KV cache in use, 0..1


Sample = tuple[str, Mapping[str, str], float]


def parse_engine_metrics(
    text: str, engines: Iterable[EngineGauges] = ENGINES
) -> EngineMetrics | None:
    """The load of the model server whose Prometheus exposition is ``text``: waiting and
    running requests and KV-cache use (see the module docstring for each engine's gauges).
    None when no known waiting gauge is present or the text does not parse."""
    try:
        samples: list[Sample] = [
            (s.name, s.labels, s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]
    except ValueError:
        return None
    for engine in engines:
        waiting = _values(samples, engine.waiting)
        if not waiting:
            continue
        running = _values(samples, engine.running)
        return EngineMetrics(
            engine.kind,
            waiting=sum(waiting),
            running=sum(running) if running else None,
            kv_cache_usage=_kv_usage(samples, engine),
        )
    return None


def parse_queue_depth(text: str) -> float | None:
    """Requests waiting at a model server, from its Prometheus exposition ``text`` (None when
    no known gauge is present)."""
    parsed = parse_engine_metrics(text)
    return parsed.waiting if parsed is not None else None


def _kv_usage(samples: list[Sample], engine: EngineGauges) -> float | None:
    fractions = _values(samples, engine.kv_usage)
    if fractions:
        return _clamp(sum(fractions) / len(fractions))
    used = _values(samples, engine.kv_used_blocks)
    total = sum(_values(samples, engine.kv_max_blocks))
    if used and total > 0:
        return _clamp(sum(used) / total)
    return None


def _clamp(x: float) -> float:
    return min(max(x, 0.0), 1.0)


def _values(samples: list[Sample], gauges: tuple[Gauge, ...]) -> list[float]:
    return [value for name, labels, value in samples if any(_is(name, labels, g) for g in gauges)]


def _is(name: str, labels: Mapping[str, str], gauge: Gauge) -> bool:
    wanted, required = gauge
    return name == wanted and all(labels.get(k) == v for k, v in required)
