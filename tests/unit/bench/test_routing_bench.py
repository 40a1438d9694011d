"""The routing bench's pure parts: engine log counts, per-strategy figures, the target."""

from __future__ import annotations

from bench.routing import Plan, engine_tokens, summarise, tool_result, tool_seconds, verdict

LOG = """\
Llama._create_completion: cache miss
llama_perf_context_print: prompt eval time =     812.40 ms /   131 tokens (    6.20 ms per token)
Llama.generate: 131 prefix-match hit, remaining 38 prompt tokens to eval
llama_perf_context_print: prompt eval time =     230.11 ms /    38 tokens (    6.06 ms per token)
llama_perf_context_print:        eval time =      40.00 ms /     1 runs   (   40.00 ms per token)
"""


def test_engine_tokens_reads_evaluated_and_reused_prompt_tokens() -> None:
    assert engine_tokens(LOG) == {"evaluated": 169, "reused": 131}


def record(session: int, turn: int, replica: str, ttft: float, error: str | None = None):
    return {
        "session": session,
        "turn": turn,
        "replica": replica,
        "ttft_s": ttft,
        "latency_s": ttft + 0.1,
        "error": error,
    }


def test_summary_counts_whole_runs_stays_and_failures() -> None:
    records = [
        record(0, 0, "a", 1.0),
        record(0, 1, "a", 0.2),
        record(1, 0, "b", 1.0),
        record(1, 1, "a", 0.8),
        record(2, 0, "a", 0.0, error="down"),
    ]
    row = summarise(records, wall_s=4.0, turns=2)
    assert (row["turns"], row["failed"], row["runs"]) == (4, 1, 2)
    assert row["runs_per_s"] == 0.5 and row["turns_per_s"] == 1.0
    assert row["stayed_on_replica"] == 0.5  # session 0 stayed, session 1 moved
    assert row["turns_per_replica"] == [3, 1]
    assert row["ttft_p50_ms"] is not None


def test_target_compares_the_best_cache_aware_strategy_with_round_robin() -> None:
    rows = {
        "round_robin": {"ttft_p50_ms": 900.0, "runs_per_s": 0.1},
        "prefix": {"ttft_p50_ms": 300.0, "runs_per_s": 0.2},
        "session_affinity": {"ttft_p50_ms": 500.0, "runs_per_s": 0.15},
    }
    assert verdict(rows) == {"ttft_speedup": 3.0, "runs_per_s_gain": 2.0, "met": True}
    assert verdict({"prefix": rows["prefix"]})["met"] is None


def test_the_workload_is_the_same_for_every_strategy() -> None:
    assert tool_result(3, 2) == tool_result(3, 2) != tool_result(3, 1)
    assert 0 <= tool_seconds(5, 4, 1000) < 1.0 and tool_seconds(5, 4, 0) == 0
    assert Plan(sessions=8).cache_bytes() > Plan(sessions=4).cache_bytes()
    assert Plan(cache_mib=64).cache_bytes() == 64 << 20
