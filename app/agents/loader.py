"""The agent registry of a process, built from the user's code and configuration.

In this order:

1. the modules of ``settings.include`` (``AGENTQ_INCLUDE``, ``agentq worker --include``) are
   imported, with the current directory on ``sys.path`` as Celery's ``--include`` has it:
   their ``@tool`` functions and ``Agent(...)`` declarations register themselves;
2. every entry point of the group ``agentq.agents`` of the installed packages is loaded,
   which imports its module; when what it names is callable (a function, not a tool), it is
   called with no arguments, so a package can declare on demand;
3. the agents file (``settings.agents_file``) if there is one, else, when no agent was
   declared in Python either, the example agents; agents declared in Python are added to
   the file's.

Every tool an agent names must then be registered: a worker, a producer or ``agentq
manifests`` with a missing tool stops at start with one line saying which module to include.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from collections.abc import Iterable

from app.agents.mcp_servers import check_declarations
from app.agents.registry import AGENTS, EXAMPLE_AGENTS, AgentRegistry
from app.agents.tools import TOOLS
from app.config import Settings
from app.errors import ConfigurationError

ENTRY_POINT_GROUP = "agentq.agents"
"""Entry-point group through which an installed package declares agents and tools."""


def load_registry(settings: Settings) -> AgentRegistry:
    """The agent types ``settings`` name, with their tools registered (see the module
    docstring); :class:`ConfigurationError` in one line when something is missing."""
    import_modules(settings.include)
    load_entry_points()
    declared = list(AGENTS.values())
    if settings.agents_file is not None:
        registry = AgentRegistry.from_file(settings.agents_file)
    else:
        registry = AgentRegistry(() if declared else EXAMPLE_AGENTS)
    for spec in declared:
        if spec.name in registry:
            raise ConfigurationError(
                f"agent {spec.name!r} is declared both in {settings.agents_file} and in Python "
                "(Agent); keep one of them"
            )
        registry.register(spec)
    check_tools(registry)
    return registry


def import_modules(modules: Iterable[str]) -> None:
    """Import ``modules`` (the current directory first on ``sys.path``, where it stays so
    that tool processes find them too); :class:`ConfigurationError` for one that fails."""
    modules = list(modules)
    if not modules:
        return
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # whatever a user's module raises: one line, with its cause
            raise ConfigurationError(
                f"cannot import AGENTQ_INCLUDE module {name!r}: {type(exc).__name__}: {exc}"
            ) from exc


def load_entry_points(group: str = ENTRY_POINT_GROUP) -> None:
    """Load every entry point of ``group``: its module is imported and, when it names a
    callable that is not a tool, that is called with no arguments."""
    tools = {id(spec.fn) for spec in TOOLS.values()}
    for point in importlib.metadata.entry_points(group=group):
        try:
            target = point.load()
            if callable(target) and id(target) not in tools:
                target()
        except Exception as exc:  # a package's failure: one line naming the entry point
            raise ConfigurationError(
                f"cannot load entry point {point.name!r} ({point.value}) of group {group!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc


def check_tools(registry: AgentRegistry) -> None:
    """:class:`ConfigurationError` for the first tool an agent names that is not registered,
    or MCP servers declared without the ``mcp`` package or differently by two agents."""
    check_declarations({spec.name: spec.mcp_servers for spec in registry})
    for spec in registry:
        for name in spec.tools:
            if name not in TOOLS:
                raise ConfigurationError(
                    f"agent {spec.name!r} uses tool {name!r}, which is not registered; import "
                    "the module that declares it with `agentq worker --include <module>` or "
                    "AGENTQ_INCLUDE"
                )
