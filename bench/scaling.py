"""Scaling simulation: KEDA's redis trigger (LLEN) vs the true backlog, on real Redis queues.

A recorded arrival pattern (bench/data/arrivals.json: bursts, long runs, a trickle, idle
periods) is replayed as real Celery messages (``agentq.run_agent``, one per step) into two
queues of a real Redis at once, one per trigger. At each polling interval the KEDA + HPA
model of :mod:`app.deploy.autoscale`, with the numbers of our generated ScaledObjects,
reads its metric and sets the replica count:

- ``llen``: what KEDA's redis trigger reads, ``LLEN`` of the queue's list;
- ``backlog``: what the prometheus trigger reads, the exporter's ``agentq_backlog``
  (:func:`app.celery_ext.backlog.read_backlog`: every priority sub-list plus the unacked
  messages), as Prometheus scraped it every 15 s.

A replica is a worker as Celery runs one: it takes messages through kombu's Redis transport
(the project's, as the workers use it) with late acks and ``concurrency`` in flight
(prefetch multiplier 1), holds each for ``step_s``, publishes the run's next step, then
acks. A new replica consumes after ``startup_s`` (pod start); a removed one stops taking
messages, lets its steps finish for ``shutdown_s`` (soft shutdown) and hands back the rest.

Why in-process replicas and not ``agentq worker`` processes: a run scales 0 to 10 replicas
and back several times per trigger, two triggers side by side; starting a Celery worker
takes seconds of CPU on this 2-core machine (shared with everyone's tests), which would
make the scale-up latency the CPU's, not the model's. What decides the result is what
Redis holds (lists, unacked hash) and when, and that is the real transport's doing here.

Time is simulated seconds, run ``time_scale`` times faster (0.1: 10 simulated seconds per
second). ``agentq bench scaling`` or ``python -m bench.scaling``.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import json
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import kombu
import redis
from celery import Celery
from rich.console import Console

from app.agents.registry import AgentRegistry, AgentSpec
from app.celery_ext.app import create_celery
from app.celery_ext.backlog import read_backlog
from app.config import REPO_ROOT, DeploySettings, Settings, WorkerSettings
from app.constants import TASK_RUN_AGENT
from app.deploy import workers
from app.deploy.autoscale import ScalerState, ScalingParams, decide
from app.errors import AgentqError
from app.local.redis import RedisServer

ARRIVALS = REPO_ROOT / "bench" / "data" / "arrivals.json"
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "scaling.json"
TRIGGERS = ("llen", "backlog")
SCRAPE_S = 15.0  # Prometheus' scrape interval (monitoring/prometheus/prometheus.yml)
SCRAPE_LEAD_S = 5.0  # a scrape lands this long before each poll: the value KEDA sees is old


@dataclass(frozen=True)
class SimConfig:
    """The simulated cluster (simulated seconds)."""

    time_scale: float = 0.1
    step_s: float = 10.0
    concurrency: int = 4
    startup_s: float = 10.0
    shutdown_s: float = 30.0
    max_replicas: int = 10
    tail_s: float = 420.0
    sample_s: float = 5.0


class Clock:
    """Simulated seconds since the start, ``time_scale`` real seconds each."""

    def __init__(self, time_scale: float) -> None:
        self.scale = time_scale
        self.t0 = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self.t0) / self.scale

    def wait_until(self, at: float, stop: threading.Event | None = None) -> bool:
        """Sleep until simulated time ``at``; False if ``stop`` was set first."""
        delay = (at - self.now()) * self.scale
        if stop is not None:
            return not stop.wait(max(delay, 0.0))
        if delay > 0:
            time.sleep(delay)
        return True


@dataclass
class Ledger:
    """What happened to the runs of one trigger (simulated seconds)."""

    submitted: dict[str, float] = field(default_factory=dict)
    done: dict[str, float] = field(default_factory=dict)
    waits: list[float] = field(default_factory=list)
    handed_back: int = 0
    zero_while_busy: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def scaling_params(cfg: SimConfig, trigger: str) -> ScalingParams:
    """The model's numbers, read from the ScaledObject ``agentq manifests`` would generate
    for a worker of ``cfg.concurrency`` (target backlog = concurrency, as in keda/)."""
    settings = Settings.model_construct(
        worker=WorkerSettings(concurrency=cfg.concurrency),
        deploy=DeploySettings(max_replicas=cfg.max_replicas),
    )
    spec = AgentSpec(name="sim")
    make = workers.redis_trigger if trigger == "llen" else workers.prometheus_trigger
    return ScalingParams.from_scaled_object(
        workers.scaled_object(spec, settings, make(spec, settings))
    )


class Pool:
    """One agent type's Deployment: its replicas, its queue and the autoscaler's state."""

    def __init__(self, trigger: str, celery: Celery, client: Any, cfg: SimConfig, clock: Clock):
        self.trigger, self.celery, self.client, self.cfg, self.clock = (
            trigger,
            celery,
            client,
            cfg,
            clock,
        )
        self.agent = f"sim-{trigger}"
        self.queue = f"agent.{self.agent}"
        self.params = scaling_params(cfg, trigger)
        self.state = ScalerState()
        self.replicas: list[Replica] = []
        self.ledger = Ledger()
        self.scraped = 0.0

    def publish(self, run_id: str, step: int, steps: int, now: float) -> None:
        kwargs = {
            "agent": self.agent,
            "run_id": run_id,
            "step": step,
            "steps": steps,
            "published": now,
        }
        self.celery.send_task(TASK_RUN_AGENT, kwargs=kwargs, ignore_result=True)

    def submit(self, steps: int, now: float) -> None:
        run_id = uuid.uuid4().hex
        with self.ledger.lock:
            self.ledger.submitted[run_id] = now
        self.publish(run_id, 0, steps, now)

    def step_done(self, kwargs: dict[str, Any], now: float) -> None:
        """A step finished: publish the next one (then the caller acks), or the run is done."""
        if kwargs["step"] + 1 < kwargs["steps"]:
            self.publish(kwargs["run_id"], kwargs["step"] + 1, kwargs["steps"], now)
        else:
            with self.ledger.lock:
                self.ledger.done[kwargs["run_id"]] = now

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if not r.stopping.is_set()]

    def metric(self) -> float:
        if self.trigger == "llen":
            return float(self.client.llen(self.queue))  # KEDA's redis trigger: one list
        return self.scraped

    def poll(self, now: float, backlog: int) -> int:
        current = len(self.live())
        desired = decide(self.state, self.metric(), now, self.params)
        if desired == 0 and current > 0 and backlog > 0:
            self.ledger.zero_while_busy.append(now)
        self.reconcile(desired, now)
        return desired

    def reconcile(self, desired: int, now: float) -> None:
        live = self.live()
        for _ in range(desired - len(live)):
            replica = Replica(self, now)
            self.replicas.append(replica)
            replica.thread.start()
        # A ReplicaSet removes pods not yet ready first, then the newest.
        for replica in sorted(live, key=lambda r: (r.ready, -r.created))[
            : max(len(live) - desired, 0)
        ]:
            replica.stopping.set()

    def close(self) -> None:
        for replica in self.replicas:
            replica.stopping.set()
        for replica in self.replicas:
            replica.thread.join(timeout=60)


class Replica:
    """One worker pod (see the module docstring)."""

    def __init__(self, pool: Pool, created: float) -> None:
        self.pool = pool
        self.created = created
        self.stopped: float | None = None
        self.ready = False
        self.stopping = threading.Event()
        self.holding: list[tuple[float, int, Any, dict[str, Any]]] = []
        self._seq = itertools.count()
        self.thread = threading.Thread(
            target=self._run, name=f"{pool.trigger}-replica", daemon=True
        )

    def _run(self) -> None:
        clock, cfg = self.pool.clock, self.pool.cfg
        try:
            if clock.wait_until(self.created + cfg.startup_s, self.stopping):
                self._consume()
        finally:
            self.stopped = clock.now()

    def _take(self, body: Any, message: Any) -> None:
        now = self.pool.clock.now()
        kwargs = body[1]
        with self.pool.ledger.lock:
            self.pool.ledger.waits.append(now - kwargs["published"])
        heapq.heappush(self.holding, (now + self.pool.cfg.step_s, next(self._seq), message, kwargs))

    def _finish_due(self) -> None:
        now = self.pool.clock.now()
        while self.holding and self.holding[0][0] <= now:
            _, _, message, kwargs = heapq.heappop(self.holding)
            self.pool.step_done(kwargs, now)
            message.ack()  # after the next step is published, as the worker does

    def _consume(self) -> None:
        pool, cfg = self.pool, self.pool.cfg
        queue = pool.celery.amqp.queues[pool.queue]
        with pool.celery.connection_for_read() as conn:
            consumer = kombu.Consumer(
                conn,
                queues=[queue],
                callbacks=[self._take],
                accept=["json"],
                prefetch_count=cfg.concurrency,
            )
            consumer.consume()
            self.ready = True
            while not self.stopping.is_set():
                with contextlib.suppress(TimeoutError):  # socket.timeout: nothing came
                    conn.drain_events(timeout=0.02)
                self._finish_due()
            consumer.cancel()
            # Soft shutdown: steps in flight may finish; at the deadline the rest go back.
            deadline = pool.clock.now() + cfg.shutdown_s
            while self.holding and pool.clock.now() < deadline:
                time.sleep(0.02)
                self._finish_due()
            for _, _, message, _ in self.holding:
                message.reject(requeue=True)
            with pool.ledger.lock:
                pool.ledger.handed_back += len(self.holding)
            self.holding.clear()


def load_arrivals(path: Path = ARRIVALS) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _feed(
    pools: list[Pool], runs: list[dict[str, Any]], clock: Clock, stop: threading.Event
) -> None:
    for run in runs:
        if not clock.wait_until(run["at_s"], stop):
            return
        for pool in pools:
            pool.submit(run["steps"], clock.now())


def sim_celery(redis_url: str) -> Celery:
    """The producer side for the simulated agent types, one per trigger."""
    settings = Settings(redis_url=redis_url, database_url="sqlite://")
    return create_celery(settings, AgentRegistry(AgentSpec(name=f"sim-{t}") for t in TRIGGERS))


def simulate(cfg: SimConfig, arrivals: dict[str, Any], console: Console) -> dict[str, Any]:
    """Run both triggers side by side on one embedded Redis; the samples and ledgers."""
    server = RedisServer().start()
    try:
        celery = sim_celery(server.url)
        client = redis.Redis.from_url(server.url)
        clock = Clock(cfg.time_scale)
        pools = [Pool(t, celery, client, cfg, clock) for t in TRIGGERS]
        stop = threading.Event()
        feeder = threading.Thread(
            target=_feed, args=(pools, arrivals["runs"], clock, stop), daemon=True
        )
        end = max(r["at_s"] for r in arrivals["runs"]) + cfg.tail_s
        samples: dict[str, list[dict[str, float]]] = {p.trigger: [] for p in pools}
        polling = pools[0].params.polling_s
        feeder.start()
        try:
            with console.status("simulating") as status:
                for tick in itertools.count():
                    t = tick * cfg.sample_s
                    if t > end:
                        break
                    clock.wait_until(t)
                    backlog = read_backlog(client, [p.queue for p in pools])
                    for pool in pools:
                        total = backlog[pool.queue].total
                        if (t + SCRAPE_LEAD_S) % SCRAPE_S < 1e-6:
                            pool.scraped = float(total)
                        if t % polling < 1e-6:
                            pool.poll(t, total)
                        samples[pool.trigger].append(
                            {
                                "t": t,
                                "replicas": len(pool.live()),
                                "ready": sum(1 for r in pool.live() if r.ready),
                                "llen": int(client.llen(pool.queue)),
                                "backlog": total,
                                "unacked": backlog[pool.queue].unacked,
                            }
                        )
                    status.update(f"simulating: t = {t:.0f} of {end:.0f} s")
        finally:
            stop.set()
            for pool in pools:
                pool.close()
            feeder.join(timeout=10)
            client.close()
            celery.close()
        return {
            p.trigger: {
                "params": asdict(p.params),
                "samples": samples[p.trigger],
                "ledger": p.ledger,
                "lifetimes": [
                    (r.created, r.stopped if r.stopped is not None else end) for r in p.replicas
                ],
            }
            for p in pools
        }
    finally:
        server.stop()


def main(cfg: SimConfig, out: str | None, plot: str | None, console: Console) -> int:
    """Simulate, print the table, write the JSON and the PNG (exit code)."""
    from bench.scaling_report import report, show, write_plot

    if cfg.time_scale <= 0 or cfg.concurrency < 1 or cfg.max_replicas < 1:
        console.print("[red]time scale, concurrency and max replicas must be positive[/red]")
        return 2
    arrivals = load_arrivals()
    started = time.monotonic()
    try:
        raw = simulate(cfg, arrivals, console)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; Redis and the replicas are stopped[/yellow]")
        return 130
    except AgentqError as exc:
        console.print(f"[red]simulation failed:[/red] {exc}")
        return 1
    result = report(cfg, arrivals, raw, time.monotonic() - started)
    show(result, console)
    path = Path(out) if out else DEFAULT_OUT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    png = Path(plot) if plot else path.with_suffix(".png")
    write_plot(result, png)
    console.print(f"results in {path}, plot in {png}")
    incomplete = any(s["summary"]["runs_incomplete"] for s in result["triggers"].values())
    return 1 if incomplete else 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__)
    parser.add_argument("--time-scale", type=float, default=SimConfig.time_scale)
    parser.add_argument("--step-s", type=float, default=SimConfig.step_s)
    parser.add_argument("--concurrency", type=int, default=SimConfig.concurrency)
    parser.add_argument("--out", default=None, help=f"JSON results (default {DEFAULT_OUT})")
    parser.add_argument("--plot", default=None, help="PNG (default: beside the JSON)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse(None)
    config = SimConfig(time_scale=args.time_scale, step_s=args.step_s, concurrency=args.concurrency)
    sys.exit(main(config, args.out, args.plot, Console()))
