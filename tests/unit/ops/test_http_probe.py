"""scripts/http_probe.py, the images' health check: against a real HTTP server in a thread."""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import ClassVar

import pytest

from app.config import REPO_ROOT
from app.local.processes import free_port


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "http_probe", REPO_ROOT / "scripts" / "http_probe.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


probe = _load()


class Handler(BaseHTTPRequestHandler):
    """/ok: 200; /down: 503; /warming: 503 for the first two requests, then 200."""

    hits: ClassVar[dict[str, int]] = {}

    def do_GET(self) -> None:
        count = self.hits[self.path] = self.hits.get(self.path, 0) + 1
        ready = self.path == "/ok" or (self.path == "/warming" and count > 2)
        self.send_response(200 if ready else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Handler.hits = {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_ready_endpoint_passes(server: str) -> None:
    assert probe.main([f"{server}/ok"]) == 0


def test_unready_endpoint_fails_with_the_status(server: str, capsys) -> None:
    assert probe.main([f"{server}/down"]) == 1
    assert "HTTP 503" in capsys.readouterr().err


def test_nothing_listening_fails(capsys) -> None:
    assert probe.main([f"http://127.0.0.1:{free_port()}/livez", "--timeout", "1"]) == 1
    assert "refused" in capsys.readouterr().err.lower()


def test_wait_keeps_trying_until_ready(server: str) -> None:
    assert probe.main([f"{server}/warming", "--wait", "30", "--interval", "0.05"]) == 0
    assert Handler.hits["/warming"] == 3


def test_wait_gives_up_at_its_deadline(server: str) -> None:
    assert probe.main([f"{server}/down", "--wait", "0.2", "--interval", "0.05"]) == 1
    assert Handler.hits["/down"] >= 2
