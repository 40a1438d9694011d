"""The GPU bench's report: the console lines and table, and the PNG (matplotlib, when
installed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.gpu.sides import Side
from bench.plots import finish


def gpu_text(gpu: Any) -> str:
    if not isinstance(gpu, dict) or "util_mean_pct" not in gpu:
        return "n/a"
    return f"{gpu['util_mean_pct']:.0f}% (max {gpu['util_max_pct']:.0f}%)"


def line(name: str, side: Side) -> str:
    f = side.figures()
    failed = f", [red]{side.failed} failed: {side.error}[/red]" if side.failed else ""
    return (
        f"  {name:>7}: {f['requests_per_s']} req/s, {f['tokens_per_s']} tokens/s, "
        f"{side.calls} calls in {side.wall_s:.2f} s, GPU {gpu_text(f['gpu'])}{failed}"
    )


def show(report: dict[str, Any], console: Console) -> None:
    """The results table: per level and side, requests/s, tokens/s, GPU; the ratios."""
    table = Table(title=f"direct client vs agentq, {report['max_tokens']} tokens a reply")
    for name in ("C", "side", "req/s", "tokens/s", "p50 ms", "GPU util", "failed", "ratio"):
        table.add_column(name, justify="right")
    for row in report["levels"]:
        for side in ("direct", "agentq"):
            f = row[side]
            r = row["ratio_tokens"] if side == "agentq" else None
            table.add_row(
                str(row["concurrency"]) if side == "direct" else "",
                side,
                f"{f['requests_per_s']}",
                f"{f['tokens_per_s']}",
                f"{f['p50_ms']}" if f["p50_ms"] is not None else "—",
                gpu_text(f["gpu"]),
                str(f["failed"]),
                f"{r:.2f}" if r is not None else "",
            )
    console.print(table)
    console.print("ratio: agentq tokens/s over direct tokens/s at the same concurrency")
    if report["honesty"]:
        console.print(f"[yellow]{report['honesty']}[/yellow]")


def plot(report: dict[str, Any], path: Path) -> Path | None:
    """tokens/s of both sides and the GPU utilisation per level (PNG); None without
    matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [row["concurrency"] for row in report["levels"]]
    fig, (ax, ax_gpu) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        for side, color in (("direct", "#ff7f0e"), ("agentq", "#1f77b4")):
            values = [row[side]["tokens_per_s"] or 0 for row in report["levels"]]
            ax.plot(levels, values, marker="o", color=color, label=side)
            util = [
                row[side]["gpu"].get("util_mean_pct")
                if isinstance(row[side]["gpu"], dict)
                else None
                for row in report["levels"]
            ]
            if any(u is not None for u in util):
                ax_gpu.plot(levels, [u or 0 for u in util], marker="o", color=color, label=side)
        for a in (ax, ax_gpu):
            a.set_xscale("log", base=2)
            a.set_xlabel("concurrency (direct coroutines / worker threads)")
            if a.lines:
                a.legend()
        ax.set_ylabel("generated tokens / s")
        ax.set_ylim(bottom=0)
        ax.set_title("throughput")
        ax_gpu.set_ylabel("GPU utilisation, mean %")
        ax_gpu.set_title("GPU utilisation" if report["gpu_sampled"] else "GPU: n/a (no nvidia-smi)")
        server = report["server"]
        model = server.get("model") or {}
        what = (
            f"{server['server']}, random-weight Llama ({model['size']}, {model['dtype']})"
            if model
            else f"the server at {server['base_url']}"
        )
        footer = f"{what} on {report['device']}, {report['max_tokens']} tokens a reply, "
        return finish(fig, path, footer + str(report["date"]), fontsize=7, bottom=0.04)
    finally:
        plt.close(fig)
