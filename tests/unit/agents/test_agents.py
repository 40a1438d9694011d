from collections.abc import Iterator
from pathlib import Path

import pytest

from app.agents.registry import AGENTS, AgentRegistry, AgentSpec
from app.agents.tools import tool
from app.errors import ConfigurationError
from tests.fixtures.declarations import declarations_restored


@pytest.fixture(autouse=True)
def _declarations_restored() -> Iterator[None]:
    with declarations_restored():
        yield


def test_queue_is_agent_dot_name_unless_overridden():
    assert AgentSpec(name="research").queue_name == "agent.research"
    assert AgentSpec(name="research", queue="fast").queue_name == "fast"


@pytest.mark.parametrize("name", ["Research", "1abc", "a b", "", "x" * 70])
def test_bad_agent_names_are_refused(name):
    with pytest.raises(ValueError):
        AgentSpec(name=name)


def test_duplicate_agent_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="twice"):
        AgentRegistry([AgentSpec(name="a"), AgentSpec(name="a")])


def test_yaml_and_toml_files_load_the_same_registry(tmp_path: Path):
    yaml_file = tmp_path / "agents.yaml"
    yaml_file.write_text(
        "agents:\n  - name: triage\n    tools: [calculator]\n    max_steps: 3\n  - name: writer\n"
    )
    toml_file = tmp_path / "agents.toml"
    toml_file.write_text(
        '[[agents]]\nname = "triage"\ntools = ["calculator"]\nmax_steps = 3\n'
        '[[agents]]\nname = "writer"\n'
    )
    for path in (yaml_file, toml_file):
        registry = AgentRegistry.from_file(path)
        assert registry.names == ["triage", "writer"]
        assert registry.get("triage").tools == ("calculator",)
        assert registry.get("triage").max_steps == 3
        assert [registry.spec(n).queue_name for n in registry.names] == [
            "agent.triage",
            "agent.writer",
        ]


@pytest.mark.parametrize(
    "text",
    [
        "agents: 3\n",
        "nothing: []\n",
        "agents:\n  - name: ok\n    unknown_field: 1\n",
        "agents: [\n",
    ],
)
def test_broken_agents_file_says_what_is_wrong(tmp_path: Path, text):
    path = tmp_path / "agents.yaml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match="agents file"):
        AgentRegistry.from_file(path)


def test_an_agent_declared_in_python_is_registered_with_its_tools_by_name():
    from app import Agent

    @tool
    def forecast(city: str) -> str:
        return "sunny"

    weather = Agent(
        "weather", model="llama-3-8b", system_prompt="You forecast.", tools=[forecast, "kv_get"]
    )
    assert isinstance(weather, AgentSpec)
    assert weather.tools == ("forecast", "kv_get")
    assert (weather.model, weather.max_steps, weather.backend) == ("llama-3-8b", 8, "triton")
    assert AGENTS["weather"] is weather


def test_an_agent_without_a_model_is_served_by_the_backends_configured_one():
    assert AgentSpec(name="research").model is None


def test_the_same_name_declared_twice_differently_is_a_configuration_error():
    from app import Agent

    Agent("weather", max_steps=4)
    Agent("weather", max_steps=4)  # the same declaration again: its module imported twice
    with pytest.raises(ConfigurationError, match="agent 'weather' is declared twice"):
        Agent("weather", max_steps=5)
    assert AGENTS["weather"].max_steps == 4


def test_a_bad_agent_declaration_says_which_field_in_one_line():
    from app import Agent

    with pytest.raises(ConfigurationError) as error:
        Agent("weather", max_steps=0, colour="blue")
    assert str(error.value) == (
        "agent 'weather': max_steps: Input should be greater than 0; "
        "colour: Extra inputs are not permitted"
    )
    with pytest.raises(ConfigurationError, match="is not a registered tool"):
        Agent("weather", tools=[lambda city: city])
    assert "weather" not in AGENTS
