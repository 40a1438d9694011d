"""Engine metric parsers (pure): queue depth, running requests and KV-cache use as Triton with
TensorRT-LLM, vLLM and llama.cpp's server export them."""

from __future__ import annotations

import pytest

from app.inference.engine_metrics import EngineMetrics, parse_engine_metrics, parse_queue_depth

TRITON_METRICS = """\
# HELP nv_inference_pending_request_count Instantaneous number of pending requests
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="ensemble",version="1"} 6
nv_inference_pending_request_count{model="ensemble_stream",version="1"} 3
# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="ensemble",version="1"} 1234
"""

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="llama"} 12.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="llama"} 4.0
"""


def test_queue_depth_sums_triton_pending_requests_over_models() -> None:
    assert parse_queue_depth(TRITON_METRICS) == 9


# Triton in front of TensorRT-LLM: the decoupled backend takes requests at once, so Triton's
# queue is empty and the batcher's gauge holds the waiting ones (active/max are not waiting).
TRTLLM_METRICS = """\
# HELP nv_inference_pending_request_count Instantaneous number of pending requests
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="ensemble",version="1"} 0
nv_inference_pending_request_count{model="tensorrt_llm",version="1"} 1
# HELP nv_trt_llm_request_metrics TRT LLM request metrics
# TYPE nv_trt_llm_request_metrics gauge
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="waiting",version="1"} 12
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="context",version="1"} 3
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="scheduled",version="1"} 64
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="max",version="1"} 64
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="active",version="1"} 76
"""


def test_queue_depth_adds_the_requests_tensorrt_llm_holds_waiting() -> None:
    assert parse_queue_depth(TRTLLM_METRICS) == 13


def test_queue_depth_reads_vllm_waiting_requests() -> None:
    assert parse_queue_depth(VLLM_METRICS) == 4


@pytest.mark.parametrize("text", ["", "# only comments\n", "nv_other_metric 3\n", "{{ not prom"])
def test_queue_depth_is_none_without_the_gauge(text: str) -> None:
    assert parse_queue_depth(text) is None


# TensorRT-LLM's backend as Triton 24.x exports it (no fraction gauge): use = used / max.
TRTLLM_KV_METRICS = (
    TRTLLM_METRICS
    + """\
# HELP nv_trt_llm_kv_cache_block_metrics TRT LLM KV cache block metrics
# TYPE nv_trt_llm_kv_cache_block_metrics gauge
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="tokens_per",model="tensorrt_llm",version="1"} 64
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used",model="tensorrt_llm",version="1"} 1560
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="free",model="tensorrt_llm",version="1"} 4680
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max",model="tensorrt_llm",version="1"} 6240
"""  # noqa: E501
)


def test_tensorrt_llm_running_requests_and_kv_cache_use_from_blocks() -> None:
    assert parse_engine_metrics(TRTLLM_KV_METRICS) == EngineMetrics(
        "triton", waiting=13, running=64, kv_cache_usage=0.25
    )


def test_tensorrt_llm_fraction_gauge_wins_over_the_block_counts() -> None:
    text = TRTLLM_KV_METRICS + (
        'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction",'
        'model="tensorrt_llm",version="1"} 0.4\n'
    )
    parsed = parse_engine_metrics(text)
    assert parsed is not None and parsed.kv_cache_usage == pytest.approx(0.4)


def test_plain_triton_exports_only_its_queue() -> None:
    assert parse_engine_metrics(TRITON_METRICS) == EngineMetrics("triton", waiting=9)


def test_vllm_running_and_kv_cache_use() -> None:
    text = VLLM_METRICS + (
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{engine="0",model_name="llama"} 0.5\n'
        'vllm:kv_cache_usage_perc{engine="1",model_name="llama"} 0.7\n'
    )
    parsed = parse_engine_metrics(text)
    assert parsed is not None
    assert (parsed.kind, parsed.waiting, parsed.running) == ("vllm", 4, 12)
    assert parsed.kv_cache_usage == pytest.approx(0.6)  # the mean over engines, not the sum


def test_vllm_before_0_10_named_its_kv_cache_gauge_gpu_cache_usage_perc() -> None:
    text = VLLM_METRICS + (
        "# TYPE vllm:gpu_cache_usage_perc gauge\n"
        'vllm:gpu_cache_usage_perc{model_name="llama"} 0.25\n'
    )
    parsed = parse_engine_metrics(text)
    assert parsed is not None and parsed.kv_cache_usage == pytest.approx(0.25)


LLAMACPP_METRICS = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 7263
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 1201
# HELP llamacpp:n_busy_slots_per_decode Average number of busy slots per llama_decode() call
# TYPE llamacpp:n_busy_slots_per_decode counter
llamacpp:n_busy_slots_per_decode 1.8
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 4
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 2
"""


def test_llama_cpp_server_deferred_and_processing_requests() -> None:
    assert parse_engine_metrics(LLAMACPP_METRICS) == EngineMetrics("llamacpp", waiting=2, running=4)
    older = LLAMACPP_METRICS + "# TYPE llamacpp:kv_cache_usage_ratio gauge\n"
    older += "llamacpp:kv_cache_usage_ratio 0.125\n"
    parsed = parse_engine_metrics(older)
    assert parsed is not None and parsed.kv_cache_usage == pytest.approx(0.125)
