"""Automatic retrieval: an agent's long-term memories in its system prompt
(``AgentSpec.memory.recall``), searched with the run's input before each model call."""

from __future__ import annotations

from collections.abc import Callable

from app.agents.memory_tools import scoped
from app.agents.prompts import memory_section, render_input
from app.agents.registry import AgentSpec
from app.errors import InvalidMemoryError
from app.memory.long_term import LazyMemory
from app.memory.records import RunState
from app.ops import metrics


def with_memories(
    memory: LazyMemory, spec: AgentSpec, state: RunState, count: Callable[[str], int]
) -> str:
    """``spec``'s system prompt followed by the memories nearest the run's input (the
    agent's scope, within its run's tenant), best first, as many as fit
    ``spec.memory.max_tokens`` (``count``: a text's tokens). The system prompt alone when
    nothing is near enough, or the scope has no place in this run (session scope, no
    session)."""
    policy = spec.memory
    try:
        place = scoped(policy.scope, spec.name, state.session_id)
    except InvalidMemoryError:
        return spec.system_prompt
    hits = memory.get().recall(
        state.tenant,
        render_input(state.input),
        k=policy.k,
        agent=place.agent,
        session_id=place.session_id,
        where=place.where,
        min_score=policy.min_score,
    )
    section, shown = memory_section([h.memory.text for h in hits], policy.max_tokens, count)
    metrics.memories_recalled(spec.name, shown)
    if not section:
        return spec.system_prompt
    return f"{spec.system_prompt}\n\n{section}" if spec.system_prompt else section
