"""Queue stats' pure parts: which agent types -Q names, and when a queued message was sent."""

from __future__ import annotations

import json

from app.agents.registry import AgentRegistry, AgentSpec
from app.ops.queues import QueueStats, enqueued_at, select_agents


def registry() -> AgentRegistry:
    return AgentRegistry(
        [
            AgentSpec(name="research"),
            AgentSpec(name="coder"),
            AgentSpec(name="triage", queue="shared"),
            AgentSpec(name="billing", queue="shared"),
        ]
    )


def test_agent_types_are_named_by_name_or_queue_comma_separated_or_repeated() -> None:
    assert select_agents(registry(), ["coder,agent.research"]) == (["coder", "research"], [])
    assert select_agents(registry(), ["research", "research", " coder "]) == (
        ["research", "coder"],
        [],
    )


def test_a_shared_queue_names_every_agent_type_it_holds() -> None:
    assert select_agents(registry(), ["shared"]) == (["triage", "billing"], [])


def test_names_that_are_neither_are_returned_apart() -> None:
    assert select_agents(registry(), ["coder,nobody", "agent.nobody"]) == (
        ["coder"],
        ["nobody", "agent.nobody"],
    )


def test_a_message_is_dated_by_agentqs_header_else_unknown() -> None:
    stamped = json.dumps({"body": "", "headers": {"agentq_enqueued_at": 1700000000.5}})
    assert enqueued_at(stamped.encode()) == 1700000000.5
    assert enqueued_at(json.dumps({"body": "", "headers": {"task": "x"}})) is None
    assert enqueued_at(b"not json") is None
    assert enqueued_at(json.dumps([1, 2])) is None
    assert enqueued_at(None) is None


def test_stats_are_plain_json() -> None:
    stats = QueueStats("research", "agent.research", 3, 2, 1, 1, None, 0)
    assert json.loads(json.dumps(stats.to_json())) == {
        "agent": "research",
        "queue": "agent.research",
        "ready": 3,
        "unacked": 2,
        "in_flight": 1,
        "delayed": 1,
        "oldest_waiting_s": None,
        "dead_letters": 0,
    }
