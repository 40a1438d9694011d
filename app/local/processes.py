"""Helpers for the embedded services: free ports, waiting, stopping by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago (the OS picks)."""
    # Hold all sockets open together so the OS hands out distinct ports.
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port() -> int:
    """One free TCP port on 127.0.0.1."""
    return free_ports(1)[0]


def wait_until(
    check: Callable[[], bool], deadline_s: float, proc: subprocess.Popen[bytes] | None = None
) -> bool:
    """Poll ``check`` until it is true (True), the deadline passes or ``proc`` exits (False)."""
    end = time.monotonic() + deadline_s
    delay = 0.02
    while time.monotonic() < end:
        if check():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)
    return check()


def stop_process(
    proc: subprocess.Popen[bytes], timeout_s: float = 10.0, sig: int = signal.SIGTERM
) -> int | None:
    """Send ``sig`` to the process by its PID, wait, SIGKILL if it lingers; return the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    return proc.returncode


def log_tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
