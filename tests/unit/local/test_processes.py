"""The embedded services' process helpers: distinct free ports, waiting, stopping by PID."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

from app.local.processes import free_ports, log_tail, stop_process, wait_until


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(8)
    assert len(set(ports)) == 8
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_wait_until_gives_up_when_the_process_exits() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    assert wait_until(lambda: False, 30.0, proc) is False  # returns once it exited, not at 30 s
    assert proc.returncode == 0


def test_stop_process_kills_one_that_ignores_sigterm() -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print(1, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline()  # its handler is in place
    assert stop_process(proc, timeout_s=0.5) == -signal.SIGKILL


def test_log_tail_of_a_missing_file(tmp_path) -> None:
    assert log_tail(tmp_path / "nothing.log") == "(no log)"
    path = tmp_path / "w.log"
    path.write_text("".join(f"line {i}\n" for i in range(50)))
    assert log_tail(path, lines=2) == "line 48\nline 49"
