"""Agent types: :class:`AgentSpec`, declared in Python with :func:`Agent` or in an agents file,
and the :class:`AgentRegistry` a process works with (built by :mod:`app.agents.loader`).

In Python::

    weather = Agent("weather", system_prompt="You forecast.", tools=[forecast], max_steps=4)

An agents file (YAML or TOML) holds a list under ``agents``::

    agents:
      - name: research
        system_prompt: You answer research questions.
        tools: [calculator, kv_get]
        max_steps: 6
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from app.agents.guardrails import Budget, Validator, ValidatorSpec, build_validators
from app.agents.mcp_servers import McpServer
from app.agents.tools import tool_name
from app.config import AgentMemory, AgentRetention, LimitSettings
from app.constants import QUEUE_PREFIX
from app.errors import ConfigurationError, InvalidInputError, UnknownAgentError
from app.inference.chat import AUTO, NONE, REQUIRED

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


class AgentSpec(BaseModel):
    """One agent type: what model it calls, how it is prompted, what it may do."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Agent type; also names its queue (agent.<name>).")
    model: str | None = Field(
        default=None,
        description="Model serving this agent: a Triton model name or an OpenAI model id; "
        "None: the backend's configured model (settings.triton.model / settings.openai.model).",
    )
    backend: Literal["triton", "openai", "echo"] = Field(
        default="triton",
        description="Model server kind: Triton (gRPC, TensorRT-LLM ensemble), an "
        "OpenAI-compatible server (NIM, vLLM) from settings.openai, or echo (no server: "
        "each run answers with its input in one step; smoke and load tests).",
    )
    system_prompt: str = Field(default="You are a helpful agent.", description="First prompt line.")
    tools: tuple[str, ...] = Field(
        default=(), description="Names of the tools it may call (tool functions: their names)."
    )
    mcp_servers: tuple[McpServer, ...] = Field(
        default=(),
        description="MCP servers whose tools it may call too, as <server>__<tool> (or the "
        "server's prefix): stdio commands or streamable HTTP URLs (app.agents.mcp_servers).",
    )
    tool_choice: str | tuple[str, ...] = Field(
        default=AUTO,
        description="Whether the model must call a tool, as OpenAI's tool_choice: auto (it "
        "decides), required (its reply must call one), none (it must answer), or a tool's "
        "name; a sequence gives one per model reply of a run, the last for the rest, e.g. "
        "('required', 'none'): call a tool, then answer (what a small model needs). A server "
        "that constrains decoding (Triton's guided decoding, OpenAI's tool_choice) keeps a "
        "required call schema-valid.",
    )
    max_steps: int = Field(default=8, gt=0, le=1000, description="Step budget of one run.")
    max_tokens: int | None = Field(
        default=None, gt=0, description="max_tokens per model call (else settings.triton)."
    )
    temperature: float | None = Field(default=None, ge=0, description="Sampling temperature.")
    response_cache: bool = Field(
        default=False,
        description="Answer a model call from the response cache when an identical one was "
        "made before (same backend, model and version, prompt and parameters); used only with "
        "an explicit temperature 0, and while AGENTQ_CACHE__RESPONSES is on (docs/caches.md).",
    )
    model_version: str | None = Field(
        default=None,
        description="Version of the model, part of the response cache's key (change it when "
        "the model changes); None: the version the server reports (Triton's model metadata, "
        "an OpenAI-compatible server's last reply).",
    )
    queue: str | None = Field(default=None, description="Queue override (default agent.<name>).")
    max_replicas: int | None = Field(
        default=None,
        gt=0,
        description="Most worker replicas the autoscaler may run (else settings.deploy).",
    )
    step_timeout_s: float | None = Field(
        default=None, gt=0, description="Deadline of one step (else settings.worker)."
    )
    max_input_bytes: int | None = Field(
        default=None, gt=0, description="Largest input it accepts (else settings.limits)."
    )
    budget: Budget = Field(
        default_factory=Budget,
        description="Per-run limits on tokens, tool calls and wall time (unset ones default "
        "to settings.limits; max_steps above is the step budget). A run may tighten them.",
    )
    input_validators: tuple[ValidatorSpec, ...] = Field(
        default=(), description="Checks on a run's input at submit, e.g. blocked_patterns."
    )
    output_validators: tuple[ValidatorSpec, ...] = Field(
        default=(),
        description="Checks on the final answer before it is returned, e.g. json_schema.",
    )
    memory: AgentMemory = Field(
        default_factory=AgentMemory,
        description="Long-term memory: automatic retrieval into its prompt (recall, scope, k, "
        "max_tokens, min_score; docs/memory.md). Its remember / recall tools are listed in tools.",
    )
    retention: AgentRetention = Field(
        default_factory=AgentRetention,
        description="How long its finished runs and idle sessions are kept (max_age_days, "
        "max_runs, session_idle_days; unset ones: settings.retention; docs/retention.md).",
    )

    @field_validator("tools", mode="before")
    @classmethod
    def _tool_names(cls, value: Any) -> Any:
        if isinstance(value, str | bytes) or not isinstance(value, Iterable):
            return value  # pydantic says what is wrong with it
        return tuple(tool_name(item) if callable(item) else item for item in value)

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _tool_choices(cls, value: Any) -> Any:
        if isinstance(value, list):
            value = tuple(value)
        if isinstance(value, tuple) and not value:
            raise ValueError("tool_choice needs at least one value")
        return value

    @model_validator(mode="after")
    def _choices_name_tools(self) -> AgentSpec:
        choices = self.tool_choice if isinstance(self.tool_choice, tuple) else (self.tool_choice,)
        for choice in choices:
            if choice in (AUTO, REQUIRED, NONE) or choice in self.tools or self.mcp_servers:
                continue
            raise ValueError(
                f"tool_choice {choice!r} is neither auto, required, none nor one of the "
                f"agent's tools ({', '.join(self.tools) or 'it has none'})"
            )
        return self

    def tool_choice_at(self, reply: int) -> str:
        """The tool choice for the run's ``reply``-th model reply (0: the first)."""
        if isinstance(self.tool_choice, str):
            return self.tool_choice
        return self.tool_choice[min(reply, len(self.tool_choice) - 1)]

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"agent name {value!r} must be lower-case letters, digits, '-' or '_', "
                "starting with a letter"
            )
        return value

    def run_budget(self, limits: LimitSettings, override: Budget | None = None) -> Budget:
        """A run's budget: this agent's, then ``limits``' defaults, tightened by ``override``."""
        defaults = Budget(
            max_steps=self.max_steps,
            max_tokens_in=limits.max_tokens_in,
            max_tokens_out=limits.max_tokens_out,
            max_tool_calls=limits.max_tool_calls,
            max_wall_time_s=limits.max_wall_time_s,
        )
        budget = self.budget.merged(defaults)
        return budget.tightened(override) if override is not None else budget

    @property
    def queue_name(self) -> str:
        """The Celery queue (a Redis list) this agent's runs wait in: ``queue``, else
        ``agent.<name>``."""
        return self.queue or f"{QUEUE_PREFIX}{self.name}"


class AgentRegistry:
    """The agent types a deployment knows, by name."""

    def __init__(self, specs: Iterable[AgentSpec] = ()) -> None:
        self._specs: dict[str, AgentSpec] = {}
        self._validators: dict[str, tuple[list[tuple[str, Validator]], ...]] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: AgentSpec) -> AgentSpec:
        """Add an agent type; a second spec with the same name is a configuration error."""
        if spec.name in self._specs:
            raise ConfigurationError(f"agent {spec.name!r} is declared twice")
        # Built now, so a bad validator declaration fails at start-up, not in a run.
        self._validators[spec.name] = (
            build_validators(spec.input_validators),
            build_validators(spec.output_validators),
        )
        self._specs[spec.name] = spec
        return spec

    def input_validators(self, name: str) -> list[tuple[str, Validator]]:
        """The built input validators of agent type ``name``."""
        return self._validators[name][0]

    def output_validators(self, name: str) -> list[tuple[str, Validator]]:
        """The built output validators of agent type ``name``."""
        return self._validators[name][1]

    def get(self, name: str) -> AgentSpec | None:
        """The spec of ``name``, or None."""
        return self._specs.get(name)

    def spec(self, agent: object) -> AgentSpec:
        """The spec of agent type ``agent``, as a run names it (its queue is
        ``spec(agent).queue_name``); InvalidInputError or UnknownAgentError otherwise."""
        if not isinstance(agent, str) or not agent:
            raise InvalidInputError(f"'agent' must be a non-empty string, got {agent!r}")
        try:
            return self._specs[agent]
        except KeyError:
            known = ", ".join(sorted(self._specs)) or "none"
            raise UnknownAgentError(
                f"unknown agent {agent!r}; known agent types: {known}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[AgentSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    @property
    def names(self) -> list[str]:
        """Agent type names, in declaration order."""
        return list(self._specs)

    @classmethod
    def from_file(cls, path: Path) -> AgentRegistry:
        """Load agent types from a YAML (.yaml/.yml) or TOML (.toml) file."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"cannot read agents file {path}: {exc}") from exc
        try:
            if path.suffix == ".toml":
                data = tomllib.loads(text)
            elif path.suffix in {".yaml", ".yml"}:
                data = yaml.safe_load(text)
            else:
                raise ConfigurationError(f"agents file {path} must end in .yaml, .yml or .toml")
        except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"agents file {path} does not parse: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("agents"), list):
            raise ConfigurationError(f"agents file {path} needs a list under 'agents'")
        try:
            return cls(AgentSpec.model_validate(item) for item in data["agents"])
        except ValidationError as exc:
            raise ConfigurationError(f"agents file {path}: {exc}") from exc


EXAMPLE_AGENTS = (
    AgentSpec(
        name="research",
        system_prompt="You are a research agent. Use tools to look facts up, then answer.",
        tools=("calculator", "kv_get", "word_count"),
        max_steps=8,
    ),
    AgentSpec(
        name="coder",
        system_prompt="You are a coding agent. Compute, record results, then answer.",
        tools=("calculator", "kv_set", "kv_get", "counter_incr", "word_count"),
        max_steps=8,
    ),
)
"""The agent types used when no agents file is configured (demo, tests, examples)."""


AGENTS: dict[str, AgentSpec] = {}
"""Agent types declared in Python with :func:`Agent`, by name; the loader adds them to the
registry (:func:`app.agents.loader.load_registry`)."""


def Agent(name: str, **fields: Any) -> AgentSpec:
    """Declare agent type ``name``: an :class:`AgentSpec` of ``fields`` (model, backend,
    system_prompt, tools, max_steps, max_tokens, temperature, queue, budget, validators...),
    registered for the worker that imports this module. ``tools`` takes tool functions or
    names. Another declaration under the same name is a :class:`ConfigurationError` (the
    same one again, its module imported twice, is not)."""
    try:
        spec = AgentSpec(name=name, **fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'agent'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigurationError(f"agent {name!r}: {problems}") from None
    declared = AGENTS.get(spec.name)
    if declared is not None and declared != spec:
        raise ConfigurationError(f"agent {name!r} is declared twice in Python, differently")
    AGENTS[spec.name] = spec
    return spec
