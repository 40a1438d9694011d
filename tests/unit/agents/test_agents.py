from pathlib import Path

import pytest

from app.agents.registry import EXAMPLE_AGENTS, AgentRegistry, AgentSpec, load_registry
from app.errors import ConfigurationError


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


def test_default_registry_is_the_examples():
    assert [s.name for s in load_registry(None)] == [s.name for s in EXAMPLE_AGENTS]
