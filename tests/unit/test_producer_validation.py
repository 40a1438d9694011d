import math

import pytest

from app.agents import AgentRegistry, AgentSpec
from app.config import Settings
from app.errors import InvalidInputError, PayloadTooLargeError, UnknownAgentError
from app.validation import validate_run

REGISTRY = AgentRegistry([AgentSpec(name="research"), AgentSpec(name="tiny", max_input_bytes=20)])
SETTINGS = Settings(_env_file=None)


def test_valid_run_gets_its_queue_and_an_id():
    req = validate_run(REGISTRY, SETTINGS, "research", {"q": "x"}, "s1")
    assert req.queue == "agent.research"
    assert req.kwargs() == {"agent": "research", "input": {"q": "x"}, "session_id": "s1"}
    assert len(req.run_id) == 36


@pytest.mark.parametrize(
    ("agent", "value", "session", "error"),
    [
        ("nope", "hi", None, UnknownAgentError),
        (None, "hi", None, InvalidInputError),
        ("research", None, None, InvalidInputError),
        ("research", "   ", None, InvalidInputError),
        ("research", {"when": object()}, None, InvalidInputError),
        ("research", {1: "x"}, None, InvalidInputError),
        ("research", [1.0, math.nan], None, InvalidInputError),
        ("research", b"bytes", None, InvalidInputError),
        ("research", "hi", 7, InvalidInputError),
        ("research", "x" * (64 * 1024 + 1), None, PayloadTooLargeError),
        ("tiny", "x" * 30, None, PayloadTooLargeError),
    ],
)
def test_bad_input_is_a_typed_error(agent, value, session, error):
    with pytest.raises(error):
        validate_run(REGISTRY, SETTINGS, agent, value, session)
