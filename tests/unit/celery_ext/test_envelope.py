"""A built step message names its agent type and links to its run for monitors (Flower): the
``shadow``, ``root_id`` and ``parent_id`` headers, as valid as the rest of the envelope."""

from __future__ import annotations

import json

from app.celery_ext.envelope import message_headers, run_message, shadow_of
from app.celery_ext.intake import Intake, check
from app.constants import TASK_RUN_AGENT

INTAKE = Intake({TASK_RUN_AGENT}, headers_max_chars=64 * 1024, body_max_chars=1024 * 1024)


def built(
    task_id: str, kwargs: dict, root_id: str | None = None, parent_id: str | None = None
) -> dict:
    text = run_message(
        task_id,
        kwargs,
        "agent.research",
        message_headers(),
        reply_to="r",
        root_id=root_id,
        parent_id=parent_id,
    )
    message = json.loads(text)
    assert check(message, INTAKE, len(text)) is None
    return message


def test_a_runs_first_message_is_its_own_root_named_by_its_agent() -> None:
    headers = built("run-1", {"agent": "research", "input": "hi"})["headers"]
    assert headers["task"] == TASK_RUN_AGENT  # what the worker runs
    assert headers["shadow"] == "research"  # what monitors show
    assert (headers["id"], headers["root_id"], headers["parent_id"]) == ("run-1", "run-1", None)


def test_a_later_step_links_to_its_run_and_the_step_that_sent_it() -> None:
    kwargs = {"agent": "coder", "run_id": "run-1", "step": 2}
    headers = built("run-1:2", kwargs, root_id="run-1", parent_id="run-1:1")["headers"]
    assert headers["shadow"] == "coder"
    assert (headers["id"], headers["root_id"], headers["parent_id"]) == (
        "run-1:2",
        "run-1",
        "run-1:1",
    )


def test_ids_that_need_escaping_stay_valid_json() -> None:
    headers = built('a"b', {"agent": 'x"y\u00e9'}, root_id='r"\\', parent_id="p\u00e9")["headers"]
    assert (headers["shadow"], headers["root_id"], headers["parent_id"]) == (
        'x"y\u00e9',
        'r"\\',
        "p\u00e9",
    )


def test_without_an_agent_type_monitors_show_the_tasks_own_name() -> None:
    assert built("run-1", {"input": "hi"})["headers"]["shadow"] is None
    for kwargs in (None, {}, {"agent": ""}, {"agent": 3}, {"agent": None}):
        assert shadow_of(kwargs) is None
    assert shadow_of({"agent": "research"}) == "research"
