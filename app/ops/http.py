"""A tiny HTTP server in a daemon thread for the health endpoints and the exporter."""

from __future__ import annotations

import errno
import json
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

Response = tuple[int, str, bytes]
"""Status, content type, body."""


def json_response(status: int, body: Any) -> Response:
    """A JSON response."""
    return status, "application/json", json.dumps(body, indent=1).encode() + b"\n"


class _Handler(BaseHTTPRequestHandler):
    routes: Mapping[str, Callable[[], Response]] = {}

    def do_GET(self) -> None:
        route = self.routes.get(self.path.split("?", 1)[0])
        if route is None:
            status, content_type, body = json_response(404, {"error": f"no route {self.path}"})
        else:
            try:
                status, content_type, body = route()
            except Exception as exc:  # one bad request must not take the server down
                log.exception("%s %s", self.command, self.path)
                status, content_type, body = json_response(500, {"error": type(exc).__name__})
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # probes and scrapes every few seconds would flood the worker's log


def serve(
    routes: Mapping[str, Callable[[], Response]],
    host: str,
    port: int,
    name: str,
    *,
    fallback: bool = False,
) -> ThreadingHTTPServer:
    """Serve GET ``routes`` on ``host:port`` (0: a free port) from a daemon thread.

    ``fallback``: when the port is in use, take a free one (logged) instead of failing.
    """
    handler = type("Handler", (_Handler,), {"routes": dict(routes)})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        if not (fallback and port and exc.errno == errno.EADDRINUSE):
            raise
        log.warning("%s: port %d is in use; taking a free port instead", name, port)
        server = ThreadingHTTPServer((host, 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    log.warning("%s listening on http://%s:%d", name, host, server.server_port)
    return server


class Served:
    """Endpoints served from a daemon thread by :func:`serve`: their port, and stopping them."""

    server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        """The port the endpoints listen on (0 when not serving)."""
        return self.server.server_port if self.server is not None else 0

    def stop_serving(self) -> None:
        """Stop the server and close its socket (nothing to do when not serving)."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
