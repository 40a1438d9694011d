import pytest

from app.celery_ext.routes import AgentRouter, queue_for_agent
from app.constants import TASK_RUN_AGENT
from app.errors import InvalidInputError, UnknownAgentError

QUEUES = {"research": "agent.research", "coder": "agent.coder"}


def test_router_sends_each_agent_to_its_queue():
    router = AgentRouter(QUEUES)
    assert router(TASK_RUN_AGENT, (), {"agent": "coder"}, {}) == {"queue": "agent.coder"}
    assert router(TASK_RUN_AGENT, ("research",), {}, {}) == {"queue": "agent.research"}


def test_router_ignores_other_tasks():
    assert AgentRouter(QUEUES)("celery.ping", (), {}, {}) is None


def test_unknown_agent_names_the_known_ones():
    with pytest.raises(UnknownAgentError, match="coder, research"):
        queue_for_agent(QUEUES, "nope")


@pytest.mark.parametrize("agent", [None, "", 3])
def test_agent_must_be_a_string(agent):
    with pytest.raises(InvalidInputError):
        queue_for_agent(QUEUES, agent)
