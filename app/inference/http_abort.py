"""Closing one HTTP call's connection from another thread (a cancelled run's model call).

httpx's blocking client gives a caller no handle on the socket a call waits on before the
response's headers arrive (a non-streamed completion sends them only when the reply is whole).
The transport made by :func:`abortable_transport` wraps each connection's network stream so
that, while a thread runs a call under :func:`tracking`, the stream it reads and writes is
attached to that call's :class:`CallSocket`; :meth:`CallSocket.abort` then shuts the socket
down: the blocked read returns at once and the server sees the connection go.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import typing
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

_local = threading.local()


class _TrackedStream(httpcore.NetworkStream):
    """A connection's stream that records which call (if any) is using it now."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner
        self.owner: CallSocket | None = None

    def _used(self) -> None:
        call: CallSocket | None = getattr(_local, "call", None)
        self.owner = call
        if call is not None:
            call.attach(self)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._used()
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._used()
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _TrackedStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)

    def shutdown(self) -> None:
        """Shut the socket down both ways (a blocked read in another thread returns)."""
        sock = self._inner.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            # socket.socket's own shutdown: SSLSocket's would drop its SSL state under the
            # thread reading it.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _TrackingBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _TrackedStream(stream)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        return _TrackedStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class CallSocket:
    """The connection one HTTP call uses, as the transport reports it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stream: _TrackedStream | None = None
        self.aborted = False

    def attach(self, stream: _TrackedStream) -> None:
        with self._lock:
            self._stream = stream
            aborted = self.aborted
        if aborted:  # aborted before it had a connection: shut this one at once
            stream.shutdown()

    def abort(self) -> None:
        """Shut the call's connection down, unless another call has taken it since."""
        with self._lock:
            self.aborted = True
            stream = self._stream
        if stream is not None and stream.owner is self:
            stream.shutdown()


@contextlib.contextmanager
def tracking(call: CallSocket) -> Iterator[None]:
    """The HTTP calls this thread makes in the block (through an abortable transport) attach
    their connection to ``call``."""
    _local.call = call
    try:
        yield
    finally:
        _local.call = None


def abortable_transport(**options: typing.Any) -> httpx.HTTPTransport:
    """An ``httpx.HTTPTransport(**options)`` whose calls :func:`tracking` can abort."""
    transport = httpx.HTTPTransport(**options)
    # httpx offers no parameter for httpcore's network backend: wrap the one it made.
    pool = transport._pool
    pool._network_backend = _TrackingBackend(pool._network_backend)  # type: ignore[union-attr]
    return transport
