"""``agentq triton serve`` (and ``python -m app.local.triton serve``) stops on SIGINT (even
one it inherited as ignored, as a background job does) and on SIGTERM, and takes tritonserver
and its python stubs with it."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from app.config import child_env
from app.local import embedding
from app.local.triton import STUB_NAME, descendants

pytestmark = pytest.mark.integration


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by the child, as `cmd &` does


def _alive(pid: int, started: int) -> bool:
    """Whether ``pid`` is still the process that started at ``started`` (zombies are gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and int(fields[19]) == started


def _wait_for_line(proc: subprocess.Popen[str], prefix: str, timeout_s: float) -> str:
    """The first line of ``proc``'s stdout starting with ``prefix``."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if sel.select(left):
                line = proc.stdout.readline()
                if line.startswith(prefix):
                    return line
                assert line, f"serve exited with {proc.wait()} before printing {prefix!r}"
    raise AssertionError(f"serve did not print {prefix!r} within {timeout_s} s")


AGENTQ = [sys.executable, "-m", "app.cli", "triton"]
MODULE = [sys.executable, "-m", "app.local.triton"]


@pytest.mark.parametrize(
    ("sig", "command"),
    [(signal.SIGINT, MODULE), (signal.SIGTERM, AGENTQ)],
    ids=["SIGINT-module", "SIGTERM-agentq"],
)
def test_serve_stops_tritonserver_and_every_stub_on_a_signal(triton_home, sig, command) -> None:
    proc = subprocess.Popen(
        [*command, "serve"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=child_env({}), preexec_fn=_ignore_sigint,
    )  # fmt: skip
    tree: dict[int, int] = {}
    try:
        line = _wait_for_line(proc, "grpc ", timeout_s=120)  # printed once the models are ready
        if embedding.available():  # the embedding model beside the scripted one
            client = grpcclient.InferenceServerClient(line.split()[1])
            try:
                assert client.is_model_ready("minilm") and client.is_model_ready("ensemble")
            finally:
                client.close()
        tree = descendants(proc.pid)
        names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in tree}
        assert {"tritonserver", STUB_NAME[:15]} <= names  # the server and its stubs run

        os.kill(proc.pid, sig)
        assert proc.wait(timeout=30) == 0
        assert not [pid for pid, started in tree.items() if _alive(pid, started)]
    finally:
        for pid, started in {proc.pid: 0, **tree}.items():  # the test stops what it started
            if pid == proc.pid and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            elif pid != proc.pid and _alive(pid, started):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_serve_the_local_model_prints_what_workers_need_and_cleans_up(triton_home) -> None:
    pytest.importorskip("llama_cpp")  # the llm extra
    proc = subprocess.Popen(
        [*AGENTQ, "serve", "--model", "local"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env({}),
    )  # fmt: skip
    try:
        line = _wait_for_line(proc, "  export AGENTQ_TRITON__CHAT_TEMPLATES=", timeout_s=60)
        folder = Path(line.split('"ensemble": "', 1)[1].split('"', 1)[0])
        assert (folder / "tokenizer_config.json").is_file()
        _wait_for_line(proc, "grpc ", timeout_s=120)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not folder.exists()  # its tokenizer folder lives only while it serves
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.parametrize("command", [MODULE, AGENTQ], ids=["module", "agentq"])
def test_serve_refuses_an_unknown_model(command) -> None:
    out = subprocess.run(
        [*command, "serve", "--model", "big"],
        capture_output=True, text=True, env=child_env({}), timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "sage:" in out.stderr  # usage: (the module), Usage: (click)
