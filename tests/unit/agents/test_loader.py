"""The registry a process loads: included modules (from the current directory too), entry
points of installed packages, the agents file or the examples; a missing tool stops it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.agents.loader import load_registry
from app.agents.registry import EXAMPLE_AGENTS
from app.agents.tools import TOOLS
from app.config import Settings
from app.errors import ConfigurationError
from tests.fixtures.declarations import UserCode, declarations_restored

WEATHER = """
    from app import Agent, tool

    @tool
    def forecast(city: str, days: int = 3) -> str:
        '''The weather forecast for a city.'''
        return "sunny"

    Agent("weather", system_prompt="You forecast the weather.", tools=[forecast])
"""


@pytest.fixture
def code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[UserCode]:
    """A user's modules in a temporary folder, the current directory; sys.path, the tools
    and the agents are restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    user = UserCode(tmp_path)
    with declarations_restored():
        yield user
    user.forget()


def settings(**fields) -> Settings:
    return Settings(_env_file=None, **{"agents_file": None, "include": [], **fields})


def test_without_declarations_the_registry_is_the_examples(code):
    assert load_registry(settings()).names == [spec.name for spec in EXAMPLE_AGENTS]


def test_included_modules_from_the_current_directory_declare_agents_and_tools(code):
    code.module("mytools", WEATHER)
    code.module("weatherpkg.more", "from app import Agent\nAgent('storms', tools=['forecast'])\n")
    assert str(code.root) not in sys.path  # found because the loader puts the cwd on the path
    registry = load_registry(settings(include=["mytools", "weatherpkg.more"]))
    assert registry.names == ["weather", "storms"]  # no examples once Python declares agents
    assert registry.spec("weather").tools == ("forecast",)
    assert TOOLS["forecast"].description == "The weather forecast for a city."
    assert load_registry(settings(include=["mytools"])).names == ["weather", "storms"]  # again


def test_python_agents_are_added_to_the_agents_files(code):
    code.module("mytools", WEATHER)
    (code.root / "agents.yaml").write_text("agents:\n  - name: research\n    tools: [calculator]\n")
    registry = load_registry(settings(include=["mytools"], agents_file=code.root / "agents.yaml"))
    assert registry.names == ["research", "weather"]


def test_an_agent_in_both_the_file_and_python_is_a_configuration_error(code):
    code.module("mytools", WEATHER)
    (code.root / "agents.yaml").write_text("agents:\n  - name: weather\n")
    with pytest.raises(ConfigurationError) as error:
        load_registry(settings(include=["mytools"], agents_file=code.root / "agents.yaml"))
    assert str(error.value) == (
        f"agent 'weather' is declared both in {code.root / 'agents.yaml'} and in Python "
        "(Agent); keep one of them"
    )


def test_an_agent_whose_tool_no_module_registers_is_refused_in_one_line(code):
    (code.root / "agents.yaml").write_text("agents:\n  - name: weather\n    tools: [forecast]\n")
    with pytest.raises(ConfigurationError) as error:
        load_registry(settings(agents_file=code.root / "agents.yaml"))
    assert str(error.value) == (
        "agent 'weather' uses tool 'forecast', which is not registered; import the module "
        "that declares it with `agentq worker --include <module>` or AGENTQ_INCLUDE"
    )


def test_a_module_that_does_not_import_is_named_with_its_error(code):
    code.module("broken", "import no_such_dependency_of_broken\n")
    for include, reason in [
        ("nosuch", "ModuleNotFoundError: No module named 'nosuch'"),
        ("broken", "ModuleNotFoundError: No module named 'no_such_dependency_of_broken'"),
    ]:
        with pytest.raises(ConfigurationError) as error:
            load_registry(settings(include=[include]))
        assert str(error.value) == f"cannot import AGENTQ_INCLUDE module {include!r}: {reason}"


def test_include_is_read_from_the_environment_comma_separated_or_json(monkeypatch):
    monkeypatch.setenv("AGENTQ_INCLUDE", " mytools, weatherpkg.more ,")
    assert Settings(_env_file=None).include == ["mytools", "weatherpkg.more"]
    monkeypatch.setenv("AGENTQ_INCLUDE", '["mytools"]')
    assert Settings(_env_file=None).include == ["mytools"]


def test_an_entry_point_naming_a_module_declares_by_being_imported(code):
    code.module("weather_agents.declared", WEATHER)
    code.entry_point("weather_agents", "weather", "weather_agents.declared")
    assert load_registry(settings()).names == ["weather"]


def test_an_entry_point_naming_a_function_is_called_with_no_arguments(code):
    code.module(
        "weather_plugin",
        """
        def register():
            import mytools  # declares on demand
        """,
    )
    code.module("mytools", WEATHER)
    code.entry_point("weather_plugin", "weather", "weather_plugin:register")
    assert "mytools" not in sys.modules
    assert load_registry(settings()).names == ["weather"]


def test_an_entry_point_that_fails_is_named_in_one_line(code):
    code.entry_point("weather_plugin", "weather", "weather_plugin_missing:register")
    with pytest.raises(ConfigurationError) as error:
        load_registry(settings())
    assert str(error.value) == (
        "cannot load entry point 'weather' (weather_plugin_missing:register) of group "
        "'agentq.agents': ModuleNotFoundError: No module named 'weather_plugin_missing'"
    )
