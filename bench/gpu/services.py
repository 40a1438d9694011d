"""The GPU bench's processes: the random-weight model's build, ``transformers serve`` and the
``nvidia-smi`` sampler, each started by this process and stopped by its PID.

``transformers serve`` runs with the Python that has torch and transformers (``python``), and
with ``pythonpath`` in front of its path (the carried wheels of its ``[serving]`` extra); it
never sees the bench's own path, whose packages may differ (numpy, pydantic).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.errors import LocalServiceError
from app.local.processes import free_port, log_tail, stop_process, wait_until

MODEL_SCRIPT = Path(__file__).resolve().parent / "model.py"
# The first request builds the continuous-batching manager and warms it up: minutes on a CPU.
WARM_UP_TIMEOUT_S = 600.0


def server_env(pythonpath: str | None, hf_home: Path) -> dict[str, str]:
    """The environment of the model's processes: offline, no update check, the bench's own
    PYTHONPATH replaced by ``pythonpath``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    hf_home.mkdir(parents=True, exist_ok=True)
    # The model list scans the hub cache: it must exist (else HTTP 500 on GET /v1/models).
    (hf_home / "hub").mkdir(exist_ok=True)
    env.update(
        HF_HOME=str(hf_home),
        HF_HUB_CACHE=str(hf_home / "hub"),
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_UPDATE_CHECK="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def build_model(
    python: str, size: str, device: str, out: Path, env: dict[str, str], timeout_s: float = 600
) -> dict[str, Any]:
    """Run bench/gpu/model.py with ``python``: the random-weight Llama in ``out``; what was
    built (its ``built.json``)."""
    log = out.parent / "model-build.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [python, str(MODEL_SCRIPT), "--size", size, "--device", device, "--out", str(out)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )
        code: int | None
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = stop_process(proc)
    if code != 0 or not (out / "built.json").is_file():
        raise LocalServiceError(f"building the model failed ({code}):\n{log_tail(log)}")
    built: dict[str, Any] = json.loads((out / "built.json").read_text())
    return built


class TransformersServer:
    """``transformers serve MODEL`` (continuous batching) on a free loopback port."""

    def __init__(
        self,
        python: str,
        model_dir: Path,
        device: str,
        env: dict[str, str],
        log_path: Path,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.python, self.model_dir, self.device = python, model_dir, device
        self.env, self.log_path, self.extra_args = env, log_path, extra_args
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.warm_up_s: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model(self) -> str:
        """The model name requests must carry: the folder the server is pinned to."""
        return str(self.model_dir)

    def command(self) -> list[str]:
        return [
            self.python, "-m", "transformers.cli.transformers", "serve", str(self.model_dir),
            "--host", "127.0.0.1", "--port", str(self.port), "--device", self.device,
            "--continuous-batching", "--log-level", "info", *self.extra_args,
        ]  # fmt: skip

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self, deadline_s: float = 300.0) -> TransformersServer:
        """Start the server, wait for /health, then send one warm-up request (its first
        builds the batching manager)."""
        self.port = free_port()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        if not wait_until(self._healthy, deadline_s, self.proc):
            self.stop()
            raise LocalServiceError(f"transformers serve did not start:\n{log_tail(self.log_path)}")
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 4,
        }
        started = time.monotonic()
        try:
            response = httpx.post(
                f"{self.base_url}/chat/completions", json=body, timeout=WARM_UP_TIMEOUT_S
            )
            response.raise_for_status()
        except httpx.HTTPError as exc:
            self.stop()
            raise LocalServiceError(
                f"transformers serve failed its warm-up request ({exc}):\n{log_tail(self.log_path)}"
            ) from None
        self.warm_up_s = round(time.monotonic() - started, 1)
        return self

    def stop(self) -> int | None:
        return stop_process(self.proc, timeout_s=20) if self.proc else None


@dataclass
class GpuSampler:
    """``nvidia-smi`` in its loop mode (one line every ``interval_ms``), read by a thread;
    :meth:`window` summarises the samples taken between two ``time.monotonic()`` readings.
    Without nvidia-smi (a CPU machine) nothing is sampled and windows are None."""

    interval_ms: int = 500
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (t, util, MiB)
    proc: subprocess.Popen[str] | None = None
    _thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return shutil.which("nvidia-smi") is not None

    def start(self) -> GpuSampler:
        if not self.available:
            return self
        self.proc = subprocess.Popen(
            [
                "nvidia-smi", "--id=0", "--query-gpu=utilization.gpu,memory.used",
                "--format=csv,noheader,nounits", f"--loop-ms={self.interval_ms}",
            ],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._read, name="gpu-sampler", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                util, mem = (float(part) for part in line.split(","))
            except ValueError:  # "[N/A]" or a message: not a sample
                continue
            self.samples.append((time.monotonic(), util, mem))

    def window(self, start: float, end: float) -> dict[str, Any] | None:
        """Mean and peak utilisation (%) and peak memory (MiB) in [start, end]."""
        if self.proc is None:
            return None
        inside = [(u, m) for t, u, m in list(self.samples) if start <= t <= end]
        if not inside:
            return {"samples": 0}
        utils = [u for u, _ in inside]
        return {
            "samples": len(inside),
            "util_mean_pct": round(sum(utils) / len(utils), 1),
            "util_max_pct": max(utils),
            "memory_max_mib": max(m for _, m in inside),
        }

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)  # type: ignore[arg-type]
        if self._thread is not None:
            self._thread.join(timeout=5)
