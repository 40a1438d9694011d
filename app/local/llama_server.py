"""A real OpenAI-compatible server on CPU: llama-cpp-python's ``python -m llama_cpp.server``
serving one GGUF model (SmolLM2-135M-Instruct from the llm extra by default), stopped by PID.

Tools use llama-cpp-python's ``chatml-function-calling`` chat format. SmolLM2 speaks ChatML;
that format describes the tools in the system turn and constrains decoding with a grammar, so
a call names an offered tool and its arguments follow the tool's schema (the grammar lets a
raw newline into a string, which agentq reads). The GGUF's own Jinja template (``chat_format``
None) has no tools: its handler returns a call only when ``tool_choice`` names the tool. What
the format does, per OpenAI ``tool_choice`` (agentq sends it, ``auto`` included):

- absent or ``none``: the tools are left out of the prompt;
- ``auto``: the model answers or makes calls, several in a reply, their arguments not cut at
  ``max_tokens``; unary only: a stream that would call a tool fails on the server (it ends
  with no event, a cut stream to agentq);
- a tool's name: one call of that tool, unary or streamed (arguments in fragments);
- ``required``: not implemented (HTTP 500); agentq sends it as the name when one tool is
  offered.

Its template renders an assistant turn's calls but drops ``role: "tool"`` results: the model
answers without seeing them. The server answers any model name with its one model (no 404;
``GET /v1/models`` names it) and sends no ``usage`` on streams (``stream_options`` is
ignored); unary replies carry ``usage``. It needs a system turn to describe the tools.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType

import httpx

from app.config import child_env
from app.errors import LocalServiceError
from app.local.llm import gguf_path
from app.local.processes import free_port, log_tail, stop_process, wait_until

CHAT_FORMAT = "chatml-function-calling"
DEFAULT_N_CTX = 2048


class LlamaServer:
    """``python -m llama_cpp.server`` on a free loopback port, serving ``model`` (a GGUF file,
    default: the llm extra's) under the name ``alias``; stopped by its PID.

    ``cache``: llama-cpp-python's prompt cache (RAM), which reuses the evaluated prefix of a
    conversation's earlier prompt. ``n_threads``: threads for generation and prompt evaluation
    (None: the server's defaults, half the cores and every core).
    ``api_key``: calls without ``Authorization: Bearer <api_key>`` are refused (HTTP 401).
    """

    def __init__(
        self,
        model: Path | None = None,
        *,
        alias: str | None = None,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        chat_format: str | None = CHAT_FORMAT,
        cache: bool = False,
        api_key: str | None = None,
        log_path: Path | None = None,
        ready_timeout_s: float = 60,
        env: dict[str, str] | None = None,
    ) -> None:
        self.model_path = Path(model) if model is not None else gguf_path()
        self.alias = alias or self.model_path.stem
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.chat_format = chat_format
        self.cache = cache
        self.api_key = api_key
        self.ready_timeout_s = ready_timeout_s
        self.base_env = env if env is not None else child_env({})
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_path = log_path
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def __repr__(self) -> str:
        return f"LlamaServer({self.model_path.name!r}, url={self.url!r}, pid={self.pid})"

    @property
    def log_path(self) -> Path:
        """The server's stdout and stderr."""
        if self._log_path is None:
            self._tmp = self._tmp or tempfile.TemporaryDirectory(prefix="agentq-llama-")
            self._log_path = Path(self._tmp.name) / "llama-server.log"
        return self._log_path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI API root, as agentq's openai replicas take it."""
        return f"{self.url}/v1"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        """The server's command line."""
        cmd = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.model_path), "--model_alias", self.alias,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", str(self.n_ctx), "--cache", str(self.cache).lower(),
        ]  # fmt: skip
        if self.n_threads is not None:
            # Prompt evaluation too (its own default is every core, which spins against
            # whatever else runs on the machine, another replica included).
            cmd += ["--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads)]
        # A request that arrives while a reply streams waits for it, as a server with one slot
        # should, instead of cutting it short (llama-cpp-python's default interrupts it).
        cmd += ["--interrupt_requests", "false"]
        if self.chat_format is not None:
            cmd += ["--chat_format", self.chat_format]
        if self.api_key is not None:
            cmd += ["--api_key", self.api_key]
        return cmd

    def _ready(self) -> bool:
        try:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            response = httpx.get(f"{self.base_url}/models", headers=headers, timeout=2)
            return response.status_code == 200
        except httpx.HTTPError:
            return False

    def start(self) -> LlamaServer:
        """Start the server and wait until ``GET /v1/models`` answers (the model is loaded)."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        if not self.model_path.is_file():
            raise LocalServiceError(f"no model file {self.model_path}")
        for attempt in range(2):
            self.port = free_port()
            outcome = self._launch()
            if outcome == "ready":
                return self
            # A port taken between picking and binding ends the server at once: pick anew.
            if attempt == 0 and "address already in use" in log_tail(self.log_path).lower():
                continue
            break
        raise LocalServiceError(
            f"llama_cpp.server {outcome} (log {self.log_path}):\n{log_tail(self.log_path)}"
        )

    def _launch(self) -> str:
        """Run the server once: "ready", or why not (the process is stopped then)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.base_env
            )
        if wait_until(self._ready, self.ready_timeout_s, self.proc):
            return "ready"
        code = self.proc.poll()
        stop_process(self.proc)
        if code is not None:
            return f"exited with code {code}"
        return f"did not answer within {self.ready_timeout_s:.0f} s"

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it lingers."""
        if self.proc is not None:
            stop_process(self.proc)

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
