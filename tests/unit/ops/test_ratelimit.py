"""The rate limit's arithmetic on fakeredis (its real-Redis behaviour:
tests/integration/ops/test_ratelimit.py): the burst, the sustained rate, a bad rate."""

from __future__ import annotations

import fakeredis
import pytest

from app.errors import ConfigurationError
from app.ops.ratelimit import Rate, take


def test_a_burst_of_one_allows_one_request_per_interval() -> None:
    client = fakeredis.FakeRedis()
    first, second = take(client, "k", Rate(per_s=4)), take(client, "k", Rate(per_s=4))
    assert (first.allowed, first.remaining) == (True, 0)
    assert not second.allowed
    assert 0 < second.retry_after_s <= 0.25


def test_the_remaining_count_falls_through_the_burst() -> None:
    client = fakeredis.FakeRedis()
    rate = Rate(per_s=0.001, burst=5)
    assert [take(client, "k", rate).remaining for _ in range(6)] == [4, 3, 2, 1, 0, 0]


@pytest.mark.parametrize(("per_s", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_a_rate_that_allows_nothing_is_refused(per_s: float, burst: int) -> None:
    with pytest.raises(ConfigurationError, match="per_s > 0 and burst >= 1"):
        Rate(per_s, burst)
