"""The abort poller: an action runs once when its event is set, only while its call runs."""

from __future__ import annotations

import threading

import pytest

from app.errors import ModelCallCancelledError
from app.inference.cancel import AbortPoller, abort_when, check
from tests.fixtures.waiting import wait_for


def test_an_action_runs_once_when_its_event_is_set() -> None:
    poller = AbortPoller(interval_s=0.01)
    cancel, other = threading.Event(), threading.Event()
    ran: list[str] = []
    with (
        poller.watching(cancel, lambda: ran.append("a")),
        poller.watching(other, lambda: ran.append("b")),
    ):
        cancel.set()
        wait_for(lambda: ran == ["a"], 5, "the action")
        other_ran = list(ran)
    assert other_ran == ["a"]  # the other call's event was never set


def test_an_action_does_not_run_after_its_call_ended() -> None:
    poller = AbortPoller(interval_s=0.01)
    cancel, later = threading.Event(), threading.Event()
    ran: list[str] = []
    with poller.watching(cancel, lambda: ran.append("ended")):
        pass
    cancel.set()
    with poller.watching(later, lambda: ran.append("later")):
        later.set()
        wait_for(lambda: ran == ["later"], 5, "the later action")  # the poller did look


def test_a_failing_action_does_not_stop_the_others() -> None:
    poller = AbortPoller(interval_s=0.01)
    first, second = threading.Event(), threading.Event()
    ran: list[str] = []

    def fail() -> None:
        raise RuntimeError("broken abort")

    with poller.watching(first, fail), poller.watching(second, lambda: ran.append("second")):
        first.set()
        second.set()
        wait_for(lambda: ran == ["second"], 5, "the second action")


def test_no_event_means_no_abort_and_check_raises_only_when_set() -> None:
    with abort_when(None, lambda: pytest.fail("no event, no action")):
        pass
    check(None, "server")
    cancel = threading.Event()
    check(cancel, "server")
    cancel.set()
    with pytest.raises(ModelCallCancelledError, match="server"):
        check(cancel, "server")
