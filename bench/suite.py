"""The benchmark suite: agentq against stock Celery, Dramatiq (dispatch, latency, coldstart)
and Triton's own client, in one run.

``agentq bench all|enqueue|dispatch|latency|coldstart|memory|inference`` (``--quick`` for
smaller counts). Each scenario starts what it needs (its own Redis on a free port, worker
processes, Triton), runs a bounded workload, and writes ``bench/results/<scenario>.json``
(each side's figures, ``ratio``, ``ratio_dramatiq`` where Dramatiq ran, the machine, its load
and the versions) and ``<scenario>.png``; a table of every ratio ends the run. The machines
these run on are shared and noisy: compare the ratios measured in one run, not the absolute
figures across runs.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from app.config import REPO_ROOT
from app.errors import AgentqError
from bench import coldstart, dispatch, enqueue, latency, memory
from bench.measure import BenchError
from bench.plots import plot
from bench.report import environment, target, write
from bench.services import POSTGRES_URL, Services

SCENARIOS = ("enqueue", "dispatch", "latency", "coldstart", "memory", "inference")
DEFAULT_OUT = REPO_ROOT / "bench" / "results"


@dataclass(frozen=True)
class Plan:
    """How much each scenario does."""

    enqueue_runs: int = 20_000
    dispatch_runs: int = 20_000
    latency_s: float = 10.0
    saturation_runs: int = 3_000  # latency alone: the short drain that finds saturation
    coldstart_rounds: int = 5  # per side, the sides taking turns
    memory_hold_ms: int = 3_000
    inference_levels: tuple[int, ...] = (1, 16, 64, 256)
    inference_latency_ms: int = 200
    concurrency: int = 8  # threads of each side's worker (dispatch, latency)
    postgres_url: str | None = POSTGRES_URL


FULL = Plan()
QUICK = Plan(
    enqueue_runs=2_000,
    dispatch_runs=2_000,
    latency_s=4.0,
    saturation_runs=1_000,
    coldstart_rounds=3,
    memory_hold_ms=1_500,
    inference_levels=(16, 64),
)


class Suite:
    """Runs scenarios against one set of services; keeps each document it produced."""

    def __init__(self, plan: Plan, out_dir: Path, console: Console) -> None:
        self.plan, self.out_dir, self.console = plan, out_dir, console
        self.docs: dict[str, dict[str, Any]] = {}
        self.env = environment(REPO_ROOT)

    def run(self, names: list[str], stack: ExitStack, tmp: Path) -> None:
        services: Services | None = None
        for name in names:
            self.console.rule(name)
            started, load_before = time.monotonic(), _load()
            try:
                if name == "inference":
                    doc = self.inference(tmp)
                else:
                    if services is None:
                        services = Services(stack, tmp, self.plan.concurrency)
                    with self.console.status(f"{name}: running"):
                        doc = self.measure(name, services)
            except (AgentqError, BenchError) as exc:
                self.console.print(f"[red]{name} failed:[/red] {exc}")
                doc = {"scenario": name, "error": str(exc)}
            doc["duration_s"] = round(time.monotonic() - started, 1)
            doc["load_average"] = {"before": load_before, "after": _load()}
            self.save(name, doc)

    def measure(self, name: str, services: Services) -> dict[str, Any]:
        p = self.plan
        match name:
            case "enqueue":
                return enqueue.run(services, p.enqueue_runs)
            case "dispatch":
                return dispatch.run(services, p.dispatch_runs, p.postgres_url)
            case "latency":
                return latency.run(services, p.latency_s, self._saturation(), p.saturation_runs)
            case "coldstart":
                return coldstart.run(services, p.coldstart_rounds)
            case "memory":
                return memory.run(services, p.memory_hold_ms)
        raise BenchError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")

    def _saturation(self) -> dict[str, float | None] | None:
        done = self.docs.get("dispatch")
        if done is None or "sides" not in done:
            return None
        return {side: figures["runs_per_s"] for side, figures in done["sides"].items()}

    def inference(self, tmp: Path) -> dict[str, Any]:
        """bench/inference.py at the plan's levels, its report given the suite's keys."""
        from bench import inference

        p = self.plan
        out = tmp / "inference.json"
        levels = list(p.inference_levels)
        code = inference.main(levels, p.inference_latency_ms, str(out), self.console)
        if not out.exists():
            raise BenchError(f"the inference bench wrote no results (exit code {code})")
        doc: dict[str, Any] = json.loads(out.read_text())
        doc.update(inference_summary(doc, inference.TARGET_RATIO_AT, inference.TARGET_RATIO))
        doc["machine"] = {**doc.get("machine", {}), **self.env["machine"]}
        doc["versions"] = {**doc.get("versions", {}), **self.env["versions"]}
        doc["exit_code"] = code
        return doc

    def save(self, name: str, doc: dict[str, Any]) -> None:
        doc = {**doc, **{k: v for k, v in self.env.items() if k not in doc}}
        if name != "inference":
            doc["plan"] = asdict(self.plan)
        self.docs[name] = doc
        write(doc, self.out_dir / f"{name}.json")
        if "error" not in doc:
            plot(doc, self.out_dir / f"{name}.png")


def _load() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages (it is shared: say how busy it was)."""
    return [round(x, 2) for x in os.getloadavg()]


def inference_summary(report: dict[str, Any], at: int, bound: float) -> dict[str, Any]:
    """The suite's keys for bench/inference.py's report: the ratio at C = ``at`` (else the
    highest level below it, else the lowest), direct tritonclient as the baseline."""
    levels = report["levels"]
    below = [row for row in levels if row["concurrency"] <= at]
    row = below[-1] if below else levels[0]
    return {
        "scenario": "inference",
        "metric": "calls_per_s",
        "higher_is_better": True,
        "baseline": "direct",
        "sides": {"agentq": row["agentq"], "direct": row["direct"]},
        "ratio": row["ratio"],
        "ratio_at_concurrency": row["concurrency"],
        "targets": {"ratio": target(row["ratio"], bound)},
    }


# ---- the closing table ----

Row = tuple[str, str, str, str, str]


def _num(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}{unit}" if abs(value) >= 100 else f"{value:,.2f}{unit}"


def _target(doc: dict[str, Any], key: str) -> str:
    t = doc.get("targets", {}).get(key)
    if not t:
        return ""
    bound = f"≥ {t['min']}" if "min" in t else f"≤ {t['max']}"
    mark = {True: "[green]✓[/green]", False: "[red]✗[/red]", None: "?"}[t["met"]]
    return f"{mark} {bound}"


def _side(doc: dict[str, Any], side: str, key: str) -> Any:
    return (doc["sides"].get(side) or {}).get(key)


def rows(docs: dict[str, dict[str, Any]]) -> list[Row]:
    """One line per figure that has a target: what, agentq, baseline, ratio, target."""
    out: list[Row] = []

    def add(label: str, doc: dict[str, Any], key: str, unit: str, r: Any, target: str) -> None:
        a, b = doc["sides"]["agentq"].get(key), doc["sides"][doc["baseline"]].get(key)
        out.append((label, _num(a, unit), _num(b, unit), _num(r), _target(doc, target)))

    def vs_dramatiq(doc: dict[str, Any], value: Any, r: Any) -> None:
        if "dramatiq" in doc["sides"]:
            out.append(("  vs Dramatiq", "", _num(value), _num(r), ""))

    for name, doc in docs.items():
        if "error" in doc:
            out.append((name, "[red]failed[/red]", "", "", doc["error"][:60]))
            continue
        if name == "enqueue":
            add("enqueue runs/s (vs delay loop)", doc, "runs_per_s", "", doc["ratio"], "ratio")
            raw = doc["sides"]["raw_ceiling"]["runs_per_s"]
            out.append(("  vs raw LPUSH ceiling", "", _num(raw), _num(doc["ratio_to_raw_ceiling"]),
                        _target(doc, "ratio_to_raw_ceiling")))  # fmt: skip
        elif name == "dispatch":
            add("dispatch runs/s, SQLite", doc, "runs_per_s", "", doc["ratio"], "ratio")
            vs_dramatiq(doc, _side(doc, "dramatiq", "runs_per_s"), doc.get("ratio_dramatiq"))
            pg = doc.get("postgres", {})
            if "sides" in pg:
                add("dispatch runs/s, PostgreSQL", pg, "runs_per_s", "", pg["ratio"], "ratio")
                vs_dramatiq(pg, _side(pg, "dramatiq", "runs_per_s"), pg.get("ratio_dramatiq"))
            else:
                out.append(("dispatch, PostgreSQL", "skipped", "", "", pg.get("skipped", "")[:60]))
        elif name == "latency":
            add("latency p50 ms", doc, "p50_ms", "", doc["ratio"], "ratio")
            vs_dramatiq(doc, _side(doc, "dramatiq", "p50_ms"), doc.get("ratio_dramatiq"))
            a = doc["sides"]["agentq"]["enqueue_to_start"]["p99_ms"]
            b = doc["sides"]["stock"]["enqueue_to_start"]["p99_ms"]
            out.append(("latency p99 ms", _num(a), _num(b), _num(doc["ratio_p99"]),
                        _target(doc, "ratio_p99")))  # fmt: skip
            p99 = (_side(doc, "dramatiq", "enqueue_to_start") or {}).get("p99_ms")
            vs_dramatiq(doc, p99, doc.get("ratio_p99_dramatiq"))
        elif name == "coldstart":
            add("cold start s, spawn → first run done", doc, "median_s", "", doc["ratio"], "ratio")
            vs_dramatiq(doc, _side(doc, "dramatiq", "median_s"), doc.get("ratio_dramatiq"))
            out.append(("  agentq median", _num(doc["sides"]["agentq"]["median_s"]), "", "",
                        _target(doc, "agentq_median_s")))  # fmt: skip
        elif name == "memory":
            add("memory peak RSS MiB, 64 in flight", doc, "peak_rss_mib", "", doc["ratio"],
                "agentq_peak_rss_mib")  # fmt: skip
        elif name == "inference":
            c = doc["ratio_at_concurrency"]
            add(f"inference calls/s at C={c} (vs direct)", doc, "calls_per_s", "", doc["ratio"],
                "ratio")  # fmt: skip
    return out


def show(docs: dict[str, dict[str, Any]], console: Console) -> None:
    table = Table(title="agentq vs the baseline, measured side by side in this run")
    for column in ("figure", "agentq", "baseline", "ratio", "target"):
        table.add_column(column, justify="left" if column in ("figure", "target") else "right")
    for row in rows(docs):
        table.add_row(*row)
    console.print(table)
    console.print("baseline: stock Celery (same Redis, pool and concurrency); 'vs Dramatiq': "
                  "Dramatiq, 1 process x the same threads, same Redis; inference: direct "
                  "tritonclient. Ratios are agentq / baseline.")  # fmt: skip


def main(names: list[str], plan: Plan, out_dir: Path | None, console: Console) -> int:
    """Run ``names`` (``all``: every scenario); print the table; exit code 1 if one failed."""
    chosen = list(SCENARIOS) if names == ["all"] else names
    unknown = [n for n in chosen if n not in SCENARIOS]
    if unknown:
        console.print(f"[red]unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}[/red]")
        return 2
    suite = Suite(plan, out_dir or DEFAULT_OUT, console)
    started = time.monotonic()
    try:
        with ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agentq-suite-")))
            suite.run(chosen, stack, tmp)
            with console.status("stopping what the suite started"):
                stack.close()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; every process the suite started is stopped[/yellow]")
        return 130
    show(suite.docs, console)
    console.print(f"suite took {time.monotonic() - started:.0f} s; results in {suite.out_dir}")
    return 1 if any("error" in doc for doc in suite.docs.values()) else 0


def plan_for(quick: bool, **overrides: Any) -> Plan:
    """The full or quick plan with the given fields replaced (None: keep the plan's)."""
    base = QUICK if quick else FULL
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
