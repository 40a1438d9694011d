"""The local-model bench's pure parts: the order requests are asked in and the figures."""

from __future__ import annotations

import itertools
from dataclasses import replace

from rich.console import Console

from bench.local_model_report import (
    AGENTQ,
    DIRECT,
    STREAM,
    UNARY,
    Sample,
    document,
    schedule,
    show,
)
from bench.report import check_shape

QUESTIONS = ("a", "b", "c")


def test_each_side_asks_every_question_and_no_request_repeats_the_previous_one() -> None:
    order = schedule(6, QUESTIONS)
    assert len(order) == 24
    for mode in (STREAM, UNARY):
        on_model = [(side, q) for m, side, q in order if m == mode]
        for side in (DIRECT, AGENTQ):
            asked = sorted(q for s, q in on_model if s == side)
            assert asked == sorted(QUESTIONS * 2)
        # llama.cpp keeps the last prompt: none finds its whole prompt there.
        questions = [q for _, q in on_model]
        assert all(a != b for a, b in itertools.pairwise(questions))
    firsts = [order[i][1] for i in range(0, 24, 4)]
    assert firsts == [DIRECT, AGENTQ] * 3  # the side going first alternates


def test_the_decode_rate_is_tokens_after_the_first_over_first_to_last() -> None:
    sample = Sample(DIRECT, STREAM, "a", 1.2, "x", tokens=11, first_s=0.25, last_s=0.75)
    assert sample.decode_tokens_per_s == 20.0
    assert Sample(DIRECT, UNARY, "a", 1.0, "x", tokens=11).decode_tokens_per_s is None
    one = Sample(DIRECT, STREAM, "a", 1.0, "x", tokens=1, first_s=0.2, last_s=0.2)
    assert one.decode_tokens_per_s is None


def _samples() -> list[Sample]:
    samples = []
    for side, first, answer in ((DIRECT, 0.10, "yes"), (AGENTQ, 0.15, "yes")):
        samples += [
            Sample(side, STREAM, "a", 1.0, answer, 21, first, first + 0.5, 30),
            Sample(side, UNARY, "a", 1.1, answer, 21, prompt_tokens=30),
        ]
    samples[2] = replace(samples[2], to_model_call_s=0.004, relay_s=0.0005)
    samples.append(Sample(AGENTQ, UNARY, "b", 5.0, error="timed out"))
    return samples


def test_the_document_compares_both_sides_and_counts_failures() -> None:
    doc = document(_samples(), machine={}, versions={}, date="today", requests=1, max_tokens=64)
    assert check_shape(doc) == []
    assert doc["sides"][DIRECT]["stream"]["first_token_ms"]["p50"] == 100.0
    assert doc["sides"][AGENTQ]["stream"]["decode_tokens_per_s"]["p50"] == 40.0
    assert doc["ratio"] == 1.0
    assert doc["first_token_overhead_ms"] == 50.0
    assert doc["ratios"]["stream_first_token_ms"] == 1.5
    queued = doc["sides"][AGENTQ]["stream"]
    assert queued["to_model_call_ms"]["p50"] == 4.0 and queued["first_token_relay_ms"]["p50"] == 0.5
    assert doc["sides"][DIRECT]["stream"]["to_model_call_ms"]["p50"] is None
    assert doc["sides"][AGENTQ]["failed"] == 1 and doc["sides"][DIRECT]["failed"] == 0
    assert doc["sides"][AGENTQ]["unary"]["requests"] == 1
    assert doc["same_on_both_sides"] == {"compared": 2, "same_prompt": 2, "same_answer": 2}


def test_the_table_says_the_overhead_and_the_failures() -> None:
    doc = document(
        _samples(),
        machine={"load_average_at_start": [1.0, 1.0, 1.0]},
        versions={},
        date="today",
        requests=1,
        max_tokens=64,
        load_average_at_end=[1.0, 1.0, 1.0],
    )
    console = Console(record=True, width=140)
    show(doc, console)
    text = console.export_text()
    assert "+50.0 ms" in text and "4.0 ms from the submit" in text
    assert "1 requests failed" in text
