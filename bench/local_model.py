"""Local-model benchmark: the real model's time to first token and tokens/s, through the
queue and directly, in one run on one Triton.

The ``llm`` extra's SmolLM2-135M-Instruct (llama.cpp in Triton's python backend, one
instance per model, one thread, n_ctx 2048: :func:`app.local.llm.llm_repository`'s
defaults) answers the same questions, greedily, up to ``max_tokens`` tokens:

- **direct**: ``tritonclient`` (gRPC) with the prompt the worker sends (the request rendered
  with the model's chat template): streamed to ``ensemble_stream``, and unary to ``ensemble``;
- **agentq**: runs of an agent without tools, submitted to Redis and served by one worker
  process, with ``stream=True`` (tokens read from the run's stream) and without (the answer
  from ``result.get()``).

Streamed, each side gives the time from the send (the submit) to the first piece of the
answer, the decode rate (the answer's tokens after the first over the time from the first
piece to the last, counted with the model's tokenizer) and the time to the whole answer;
unary, the time to the answer. The sides alternate request by request, each asking the
question the other asked the round before: every request follows a different question on
its model, so none finds its whole prompt in llama.cpp's cache (the system prompt it shares
with the others it finds on both sides alike).

``agentq bench local-model`` or ``python -m bench.local_model``; JSON and PNG to --out-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import tritonclient.grpc as grpcclient
from celery import Celery
from rich.console import Console
from tritonclient.utils import InferenceServerException

from app.agents.prompts import conversation
from app.celery_ext.app import create_celery
from app.celery_ext.context import context_of
from app.config import REPO_ROOT, Settings, TritonSettings
from app.errors import AgentqError
from app.inference.backend import ChatRequest, GenerationParams
from app.inference.tokens import TokenCounter
from app.inference.triton import TritonBackend, build_inputs
from app.local import llm
from app.local.processes import log_tail
from app.local.redis import RedisServer
from app.local.triton import TritonServer, install_triton
from app.local.workers import WorkerProcess
from app.memory.migrate import migrate
from app.memory.sessions import SessionStore
from app.producer.submit import submit
from app.tasks.relay import ATTEMPT, END, TOKEN
from bench.local_model_report import (
    AGENTQ,
    DIRECT,
    STREAM,
    UNARY,
    Sample,
    document,
    schedule,
    show,
    write_plot,
)
from bench.measure import BenchError
from bench.report import environment, write

AGENT = "local-bench"
SYSTEM_PROMPT = "You are a helpful assistant. Answer in a few sentences."
QUESTIONS = (
    "Why is the sky blue?",
    "What does a compiler do?",
    "How do plants make their food?",
    "Why do we have seasons on Earth?",
    "What is a task queue used for?",
    "How does a refrigerator keep food cold?",
)
WARM_UP = "Say hello."
MAX_TOKENS, REQUESTS = 64, 12
TIMEOUT_S = 120.0
DEFAULT_OUT_DIR = REPO_ROOT / "bench" / "results"


# ---- (a) tritonclient directly ----


def _piece(result: Any) -> str:
    chunk = result.as_numpy("text_output")
    if chunk is None or chunk.size == 0:
        return ""
    value = chunk.reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _final(result: Any) -> bool:
    param = result.get_response().parameters.get("triton_final_response")
    return bool(param is not None and param.bool_param)


class Direct:
    """A user of Triton: one gRPC client, a stream opened per streamed request; the prompt
    rendered as the worker renders it for the agent's request."""

    def __init__(
        self, url: str, settings: Settings, request_for: Callable[[str], ChatRequest]
    ) -> None:
        triton = settings.triton
        self.client = grpcclient.InferenceServerClient(url)
        # The worker's backend, only to find the model's chat template as the worker does.
        self.backend = TritonBackend(
            url, triton.model, triton.stream_model, chat_templates=triton.chat_templates
        )
        self.counter = TokenCounter("triton", triton.tokenizers, triton.model)
        self.model, self.stream_model = triton.model, triton.stream_model
        self.request_for = request_for

    def count(self, text: str) -> int:
        return self.counter.count(self.model, text)[0]

    def _prompt(self, question: str) -> tuple[str, GenerationParams]:
        request = self.request_for(question)
        return self.backend.template(request).render(request), request.params

    def stream(self, question: str) -> Sample:
        prompt, params = self._prompt(question)
        replies: queue.Queue[tuple[float, Any, Any]] = queue.Queue()
        pieces: list[str] = []
        first = last = None
        self.client.start_stream(
            callback=lambda result, error: replies.put((time.perf_counter(), result, error))
        )
        started = time.perf_counter()
        try:
            self.client.async_stream_infer(
                self.stream_model,
                build_inputs(prompt, params, stream=True),
                enable_empty_final_response=True,
            )
            while True:
                at, result, error = replies.get(timeout=TIMEOUT_S)
                if error is not None:
                    return Sample(DIRECT, STREAM, question, at - started, error=str(error))
                if piece := _piece(result):
                    pieces.append(piece)
                    first = first if first is not None else at - started
                    last = at - started
                if _final(result):
                    break
        finally:
            self.client.stop_stream()
        text = "".join(pieces)
        total = time.perf_counter() - started
        return Sample(
            DIRECT, STREAM, question, total, text, self.count(text), first, last, self.count(prompt)
        )

    def unary(self, question: str) -> Sample:
        prompt, params = self._prompt(question)
        started = time.perf_counter()
        try:
            result = self.client.infer(self.model, build_inputs(prompt, params))
        except InferenceServerException as exc:
            return Sample(DIRECT, UNARY, question, time.perf_counter() - started, error=str(exc))
        total = time.perf_counter() - started
        text = _piece(result)
        prompt_tokens = self.count(prompt)
        return Sample(
            DIRECT, UNARY, question, total, text, self.count(text), prompt_tokens=prompt_tokens
        )

    def close(self) -> None:
        self.backend.close()
        self.client.close()


# ---- (b) agent runs through Redis and a worker ----


class Queued:
    """Runs of the bench agent submitted to Redis, served by the worker; the prompt's tokens
    as the worker's step record has them."""

    def __init__(self, celery: Celery, store: SessionStore, count: Callable[[str], int]) -> None:
        self.celery, self.store, self.count = celery, store, count

    def _prompt_tokens(self, run_id: str) -> int | None:
        run = self.store.load_run(run_id)
        return run.steps[0].tokens_in if run is not None and run.steps else None

    def stream(self, question: str) -> Sample:
        pieces: list[str] = []
        first = last = to_model_call = relay = None
        end: dict[str, Any] = {}
        submitted_ns = time.time_ns()  # the worker stamps its events with the wall clock
        started = time.perf_counter()
        result = submit(AGENT, question, stream=True, celery=self.celery)
        for event in result.events(timeout=TIMEOUT_S):
            at = time.perf_counter() - started
            if event.kind == ATTEMPT and to_model_call is None:
                to_model_call = (event.ts_ns - submitted_ns) / 1e9
            elif event.kind == TOKEN and event.text:
                pieces.append(event.text)
                if first is None:
                    first, relay = at, (time.time_ns() - event.ts_ns) / 1e9
                last = at
            elif event.kind == END:
                end = event.data or {}
        total = time.perf_counter() - started
        if end.get("status") != "succeeded":
            return Sample(AGENTQ, STREAM, question, total, error=str(end.get("error") or end))
        text = "".join(pieces)
        prompt_tokens = self._prompt_tokens(result.id)
        return Sample(
            AGENTQ, STREAM, question, total, text, self.count(text), first, last, prompt_tokens,
            to_model_call, relay,
        )  # fmt: skip

    def unary(self, question: str) -> Sample:
        started = time.perf_counter()
        result = submit(AGENT, question, celery=self.celery)
        try:
            answer = str(result.get(timeout=TIMEOUT_S))
        except AgentqError as exc:
            return Sample(AGENTQ, UNARY, question, time.perf_counter() - started, error=str(exc))
        total = time.perf_counter() - started
        prompt_tokens = self._prompt_tokens(result.id)
        return Sample(
            AGENTQ, UNARY, question, total, answer, self.count(answer), prompt_tokens=prompt_tokens
        )


class Bench:
    """Redis, the local model's Triton and one worker, started into ``stack`` (which stops
    them by PID)."""

    def __init__(self, stack: ExitStack, tmp: Path, max_tokens: int, console: Console) -> None:
        self.console = console
        self.triton_exit: int | None = None
        gguf = llm.gguf_path()  # before anything starts: the llm extra is installed
        folder = llm.prepare_model(tmp / "smollm2", gguf)
        repository = llm.llm_repository(tmp / "models", gguf=gguf)
        redis_server = stack.enter_context(RedisServer())
        self.triton = TritonServer(
            install_triton(Settings().triton.home), repository, log_path=tmp / "triton.log"
        )
        stack.callback(self._stop_triton)
        self.triton.start()
        agents = tmp / "agents.yaml"
        agent = {"name": AGENT, "system_prompt": SYSTEM_PROMPT, "max_tokens": max_tokens,
                 "temperature": 0.0, "max_steps": 1}  # fmt: skip
        agents.write_text(json.dumps({"agents": [agent]}))  # JSON is YAML
        settings = Settings(
            redis_url=redis_server.url,
            database_url=f"sqlite:///{tmp / 'agentq.sqlite3'}",
            agents_file=agents,
            triton=TritonSettings(urls=[self.triton.grpc_url]),
        )
        self.settings = llm.with_local_model(settings, folder)
        migrate(self.settings.database_url)
        self.celery = create_celery(self.settings)
        stack.callback(self.celery.close)
        self.worker = WorkerProcess(self.settings, [AGENT], log_dir=tmp)
        stack.callback(self.worker.stop)
        self.worker.start(self.celery)
        spec = context_of(self.celery).registry.spec(AGENT)

        def request_for(question: str) -> ChatRequest:
            # A run's first (and only) step, as the worker's runner builds it.
            params = GenerationParams(max_tokens=max_tokens, temperature=spec.temperature)
            messages = conversation(spec.system_prompt, question, ())
            return ChatRequest(messages, params, (), spec.model, tool_choice=spec.tool_choice_at(0))

        self.direct = Direct(self.triton.grpc_url, self.settings, request_for)
        stack.callback(self.direct.close)
        store = SessionStore.from_url(self.settings.database_url, migrate=False)
        stack.callback(store.close)
        self.queued = Queued(self.celery, store, self.direct.count)

    def _stop_triton(self) -> None:
        log = log_tail(self.triton.log_path, 10)
        self.triton_exit = self.triton.stop()
        if self.triton_exit:
            self.console.print(f"[yellow]tritonserver exited {self.triton_exit}:[/yellow]\n{log}")

    def ask(self, mode: str, side: str, question: str) -> Sample:
        serving = self.direct if side == DIRECT else self.queued
        return serving.stream(question) if mode == STREAM else serving.unary(question)

    def worker_errors(self) -> list[str]:
        lines = self.worker.log_path.read_text(errors="replace").splitlines()
        return [ln for ln in lines if "ERROR" in ln or "CRITICAL" in ln][:5]


# ---- the run, its table, its plot ----


def run(requests: int, max_tokens: int, console: Console) -> dict[str, Any]:
    """Start the services, warm both sides up, ask every request of :func:`schedule`; the
    samples, the worker log's errors and Triton's exit code."""
    samples: list[Sample] = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agentq-bench-")))
        with console.status("starting Redis, Triton with SmolLM2-135M-Instruct and a worker"):
            bench = Bench(stack, tmp, max_tokens, console)
        console.print(
            f"[green]✓[/green] Triton (pid {bench.triton.pid}) serving SmolLM2-135M-Instruct "
            f"on llama.cpp, one worker (pid {bench.worker.pid})"
        )
        with console.status("warm-up: one request of each kind on each side"):
            for mode in (STREAM, UNARY):
                for side in (DIRECT, AGENTQ):
                    bench.ask(mode, side, WARM_UP)
        order = schedule(requests, QUESTIONS)
        with console.status("") as status:
            for i, (mode, side, question) in enumerate(order, 1):
                status.update(f"request {i} of {len(order)}: {side}, {mode}")
                samples.append(bench.ask(mode, side, question))
        errors = bench.worker_errors()
        with console.status("stopping the worker, Triton and Redis"):
            stack.close()
    return {
        "samples": samples,
        "worker_log_errors": errors,
        "triton_exit_code": bench.triton_exit,
    }


def main(requests: int, out_dir: str | None, console: Console, max_tokens: int = MAX_TOKENS) -> int:
    """Run the bench; print the table, write ``local-model.json`` and ``.png`` (exit code)."""
    if requests < 1 or max_tokens < 2:
        console.print("[red]--requests must be at least 1 and --max-tokens at least 2[/red]")
        return 2
    started = time.monotonic()
    env = environment(REPO_ROOT)
    try:
        measured = run(requests, max_tokens, console)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; every process the bench started is stopped[/yellow]")
        return 130
    except (AgentqError, BenchError) as exc:
        console.print(f"[red]bench failed:[/red] {exc}")
        return 1
    doc = document(
        measured.pop("samples"),
        model="SmolLM2-135M-Instruct Q4_1 (llm extra), llama.cpp in Triton's python backend",
        model_settings={"instances": 1, "n_ctx": 2048, "threads": 1},
        requests=requests,
        max_tokens=max_tokens,
        questions=list(QUESTIONS),
        system_prompt=SYSTEM_PROMPT,
        **measured,
        **env,
        load_average_at_end=[round(x, 2) for x in os.getloadavg()],
        duration_s=round(time.monotonic() - started, 1),
    )
    show(doc, console)
    for line in doc["worker_log_errors"]:
        console.print(f"[yellow]worker log:[/yellow] {line}")
    out = Path(out_dir) if out_dir else DEFAULT_OUT_DIR
    write(doc, out / "local-model.json")
    write_plot(doc, out / "local-model.png")
    console.print(f"bench took {doc['duration_s']:.0f} s; results in {out}/local-model.json, .png")
    failed = any(doc["sides"][s]["failed"] for s in (DIRECT, AGENTQ))
    return 1 if failed else 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.local_model", description=__doc__)
    parser.add_argument("--requests", type=int, default=REQUESTS, help="per side and mode")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help="per answer")
    parser.add_argument("--out-dir", default=None, help=f"JSON and PNG (default {DEFAULT_OUT_DIR})")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse(None)
    sys.exit(main(args.requests, args.out_dir, Console(), args.max_tokens))
