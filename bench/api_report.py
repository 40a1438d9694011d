"""The table and the plot of ``agentq bench api`` (bench/api.py), from its report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

SIDES = ("http", "python")
NOISE = (
    "shared 2-core machine with other work running: absolute figures are noisy; the two sides "
    "ran on the same stack in the same minutes, so compare the ratios"
)


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} ms"


def show(report: dict[str, Any], console: Console) -> None:
    sub, rel = report["submit"], report["relay"]
    table = Table(title=f"run API vs Python (auth: {report['auth']})")
    for column in ("", "HTTP API", "Python", "HTTP / Python"):
        table.add_column(column, justify="right" if column else "left")
    for level in sub["levels"]:
        h, p, offered = level["http"], level["python"], f"{level['offered_per_s']:g}/s"
        table.add_row(
            f"submit at {offered} offered: achieved /s",
            f"{h['achieved_per_s']}",
            f"{p['achieved_per_s']}",
            f"{level['ratio_achieved']}",
        )
        for q in ("p50", "p99"):
            table.add_row(
                f"  {q} from the scheduled send",
                _ms(h["latency"][f"{q}_ms"]),
                _ms(p["latency"][f"{q}_ms"]),
                f"{level[f'ratio_{q}']}",
            )
        table.add_row("  failed", f"{h['failed']}", f"{p['failed']}", "")
    h, p = rel["http"], rel["python"]
    for q in ("p50", "p99"):
        table.add_row(
            f"relay per token: {q}",
            _ms(h["per_token"][f"{q}_ms"]),
            _ms(p["per_token"][f"{q}_ms"]),
            f"{rel[f'ratio_{q}']}",
        )
    table.add_row(
        "first token after the submit call: p50",
        _ms(h["first_token_after_submit"]["p50_ms"]),
        _ms(p["first_token_after_submit"]["p50_ms"]),
        "",
    )
    table.add_row("streamed runs failed", f"{h['failed']}", f"{p['failed']}", "")
    console.print(table)
    console.print(f"[dim]{sub['seconds']:g} s per rate and side. {NOISE}[/dim]")


def _pairs(ax: Any, labels: list[str], http: list[float], python: list[float]) -> None:
    """Bars of both sides side by side, one pair per label."""
    from bench.plots import AGENTQ, STOCK

    for i, (name, ys, color) in enumerate((("HTTP API", http, AGENTQ), ("Python", python, STOCK))):
        xs = [x + (i - 0.5) * 0.38 for x in range(len(labels))]
        ax.bar(xs, ys, 0.38, color=color, label=name)
    ax.set_xticks(range(len(labels)), labels)
    ax.legend()


def plot(report: dict[str, Any], path: Path) -> Path | None:
    """Achieved submit rate and p99 per offered rate, relay delay per token (PNG)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.plots import finish

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    try:
        levels, rel = report["submit"]["levels"], report["relay"]
        offered = [f"{level['offered_per_s']:g}/s offered" for level in levels]

        def side(key: str, pick: Callable[[dict[str, Any]], float | None]) -> list[float]:
            return [pick(level[key]) or 0.0 for level in levels]

        _pairs(axes[0], offered, *(side(k, lambda f: f["achieved_per_s"]) for k in SIDES))
        axes[0].set_ylabel("submits answered / s")
        axes[0].set_title("POST /v1/runs vs submit(): achieved rate", fontsize=9)
        _pairs(axes[1], offered, *(side(k, lambda f: f["latency"]["p99_ms"]) for k in SIDES))
        axes[1].set_yscale("log")
        axes[1].set_ylabel("p99 from the scheduled send (ms, log)")
        axes[1].set_title("submit p99 (open loop: queueing included)", fontsize=9)
        per_token = [rel[k]["per_token"] for k in SIDES]
        _pairs(axes[2], ["p50", "p99"], *([t["p50_ms"] or 0, t["p99_ms"] or 0] for t in per_token))
        axes[2].set_ylabel("worker's write to the reader (ms)")
        axes[2].set_title("SSE events vs stream(), per token", fontsize=9)
        machine = report.get("machine", {})
        footer = (
            f"{machine.get('cpu_model')}, {machine.get('cpu_count')} cores, {report['date']}; "
            f"auth: {report['auth']}; {NOISE}"
        )
        return finish(fig, path, footer, fontsize=5.5)
    finally:
        plt.close(fig)
