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


def test_the_task_list_shows_agent_run_step_and_tool_first() -> None:
    from flower.views.tasks import TASK_COLUMNS

    (option,) = (o for o in flower_options(FlowerSettings()) if o.startswith("--tasks_columns="))
    columns = option.removeprefix("--tasks_columns=").split(",")
    # name: the agent type; uuid: the run id (and :step); result: what the step did.
    assert columns[:4] == ["name", "uuid", "state", "result"]
    assert set(columns) <= set(TASK_COLUMNS)  # Flower drops a column it does not know
