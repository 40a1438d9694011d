"""A run's result as the worker writes it is the value Celery's Redis backend would write."""

from __future__ import annotations

import json
from types import SimpleNamespace

from celery import states

from app.celery_ext.app import create_celery
from app.celery_ext.results import result_value
from app.config import Settings


def test_the_result_is_celerys_own_format() -> None:
    app = create_celery(Settings())
    try:
        backend = app.backend
        for state, result in ((states.SUCCESS, {"answer": [1, "é"]}), (states.STARTED, None)):
            key, value = result_value(backend, "run-1", state, result)
            request = SimpleNamespace(children=[], group=None, parent_id=None)  # a step's
            theirs = backend._get_result_meta(result, state, None, request)
            theirs["task_id"] = "run-1"
            ours = json.loads(value)
            assert (ours.pop("date_done") is None) == (theirs.pop("date_done") is None)
            assert ours == json.loads(backend.encode(theirs))
            assert key == backend.get_key_for_task("run-1")
            assert backend.decode_result(value)["status"] == state
    finally:
        app.close()
