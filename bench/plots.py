"""One PNG per scenario of the suite, from its JSON document (matplotlib, ``bench`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

AGENTQ, STOCK, DRAMATIQ, OTHER = "#1f77b4", "#ff7f0e", "#2ca02c", "#7f7f7f"
SIDES = (("stock", STOCK), ("dramatiq", DRAMATIQ), ("agentq", AGENTQ))  # baselines first


def _shown(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """The sides ``doc`` has (side, colour), in SIDES' order."""
    return [(side, color) for side, color in SIDES if side in doc["sides"]]


def _bars(ax: Any, labels: list[str], values: list[float | None], colors: list[str]) -> None:
    heights = [v or 0.0 for v in values]
    bars = ax.bar(labels, heights, color=colors)
    for bar, value in zip(bars, values, strict=True):
        text = "—" if value is None else f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                    va="bottom", fontsize=8)  # fmt: skip


def _ratio_title(doc: dict[str, Any], what: str) -> str:
    r = doc.get("ratio")
    return f"{what} (ratio {r:.2f})" if r is not None else what


def enqueue(ax: Any, doc: dict[str, Any]) -> None:
    s = doc["sides"]
    _bars(
        ax,
        ["stock delay() loop", "agentq submit_many", "raw LPUSH pipeline"],
        [s["stock"]["runs_per_s"], s["agentq"]["runs_per_s"], s["raw_ceiling"]["runs_per_s"]],
        [STOCK, AGENTQ, OTHER],
    )
    ax.set_ylabel("runs enqueued / s")
    ax.set_title(_ratio_title(doc, f"enqueue, {s['agentq']['runs']:,} runs"))


def dispatch(ax: Any, doc: dict[str, Any]) -> None:
    groups = [("SQLite", doc)]
    if "sides" in doc.get("postgres", {}):
        groups.append(("PostgreSQL", doc["postgres"]))
    labels, values, colors = [], [], []
    for name, group in groups:
        for side, color in _shown(group):
            labels.append(f"{side}\n{name}" if side == "agentq" else f"{side}\n({name} run)")
            values.append(group["sides"][side]["runs_per_s"])
            colors.append(color)
    _bars(ax, labels, values, colors)
    ratios = ", ".join(
        f"{name} {g['ratio']:.2f}" for name, g in groups if g.get("ratio") is not None
    )
    ax.tick_params(axis="x", labelsize=7)
    ax.set_ylabel("runs drained / s (one worker process)")
    ax.set_title(f"dispatch, {doc['sides']['agentq']['runs']:,} trivial runs "
                 f"(ratio to stock {ratios})", fontsize=9)  # fmt: skip


def latency(ax: Any, doc: dict[str, Any]) -> None:
    quantiles = ("p50_ms", "p95_ms", "p99_ms")
    shown = _shown(doc)
    width = 0.8 / len(shown)
    for i, (side, color) in enumerate(shown):
        summary = doc["sides"][side]["enqueue_to_start"]
        xs = [q + (i - (len(shown) - 1) / 2) * width for q in range(len(quantiles))]
        ax.bar(xs, [summary[q] or 0 for q in quantiles], width, color=color, label=side)
    ax.set_xticks(range(len(quantiles)), [q.removesuffix("_ms") for q in quantiles])
    ax.set_yscale("log")  # a p99 tail and a p50 of a few ms on one chart
    ax.set_ylabel("enqueue → first step started (ms, log)")
    ax.legend()
    ax.set_title(
        _ratio_title(doc, f"latency at {doc['offered_runs_per_s']:,.0f} runs/s offered (p50)")
    )


def coldstart(ax: Any, doc: dict[str, Any]) -> None:
    sides = _shown(doc)
    for x, (side, color) in enumerate(sides):
        figures = doc["sides"][side]
        ax.bar(x, figures["median_s"], 0.6, color=color)
        ax.plot([x] * len(figures["rounds_s"]), figures["rounds_s"], "k.", markersize=4)
        ax.annotate(f"{figures['median_s']:.2f} s", (x, figures["median_s"]), ha="center",
                    va="bottom", fontsize=8)  # fmt: skip
    ax.set_xticks(range(len(sides)), [side for side, _ in sides])
    bound = doc["targets"]["agentq_median_s"]["max"]
    ax.axhline(bound, color="red", linestyle="--", linewidth=1, label=f"target {bound:.1f} s")
    ax.set_ylabel("spawn → first run finished (s); median, dots: rounds")
    ax.legend()
    ax.set_title(_ratio_title(doc, f"cold start, {doc['rounds']} rounds per side"))


def memory(ax: Any, doc: dict[str, Any]) -> None:
    s = doc["sides"]
    _bars(
        ax,
        ["stock idle", "stock 64 in flight", "agentq idle", "agentq 64 in flight"],
        [
            s["stock"]["idle_rss_mib"],
            s["stock"]["peak_rss_mib"],
            s["agentq"]["idle_rss_mib"],
            s["agentq"]["peak_rss_mib"],
        ],
        [STOCK, STOCK, AGENTQ, AGENTQ],
    )
    bound = doc["targets"]["agentq_peak_rss_mib"]["max"]
    ax.axhline(bound, color="red", linestyle="--", linewidth=1, label=f"target {bound:.0f} MiB")
    ax.set_ylabel("worker RSS (MiB)")
    ax.legend()
    ax.set_title(_ratio_title(doc, "worker memory"))


def inference(ax: Any, doc: dict[str, Any]) -> None:
    levels = doc["levels"]
    cs = [row["concurrency"] for row in levels]
    for key, label, color in (
        ("direct", "tritonclient direct", STOCK),
        ("agentq", "agentq, 1 worker process", AGENTQ),
        ("agentq_two_processes", "agentq, 2 worker processes", "#2ca02c"),
    ):
        ys = [(row[key] or {}).get("calls_per_s") or float("nan") for row in levels]
        ax.plot(cs, ys, "o-", color=color, label=label)
    ideal = [row["ideal_calls_per_s"] for row in levels]
    ax.plot(cs, ideal, ":", color=OTHER, label="ideal, C calls in flight (C / latency)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrency C")
    ax.set_ylabel("model calls / s")
    ax.legend()
    scheduling = (doc.get("model_changes") or {}).get("scheduling", "batch")
    ax.set_title(_ratio_title(doc, f"inference, {doc['latency_ms']} ms per call ({scheduling})"))


PLOTS = {
    "enqueue": enqueue,
    "dispatch": dispatch,
    "latency": latency,
    "coldstart": coldstart,
    "memory": memory,
    "inference": inference,
}


def finish(fig: Any, path: Path, footer: str, *, fontsize: float = 6, bottom: float = 0.03) -> Path:
    """Write ``footer`` (machine, date: what the figures were measured on) at the bottom left
    of ``fig``, lay it out above it and save it as ``path`` (PNG, folders made)."""
    fig.text(0.01, 0.01, footer, fontsize=fontsize, color=OTHER)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot(doc: dict[str, Any], path: Path) -> Path:
    """Draw the scenario ``doc`` into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    try:
        PLOTS[doc["scenario"]](ax, doc)
        machine = doc.get("machine", {})
        return finish(
            fig,
            path,
            f"{machine.get('cpu_model')}, {machine.get('cpu_count')} cores, "
            f"{doc.get('date', '')} (shared machine: compare the ratios, not the absolutes)",
        )
    finally:
        plt.close(fig)
