"""The scaling simulation's figures: summary per trigger, rich table, PNG plot."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.measure import percentile

LABELS = {
    "llen": "redis trigger (LLEN of the list)",
    "backlog": "prometheus trigger (true backlog)",
}


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def phase_of(at: float, phases: list[dict[str, Any]]) -> str:
    """The phase a run submitted at ``at`` belongs to: the last one started by then."""
    name = phases[0]["name"]
    for phase in phases:
        if at >= phase["start_s"] - 1.0:  # submit times trail the recorded ones a little
            name = phase["name"]
    return str(name)


def summarize(data: dict[str, Any], phases: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of one trigger from its samples, ledger and replica lifetimes."""
    ledger, samples = data["ledger"], data["samples"]
    submitted, done = ledger.submitted, ledger.done
    latencies = [done[r] - at for r, at in submitted.items() if r in done]
    drains: dict[str, float | None] = {}
    phase_latency: dict[str, float | None] = {}
    for phase in phases:
        runs = [r for r, at in submitted.items() if phase_of(at, phases) == phase["name"]]
        finished = [done[r] for r in runs if r in done]
        complete = runs and len(finished) == len(runs)
        drains[phase["name"]] = _r(max(finished) - phase["start_s"]) if complete else None
        took = [done[r] - submitted[r] for r in runs if r in done]
        phase_latency[phase["name"]] = _r(percentile(took, 0.5))
    return {
        "runs_submitted": len(submitted),
        "runs_completed": len(done),
        "runs_incomplete": len(submitted) - len(done),
        "time_to_drain_s": drains,
        "run_latency_p50_by_phase_s": phase_latency,
        "peak_replicas": max(s["replicas"] for s in samples),
        "replica_seconds": round(sum(end - start for start, end in data["lifetimes"])),
        "max_wait_s": _r(max(ledger.waits, default=0.0)),
        "p95_wait_s": _r(percentile(ledger.waits, 0.95)),
        "run_latency_p50_s": _r(percentile(latencies, 0.5)),
        "run_latency_max_s": _r(max(latencies, default=0.0)),
        "steps_handed_back": ledger.handed_back,
        "scaled_to_zero_while_busy_at_s": ledger.zero_while_busy,
    }


def report(
    cfg: Any, arrivals: dict[str, Any], raw: dict[str, Any], wall_s: float
) -> dict[str, Any]:
    """Everything the JSON file holds."""
    phases = arrivals["phases"]
    return {
        "bench": "scaling",
        "config": asdict(cfg),
        "phases": phases,
        "runs": len(arrivals["runs"]),
        "steps": sum(r["steps"] for r in arrivals["runs"]),
        "triggers": {
            trigger: {
                "label": LABELS[trigger],
                "params": data["params"],
                "summary": summarize(data, phases),
                "samples": data["samples"],
            }
            for trigger, data in raw.items()
        },
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_s": round(wall_s, 1),
    }


def _fmt(value: Any, unit: str = "") -> str:
    return "not drained" if value is None else f"{value:g}{unit}"


def show(result: dict[str, Any], console: Console) -> None:
    """The table: one column per trigger."""
    triggers = result["triggers"]
    table = Table(title=f"scaling: {result['runs']} runs, {result['steps']} steps (simulated s)")
    table.add_column("")
    for trigger in triggers.values():
        table.add_column(trigger["label"], justify="right")
    sums = [t["summary"] for t in triggers.values()]
    for phase in result["phases"]:
        name = phase["name"]
        table.add_row(
            f"time to drain: {name}", *(_fmt(s["time_to_drain_s"][name], " s") for s in sums)
        )
    for phase in result["phases"]:
        name = phase["name"]
        latencies = (_fmt(s["run_latency_p50_by_phase_s"][name], " s") for s in sums)
        table.add_row(f"run latency p50: {name}", *latencies)
    rows = [
        ("peak replicas", "peak_replicas", ""),
        ("replica-seconds", "replica_seconds", ""),
        ("max wait of a step", "max_wait_s", " s"),
        ("p95 wait of a step", "p95_wait_s", " s"),
        ("run latency p50", "run_latency_p50_s", " s"),
        ("run latency max", "run_latency_max_s", " s"),
        ("steps handed back at scale-in", "steps_handed_back", ""),
        ("runs not finished", "runs_incomplete", ""),
    ]
    for label, key, unit in rows:
        table.add_row(label, *(_fmt(s[key], unit) for s in sums))
    table.add_row(
        "scaled to zero with work queued",
        *(str(len(s["scaled_to_zero_while_busy_at_s"])) for s in sums),
    )
    console.print(table)
    cfg = result["config"]
    console.print(
        f"{cfg['concurrency']} steps in flight per replica, {cfg['step_s']:g} s per step, "
        f"pods ready {cfg['startup_s']:g} s after creation; target backlog per replica "
        f"{next(iter(triggers.values()))['params']['target']:g}; wall time {result['wall_s']:g} s "
        f"at time scale {cfg['time_scale']:g}"
    )


def write_plot(result: dict[str, Any], path: Path) -> None:
    """Backlog and replica curves, one panel per trigger, sharing the time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    triggers = result["triggers"]
    fig, axes = plt.subplots(len(triggers), 1, figsize=(11, 7), sharex=True, sharey=True)
    top = max(s["backlog"] for t in triggers.values() for s in t["samples"])
    peak = max(t["summary"]["peak_replicas"] for t in triggers.values())
    for ax, trigger in zip(axes, triggers.values(), strict=True):
        t = [s["t"] for s in trigger["samples"]]
        ax.fill_between(t, [s["backlog"] for s in trigger["samples"]], step="post", alpha=0.25,
                        color="tab:blue", label="true backlog (lists + unacked)")  # fmt: skip
        ax.step(t, [s["llen"] for s in trigger["samples"]], where="post", color="tab:blue",
                lw=1, ls="--", label="LLEN of the queue")  # fmt: skip
        for phase in result["phases"]:
            ax.axvspan(phase["start_s"], phase["end_s"], color="0.9", lw=0, zorder=0)
        ax.set_ylim(0, top * 1.05)
        ax.set_ylabel("step messages")
        twin = ax.twinx()
        twin.step(t, [s["replicas"] for s in trigger["samples"]], where="post", color="tab:red",
                  lw=2, label="replicas")  # fmt: skip
        for at in trigger["summary"]["scaled_to_zero_while_busy_at_s"]:
            twin.plot([at], [0], marker="v", color="black", ms=8)
        twin.set_ylim(0, peak * 1.15)
        twin.set_ylabel("replicas", color="tab:red")
        s = trigger["summary"]
        ax.set_title(
            f"{trigger['label']}: peak {s['peak_replicas']} replicas, "
            f"{s['replica_seconds']} replica-s, max wait {s['max_wait_s']:g} s",
            fontsize=10,
        )
        lines = ax.get_legend_handles_labels()
        extra = twin.get_legend_handles_labels()
        ax.legend(lines[0] + extra[0], lines[1] + extra[1], loc="upper right", fontsize=8)
    axes[-1].set_xlabel(
        "simulated seconds (grey: arrival phases; ▼ scaled to zero with work queued)"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
