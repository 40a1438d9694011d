import pytest

from app.agents.registry import AgentRegistry, AgentSpec
from app.celery_ext.routes import AgentRouter
from app.constants import TASK_RUN_AGENT
from app.errors import InvalidInputError, UnknownAgentError

REGISTRY = AgentRegistry([AgentSpec(name="research"), AgentSpec(name="coder", queue="fast")])


def test_router_sends_each_agent_to_its_queue():
    router = AgentRouter(REGISTRY)
    assert router(TASK_RUN_AGENT, (), {"agent": "coder"}, {}) == {"queue": "fast"}
    assert router(TASK_RUN_AGENT, ("research",), {}, {}) == {"queue": "agent.research"}


def test_router_ignores_other_tasks():
    assert AgentRouter(REGISTRY)("celery.ping", (), {}, {}) is None


def test_unknown_agent_names_the_known_ones():
    message = "unknown agent 'nope'; known agent types: coder, research"
    with pytest.raises(UnknownAgentError) as raised:
        AgentRouter(REGISTRY)(TASK_RUN_AGENT, (), {"agent": "nope"}, {})
    assert str(raised.value) == message
    with pytest.raises(UnknownAgentError, match="known agent types: none"):
        AgentRegistry().spec("nope")


@pytest.mark.parametrize("agent", [None, "", 3, ["coder"]])
def test_agent_must_be_a_string(agent):
    with pytest.raises(InvalidInputError) as raised:
        REGISTRY.spec(agent)
    assert str(raised.value) == f"'agent' must be a non-empty string, got {agent!r}"
