"""A cap on request bodies, read before the JSON is parsed: a body far above any agent's
input limit is refused with 413 without being held in memory.

uvicorn reads whatever a client sends; submit's own size check runs only once the body is
parsed. The cap leaves room for JSON escaping and the other fields, so any input submit
would take passes it, and submit's check says exactly how large the input was.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.agents.registry import AgentRegistry
from app.api import problems
from app.config import Settings
from app.errors import PayloadTooLargeError

FIELDS_ALLOWANCE = 64 * 1024
"""Bytes a body may hold besides its input (agent, session, budget, whitespace)."""


def body_limit(registry: AgentRegistry, settings: Settings) -> int:
    """The largest body worth reading: twice the largest input any agent type takes, or a
    signal's data (JSON escaping), plus :data:`FIELDS_ALLOWANCE`."""
    default = settings.limits.max_input_bytes
    largest = max(
        (registry.spec(name).max_input_bytes or default for name in registry.names),
        default=default,
    )
    largest = max(largest, settings.orchestration.signal_max_bytes)
    return 2 * largest + FIELDS_ALLOWANCE


class BodyLimit:
    """ASGI middleware refusing bodies over ``max_bytes``: by Content-Length at once, or once
    a chunked body has sent that much."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self, size: str) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"request body is {size} bytes; the API reads at most {self.max_bytes}"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            body = problems.problem(problems.INPUT_TOO_LARGE, str(self._error(length.decode())))
            await problems.response(body)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException: FastAPI re-raises it from its body reading as it is.
                    raise HTTPException(413, str(self._error(f"over {received}")))
            return message

        await self.app(scope, limited, send)
