"""Each error a command may raise has its exit code (docs/operations.md lists them): the
signal's and cancellation's own, distinct from the rest."""

from __future__ import annotations

import pytest

from app.cli.exits import ExitCode, exit_for
from app.errors import (
    InvalidInputError,
    NotWaitingError,
    RunEndedError,
    SignalTooLargeError,
    StoreError,
    UnknownRunError,
)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UnknownRunError("no run 'x'"), ExitCode.UNKNOWN_RUN),
        (RunEndedError("run x has ended (succeeded)"), ExitCode.RUN_ENDED),
        (NotWaitingError("run x is running, not waiting"), ExitCode.NOT_WAITING),
        (SignalTooLargeError("70000 bytes; the limit is 65536"), ExitCode.REFUSED),
        (InvalidInputError("a signal needs a name"), ExitCode.REFUSED),
        (StoreError("unreachable"), ExitCode.STORE_UNAVAILABLE),
    ],
)
def test_each_error_has_its_exit_code(error: Exception, code: ExitCode) -> None:
    found = exit_for(error)
    assert found is not None
    assert found[0] == code
    assert str(error) in found[1]


def test_the_codes_are_distinct_and_stable() -> None:
    assert [int(c) for c in ExitCode] == list(range(10))
    assert (ExitCode.UNKNOWN_RUN, ExitCode.RUN_ENDED, ExitCode.NOT_WAITING) == (7, 8, 9)
