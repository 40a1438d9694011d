"""The suite's figures: rates, ratios, latency summaries, the JSON document of a scenario.

Pure, except :func:`environment` (reads the machine) and :func:`write` (writes a file).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bench.measure import percentile

SCENARIO_KEYS = ("scenario", "metric", "higher_is_better", "baseline", "sides", "ratio")
DOCUMENT_KEYS = ("machine", "versions", "date")
SECOND_BASELINE = "dramatiq"


def rate(count: int, seconds: float) -> float | None:
    """``count`` per second, None for an empty or zero-length window."""
    return count / seconds if count > 0 and seconds > 0 else None


def ratio(agentq: float | None, baseline: float | None) -> float | None:
    """agentq's figure over the baseline's, rounded; None when either is missing or zero."""
    if not agentq or not baseline:
        return None
    return round(agentq / baseline, 3)


def latency_summary(seconds: Sequence[float]) -> dict[str, Any]:
    """Count, p50, p95, p99, max and mean of ``seconds``, in milliseconds."""

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    values = list(seconds)
    return {
        "count": len(values),
        "p50_ms": ms(percentile(values, 0.5)),
        "p95_ms": ms(percentile(values, 0.95)),
        "p99_ms": ms(percentile(values, 0.99)),
        "max_ms": ms(max(values)) if values else None,
        "mean_ms": ms(sum(values) / len(values)) if values else None,
    }


def scenario(
    name: str,
    metric: str,
    sides: dict[str, dict[str, Any]],
    *,
    baseline: str = "stock",
    higher_is_better: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """One scenario's document: each side's figures and ``ratio``, agentq's ``metric`` over
    the ``baseline`` side's (stock Celery, or the direct Triton client); with a Dramatiq side,
    also ``ratio_dramatiq``, agentq's over Dramatiq's (the second baseline)."""
    doc = {
        "scenario": name,
        "metric": metric,
        "higher_is_better": higher_is_better,
        "baseline": baseline,
        "sides": sides,
        "ratio": ratio(sides["agentq"].get(metric), sides[baseline].get(metric)),
    }
    if SECOND_BASELINE in sides:
        second = sides[SECOND_BASELINE].get(metric)
        doc["ratio_dramatiq"] = ratio(sides["agentq"].get(metric), second)
    return {**doc, **extra}


def check_shape(doc: dict[str, Any], *, document: bool = True) -> list[str]:
    """What a scenario document lacks (empty when complete); ``document``: it is a file's
    top level, which also names the machine and the versions."""
    keys = SCENARIO_KEYS + (DOCUMENT_KEYS if document else ())
    missing = [k for k in keys if k not in doc]
    sides = doc.get("sides")
    if isinstance(sides, dict):
        missing += [f"sides.{s}" for s in ("agentq", doc.get("baseline")) if s not in sides]
    return missing


def target(value: float | None, bound: float, at_least: bool = True) -> dict[str, Any]:
    """A target and whether ``value`` meets it."""
    met = None if value is None else (value >= bound if at_least else value <= bound)
    return {"min" if at_least else "max": bound, "value": value, "met": met}


# ---- the machine and the versions ----


def _cpu_model() -> str | None:
    # platform.processor() is empty on many Linux systems; /proc/cpuinfo names the CPU.
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), None)


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def git_rev(repo: Path) -> str | None:
    """The checkout's commit, with ``+dirty`` when the tree has changes; None outside git."""

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        )
        return out.stdout.strip()

    try:
        rev = git("rev-parse", "--short=12", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def environment(repo: Path) -> dict[str, Any]:
    """The machine and the versions the figures were taken with."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "machine": {
            "cpu_model": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "ram_gib": _ram_gib(),
            "platform": platform.platform(),
            "load_average_at_start": [round(x, 2) for x in load] if load else None,
        },
        "versions": {
            "python": platform.python_version(),
            "celery": _version("celery"),
            "kombu": _version("kombu"),
            "redis_py": _version("redis"),
            "sqlalchemy": _version("sqlalchemy"),
            "dramatiq": _version("dramatiq"),
            "agentq": git_rev(repo),
        },
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write(doc: dict[str, Any], path: Path) -> None:
    """``doc`` as JSON, written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
