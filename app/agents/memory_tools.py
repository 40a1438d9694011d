"""The ``remember`` and ``recall`` tools: an agent's long-term memory across runs and sessions
(:mod:`app.memory.long_term`), always within its run's tenant.

List them in an agent's ``tools``. ``scope`` says who finds a memory again: ``agent`` (the
default) later runs of the same agent type in any session of the tenant, ``session`` runs of
the same session, ``tenant`` any agent of the tenant (:func:`~app.memory.long_term.scoped`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from app.agents.tools import ToolContext, tool
from app.config.memory import Scope
from app.errors import InvalidMemoryError, ToolError

if TYPE_CHECKING:
    from app.memory.long_term import LongTermMemory
    from app.memory.vectors import JSON, Hit


@dataclass(frozen=True, slots=True)
class Scoped:
    """Where a memory of a scope is kept and how it is found again (see :func:`scoped`)."""

    agent: str | None
    session_id: str | None  # kept with (and searched by) session-scoped memories only
    where: dict[str, JSON]  # metadata every memory of the scope carries


def scoped(scope: Scope, agent: str, session_id: str | None) -> Scoped:
    """A memory stored with ``scope`` by a run of ``agent`` in ``session_id`` carries the
    agent, the scope (and for ``session``, the session); a search with ``scope`` finds the
    memories stored with that scope: ``agent`` those of the agent type from any session,
    ``session`` those of the session, ``tenant`` those any agent stored for the whole tenant.
    :class:`InvalidMemoryError` for the session scope in a run without a session."""
    if scope == "session":
        if session_id is None:
            raise InvalidMemoryError(
                "scope 'session' needs a run with a session; this run has none"
            )
        return Scoped(None, session_id, {"scope": scope})
    return Scoped(agent if scope == "agent" else None, None, {"scope": scope})


def hits_json(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    """Hits as a tool result shows them to the model: text, score (3 decimals), metadata."""
    return [
        {"text": h.memory.text, "score": round(h.score, 3), "metadata": h.memory.metadata}
        for h in hits
    ]


def _memory(ctx: ToolContext) -> LongTermMemory:
    if ctx.memory is None:
        raise ToolError("long-term memory is not available here (a tool process has none)")
    memory: LongTermMemory = ctx.memory.get()  # made on the first call of the process
    return memory


@tool("remember", side_effects=True)
def remember(
    ctx: ToolContext,
    text: str,
    scope: Literal["agent", "session", "tenant"] = "agent",
    tag: str | None = None,
) -> dict[str, Any]:
    """Keep a fact, preference or note in long-term memory, to be recalled in later runs.

    Args:
        text: What to remember, as a sentence that stands alone, e.g. "The user's
            favourite colour is teal".
        scope: Who finds it again: agent (this agent, in any conversation), session (this
            conversation) or tenant (every agent).
        tag: A label to recall it by later.
    """
    try:
        place = scoped(scope, ctx.agent, ctx.session_id)
        ids = _memory(ctx).remember(
            ctx.tenant,
            text,
            agent=place.agent,
            session_id=place.session_id,
            metadata={**place.where, **({"tag": tag} if tag else {})},
            key=f"{ctx.run_id}:{ctx.step}:{ctx.call_id}",  # the call run again stores nothing new
        )
    except InvalidMemoryError as exc:
        raise ToolError(str(exc)) from None
    return {"stored": len(ids)}


@tool("recall")
def recall(
    ctx: ToolContext,
    query: str,
    k: int = 5,
    scope: Literal["agent", "session", "tenant"] = "agent",
    tag: str | None = None,
) -> list[dict[str, Any]]:
    """Search long-term memory by meaning: the closest memories first, each with its score (0-1).

    Args:
        query: What to look for, in words, e.g. "What colour does the user like?".
        k: How many memories at most (1-20).
        scope: Whose memories: agent (this agent's, any conversation), session (this
            conversation's) or tenant (those kept for every agent).
        tag: Only memories kept with this label.
    """
    if not 1 <= k <= 20:
        raise ToolError(f"k must be 1-20, got {k}")
    try:
        place = scoped(scope, ctx.agent, ctx.session_id)
    except InvalidMemoryError as exc:
        raise ToolError(str(exc)) from None
    hits = _memory(ctx).recall(
        ctx.tenant,
        query,
        k=k,
        agent=place.agent,
        session_id=place.session_id,
        where={**place.where, **({"tag": tag} if tag else {})},
    )
    return hits_json(hits)
