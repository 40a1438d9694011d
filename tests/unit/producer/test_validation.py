import itertools
import json
import math
import uuid

import pytest

from app.agents.registry import AgentRegistry, AgentSpec
from app.agents.validation import validate_run
from app.celery_ext.envelope import new_id, new_ids
from app.config import Settings
from app.errors import InvalidInputError, PayloadTooLargeError, UnknownAgentError

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


@pytest.mark.parametrize(
    ("value", "session", "extra"),
    [
        ("What is the capital of France?", None, {}),
        ('100% "quoted" \u00e9 \u2603\n', "s-\u00e9", {"stream": True}),
        ({"q": [1, 2.5, None, True], "nested": {"k": "v"}}, "s1", {"budget": {"max_steps": 2}}),
    ],
)
def test_the_kwargs_text_sent_is_the_kwargs(value, session, extra):
    req = validate_run(REGISTRY, SETTINGS, "research", value, session, **extra)
    text = req.kwargs_json()
    assert json.loads(text) == req.kwargs()
    assert text.isascii()  # its length is its size in bytes


def test_run_ids_are_version_7_uuids():
    ids = [new_id() for _ in range(200)] + list(itertools.islice(new_ids(chunk=64), 200))
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
