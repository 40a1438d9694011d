"""sentinel:// URLs read as kombu and Celery read them, and refused where they would disagree."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.config import Settings, settings_env
from app.config.sentinel import SentinelURL, parse_sentinel_url
from app.errors import ConfigurationError


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("sentinel://s1", SentinelURL([("s1", 26379)])),
        (
            "sentinel://:pw@s1:26380/3;sentinel://:pw@s2:26381/3",
            SentinelURL([("s1", 26380), ("s2", 26381)], 3, None, "pw"),
        ),
        (
            "sentinel://u:p%40ss@s1:1/2;sentinel://u:p%40ss@s2:2/2",
            SentinelURL([("s1", 1), ("s2", 2)], 2, "u", "p@ss"),
        ),
    ],
)
def test_the_addresses_give_the_database_and_password(url: str, parsed: SentinelURL) -> None:
    assert parse_sentinel_url(url) == parsed


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sentinel://s1:26379;sentinel://s2:26379/1", "another database or password"),
        ("sentinel://:pw@s1/1;sentinel://s2/1", "another database or password"),
        ("sentinel://s1;redis://s2:6379", "is not sentinel://"),
        ("sentinel://s1/zero", "the database must be a number"),
        ("sentinel://s1:port", "bad Sentinel address 1"),
    ],
)
def test_a_url_kombu_would_read_differently_after_a_reconnect_is_refused(
    url: str, says: str
) -> None:
    with pytest.raises(ConfigurationError, match=says):
        parse_sentinel_url(url)


def test_settings_refuse_a_bad_sentinel_url_at_load_and_pass_the_master_name_on() -> None:
    with pytest.raises(ValidationError, match="another database or password"):
        Settings(_env_file=None, broker_url="sentinel://s1;sentinel://s2/4")
    settings = Settings(_env_file=None, redis_url="sentinel://s1/4", redis_sentinel_master="m")
    assert settings.broker == "sentinel://s1/4"
    assert settings_env(settings)["AGENTQ_REDIS_SENTINEL_MASTER"] == "m"
