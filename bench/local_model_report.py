"""The local-model bench's figures: what one request measured, the order requests are
asked in, the summary per side, the table and the plot. Pure, except :func:`write_plot`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.measure import percentile
from bench.plots import finish
from bench.report import ratio, scenario

STREAM, UNARY = "stream", "unary"
DIRECT, AGENTQ = "direct", "agentq"


@dataclass(frozen=True)
class Sample:
    """One request's timings (seconds from the send or submit) and its answer."""

    side: str
    mode: str
    question: str
    total_s: float
    answer: str = ""
    tokens: int = 0
    first_s: float | None = None  # first piece of the answer (streamed only)
    last_s: float | None = None
    prompt_tokens: int | None = None  # direct: the prompt sent; agentq: the step's record
    # agentq, streamed: submit -> the worker's model call begins; the first token's relay
    # (the worker's write -> the reader). Wall clocks of one machine.
    to_model_call_s: float | None = None
    relay_s: float | None = None
    error: str | None = None

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens after the first over the time from the first piece to the last."""
        if self.first_s is None or self.last_s is None or self.tokens < 2:
            return None
        spread = self.last_s - self.first_s
        return (self.tokens - 1) / spread if spread > 0 else None


def schedule(requests: int, questions: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(mode, side, question) in the order asked: per round a streamed and a unary request
    of each side, the side going first alternating by round; agentq asks the question the
    direct side asked the round before, so consecutive requests on a model differ (with at
    least three questions)."""
    order = []
    for i in range(requests):
        asked = {DIRECT: questions[i % len(questions)], AGENTQ: questions[(i - 1) % len(questions)]}
        sides = (DIRECT, AGENTQ) if i % 2 == 0 else (AGENTQ, DIRECT)
        order += [(mode, side, asked[side]) for mode in (STREAM, UNARY) for side in sides]
    return order


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def summarize(samples: list[Sample], side: str) -> dict[str, Any]:
    """p50 and p95 of each figure of ``side``'s samples that succeeded; failures counted."""
    streamed = [s for s in samples if s.side == side and s.mode == STREAM and s.error is None]
    unary = [s for s in samples if s.side == side and s.mode == UNARY and s.error is None]

    def quantiles(values: list[float], scale: Callable[[float | None], float | None]) -> Any:
        return {q: scale(percentile(values, p)) for q, p in (("p50", 0.5), ("p95", 0.95))}

    rates = [r for s in streamed if (r := s.decode_tokens_per_s) is not None]
    return {
        "stream": {
            "requests": len(streamed),
            "first_token_ms": quantiles([s.first_s for s in streamed if s.first_s], _ms),
            "to_model_call_ms": quantiles(
                [s.to_model_call_s for s in streamed if s.to_model_call_s is not None], _ms
            ),
            "first_token_relay_ms": quantiles(
                [s.relay_s for s in streamed if s.relay_s is not None], _ms
            ),
            "decode_tokens_per_s": quantiles(rates, _round),
            "total_ms": quantiles([s.total_s for s in streamed], _ms),
            "tokens": quantiles([float(s.tokens) for s in streamed], _round),
        },
        "unary": {
            "requests": len(unary),
            "total_ms": quantiles([s.total_s for s in unary], _ms),
            "tokens": quantiles([float(s.tokens) for s in unary], _round),
        },
        "failed": sum(1 for s in samples if s.side == side and s.error is not None),
    }


def same_on_both_sides(samples: list[Sample]) -> dict[str, int]:
    """Of the questions asked on both sides in a mode: how many had the same prompt (its
    tokens) and got the same answer (greedy decoding: the queue changes neither)."""
    compared = prompts = answers = 0
    for mode in (STREAM, UNARY):
        by_side: dict[str, dict[str, Sample]] = {DIRECT: {}, AGENTQ: {}}
        for s in samples:
            if s.mode == mode and s.error is None:
                by_side[s.side].setdefault(s.question, s)
        for question, direct in by_side[DIRECT].items():
            queued = by_side[AGENTQ].get(question)
            if queued is not None:
                compared += 1
                prompts += direct.prompt_tokens == queued.prompt_tokens
                answers += direct.answer.strip() == queued.answer.strip()
    return {"compared": compared, "same_prompt": prompts, "same_answer": answers}


# (label, mode, figure, unit): the table's rows and the plot's panels.
FIGURES = (
    ("time to first token", STREAM, "first_token_ms", "ms"),
    ("decode rate", STREAM, "decode_tokens_per_s", "tokens/s"),
    ("streamed answer, total", STREAM, "total_ms", "ms"),
    ("unary answer, total", UNARY, "total_ms", "ms"),
    ("answer tokens", STREAM, "tokens", ""),
    ("agentq: submit → model call begins", STREAM, "to_model_call_ms", "ms"),
    ("agentq: first token, worker → reader", STREAM, "first_token_relay_ms", "ms"),
)


def _figure(doc: dict[str, Any], side: str, mode: str, figure: str, q: str) -> float | None:
    value: float | None = doc["sides"][side][mode][figure][q]
    return value


def ratios(doc: dict[str, Any]) -> dict[str, float | None]:
    """agentq's p50 over the direct side's, per figure."""
    return {
        f"{mode}_{figure}": ratio(
            _figure(doc, AGENTQ, mode, figure, "p50"), _figure(doc, DIRECT, mode, figure, "p50")
        )
        for _, mode, figure, _ in FIGURES
    }


def document(samples: list[Sample], **extra: Any) -> dict[str, Any]:
    """The bench's JSON document: both sides' figures, the ratios of their p50s (the
    scenario's ``ratio``: agentq's decode rate over the direct one), the first token's
    overhead, the checks of both sides, every sample, and ``extra``."""
    sides = {side: summarize(samples, side) for side in (AGENTQ, DIRECT)}
    for figures in sides.values():
        figures["decode_tokens_per_s_p50"] = figures["stream"]["decode_tokens_per_s"]["p50"]
    doc = scenario("local-model", "decode_tokens_per_s_p50", sides, baseline=DIRECT)
    doc["ratios"] = ratios(doc)
    first = [_figure(doc, side, STREAM, "first_token_ms", "p50") for side in (AGENTQ, DIRECT)]
    doc["first_token_overhead_ms"] = (
        round(first[0] - first[1], 1) if first[0] is not None and first[1] is not None else None
    )
    doc["same_on_both_sides"] = same_on_both_sides(samples)
    doc["samples"] = [
        {**vars(s), "decode_tokens_per_s": _round(s.decode_tokens_per_s)} for s in samples
    ]
    return {**doc, **extra}


def show(doc: dict[str, Any], console: Console) -> None:
    """The table of p50/p95 per side and the agentq/direct ratio of the p50s."""
    table = Table(
        title=f"SmolLM2-135M-Instruct on llama.cpp (Triton, CPU), greedy, up to "
        f"{doc['max_tokens']} tokens; {doc['requests']} requests per side and mode"
    )
    for name in ("figure", "direct p50", "direct p95", "agentq p50", "agentq p95", "ratio"):
        table.add_column(name, justify="left" if name == "figure" else "right")

    def cell(value: float | None, unit: str) -> str:
        return "—" if value is None else f"{value:,.1f} {unit}".strip()

    for label, mode, figure, unit in FIGURES:
        r = doc["ratios"][f"{mode}_{figure}"]
        table.add_row(
            label,
            *(cell(_figure(doc, s, mode, figure, q), unit) for s in (DIRECT, AGENTQ)
              for q in ("p50", "p95")),
            "—" if r is None else f"{r:.2f}",
        )  # fmt: skip
    console.print(table)
    overhead = doc["first_token_overhead_ms"]
    if overhead is not None:
        queued = _figure(doc, AGENTQ, STREAM, "to_model_call_ms", "p50")
        relay = _figure(doc, AGENTQ, STREAM, "first_token_relay_ms", "p50")
        console.print(
            f"time to first token, agentq minus direct: {overhead:+.1f} ms at p50; the queue's "
            f"own share, measured in each run: {cell(queued, 'ms')} from the submit to the "
            f"model call, {cell(relay, 'ms')} relaying the first token (p50)"
        )
    same = doc["same_on_both_sides"]
    console.print(
        f"of {same['compared']} questions asked on both sides: the same prompt "
        f"{same['same_prompt']}, the same answer {same['same_answer']}"
    )
    failed = sum(doc["sides"][s]["failed"] for s in (DIRECT, AGENTQ))
    if failed:
        console.print(f"[red]{failed} requests failed[/red] (their errors are in the JSON)")
    load = doc["machine"].get("load_average_at_start")
    console.print(f"load average at the start {load}, at the end {doc['load_average_at_end']}")


def write_plot(doc: dict[str, Any], path: Path) -> Path:
    """One panel per timed figure: p50 bars with a p95 mark, direct beside agentq."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = FIGURES[:4]
    fig, axes = plt.subplots(1, len(shown), figsize=(11, 3.6))
    try:
        for ax, (label, mode, figure, unit) in zip(axes, shown, strict=True):
            for x, (side, color) in enumerate(((DIRECT, "#ff7f0e"), (AGENTQ, "#1f77b4"))):
                p50 = _figure(doc, side, mode, figure, "p50") or 0.0
                p95 = _figure(doc, side, mode, figure, "p95") or 0.0
                ax.bar(x, p50, color=color)
                ax.plot([x - 0.3, x + 0.3], [p95, p95], color="black", linewidth=1)
                ax.annotate(f"{p50:,.0f}", (x, p50), ha="center", va="bottom", fontsize=8)
            ax.set_xticks([0, 1], ["direct", "agentq"])
            ax.set_title(f"{label} ({unit})", fontsize=9)
        machine = doc["machine"]
        fig.suptitle(
            f"SmolLM2-135M-Instruct, {doc['requests']} requests per side: p50 bars, p95 lines",
            fontsize=10,
        )
        footer = (
            f"{machine.get('cpu_model')}, {machine.get('cpu_count')} cores, load "
            f"{machine.get('load_average_at_start')}, {doc['date']}"
        )
        return finish(fig, path, footer, bottom=0.04)
    finally:
        plt.close(fig)
