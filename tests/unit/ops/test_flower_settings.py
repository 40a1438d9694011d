"""`agentq flower` settings: credentials required and well formed, options free of secrets."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from app.config import FlowerSettings
from app.errors import ConfigurationError
from app.ops.flower import basic_auth_credentials, flower_options


def test_credentials_are_required() -> None:
    with pytest.raises(ConfigurationError, match="AGENTQ_FLOWER__BASIC_AUTH"):
        basic_auth_credentials(FlowerSettings())


@pytest.mark.parametrize("value", ["just-a-password", ":pw-x1", "alice:", ""])
def test_malformed_credentials_are_refused_without_quoting_them(value: str) -> None:
    with pytest.raises(ConfigurationError) as error:
        basic_auth_credentials(FlowerSettings(basic_auth=SecretStr(value)))
    assert "user:password" in str(error.value)
    assert not value or value not in str(error.value)


def test_options_carry_no_secret() -> None:
    flower = FlowerSettings(basic_auth=SecretStr("ops:pa55"), port=6000, url_prefix="/flower/")
    assert basic_auth_credentials(flower) == "ops:pa55"
    options = flower_options(flower)
    assert "--port=6000" in options and "--url_prefix=flower" in options
    assert not any("pa55" in option for option in options)
