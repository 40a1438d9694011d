"""Admission control's decision: stop taking runs only while every ready replica is full."""

from __future__ import annotations

from app.config import InferenceSettings
from app.inference.pool import ReplicaStatus
from app.tasks.admission import should_pause


def replica(depth: float | None, ready: bool = True) -> ReplicaStatus:
    return ReplicaStatus("r", ready, in_flight=0, served=0, failures=0, queue_depth=depth)


def test_off_without_a_max_depth() -> None:
    assert not should_pause([replica(1000)], None, None, paused=False)


def test_pauses_only_when_every_ready_replica_is_over_the_depth() -> None:
    assert should_pause([replica(9), replica(12)], 8, 4, paused=False)
    assert not should_pause([replica(9), replica(8)], 8, 4, paused=False)  # one has room


def test_replicas_that_are_down_or_unmeasured_do_not_count() -> None:
    assert should_pause([replica(9), replica(0, ready=False)], 8, 4, paused=False)
    assert should_pause([replica(9), replica(None)], 8, 4, paused=False)
    assert not should_pause([replica(None), replica(0, ready=False)], 8, 4, paused=False)


def test_resumes_only_below_the_resume_depth_so_it_does_not_flap() -> None:
    assert should_pause([replica(6)], 8, 4, paused=True)  # under max, not yet under resume
    assert not should_pause([replica(4)], 8, 4, paused=True)
    assert not should_pause([replica(6)], 8, 4, paused=False)


def test_resume_depth_defaults_to_half_the_max_and_never_exceeds_it() -> None:
    assert InferenceSettings(admission_max_depth=10).resume_depth() == 5
    assert InferenceSettings(admission_max_depth=10, admission_resume_depth=20).resume_depth() == 10
    assert InferenceSettings().resume_depth() is None
