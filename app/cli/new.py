"""``agentq new agent NAME``: a module with an agent and a typed tool, and a test that runs it
through a real worker (:mod:`app.testing`), written in the current folder to be made yours."""

from __future__ import annotations

import importlib.util
import keyword
import re
import shlex
import sys
from pathlib import Path

import click

from app.cli import main
from app.cli.exits import ExitCode, fail

# A Python module name that is also an agent name (app.agents.registry) and leaves room for
# its tool's name, NAME_tool (64 characters at most, app.agents.tools).
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,58}$")

AGENT_MODULE = '''\
"""The {name} agent and its tool, written by `agentq new agent {name}`: make them yours.

Serve it from this folder: agentq worker --include {name} --agents {name}
"""

from app import Agent, tool


@tool
def {name}_tool(text: str, times: int = 1) -> dict[str, object]:
    """Repeat a text and count its words (replace this with your agent's own work).

    Args:
        text: The text to repeat.
        times: How many times to repeat it.
    """
    repeated = " ".join([text] * times)
    return {{"text": repeated, "words": len(repeated.split())}}


Agent(
    "{name}",
    system_prompt="You are the {name} agent. Use {name}_tool to repeat a text.",
    tools=[{name}_tool],
    # The first reply must call a tool and the next one answers: what a small local model
    # needs (the server's guided decoding keeps its call valid). With a larger model, drop
    # this line (tool_choice "auto"): it decides itself when to call which tool.
    tool_choice=("required", "none"),
    max_steps=4,
)
'''

AGENT_TEST = '''\
"""The {name} agent through a real worker: embedded Redis, the local Triton serving the
scripted model, a SQLite session store; all started here and stopped when the test ends.

Run it from this folder: python -m pytest test_{name}.py
"""

import pytest

from app.testing import local_stack

# The scripted model calls the tool that [tool:NAME {{args}}] names, then answers with the
# tool's result; a real model writes the call itself from the tool's schema.
ASK = 'Say hi twice. [tool:{name}_tool {{"text": "hi", "times": 2}}]'


def test_{name}_answers_with_its_tools_result() -> None:
    with local_stack(include=["{name}"]) as stack:
        answer = stack.run("{name}", ASK)
    assert "hi hi" in answer


def test_{name}_with_a_real_model() -> None:
    """SmolLM2-135M-Instruct (agentq[llm]) reads the tool's schema and writes the call."""
    pytest.importorskip("llama_cpp", reason="the real local model needs agentq[llm]")
    with local_stack(include=["{name}"], model="local") as stack:
        result = stack.submit("{name}", "Repeat the text 'agents at scale' two times.")
        answer = result.get(timeout=120)
        run = stack.store.load_run(result.id)
    call = run.steps[0].tool_calls[0]  # the model's call, as the worker made it
    assert call.name == "{name}_tool" and isinstance(call.args["text"], str)
    assert "error" not in call.result and answer
'''


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a new agent and its module, or None when it can."""
    if not _NAME.match(name):
        return (
            f"invalid agent name {name!r}: use 1-59 lower-case letters, digits and _, "
            "starting with a letter (it names a Python module)"
        )
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return f"invalid agent name {name!r}: it is a Python keyword"
    if name in sys.stdlib_module_names:
        return f"agent name {name!r} is a module of Python's standard library; pick another"
    return None


def scaffold(name: str) -> dict[str, str]:
    """The files of a new agent ``name``: file name -> text."""
    return {
        f"{name}.py": AGENT_MODULE.format(name=name),
        f"test_{name}.py": AGENT_TEST.format(name=name),
    }


def _shadows(name: str, folder: Path) -> str | None:
    """Where an installed module ``name`` lives, when ``folder/name.py`` would hide it from a
    worker started in ``folder`` (its current directory comes first on the import path)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    origin = Path(spec.origin) if spec.origin else None
    if origin is not None and origin.parent.resolve() == folder.resolve():
        return None  # the agent written here before (--force writes it again)
    return str(origin or spec.name)


@main.group()
def new() -> None:
    """Start something of your own from a working example."""


@new.command("agent")
@click.argument("name")
@click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    help="Folder to write into (default: the current one; made if missing).",
)
@click.option("--force", is_flag=True, help="Overwrite the files if they exist.")
def new_agent(name: str, folder: Path, force: bool) -> None:
    """Write NAME.py (an agent and a typed tool) and test_NAME.py (a test that runs it through a
    real worker), then print the commands that test and serve it."""
    problem = name_problem(name)
    if problem is None and (found := _shadows(name, folder)):
        problem = f"agent name {name!r} would hide the installed module {found}; pick another"
    if problem:
        fail(ExitCode.REFUSED, problem)
    files = scaffold(name)
    existing = [folder / f for f in files if (folder / f).exists()]
    if existing and not force:
        listed = " and ".join(str(p) for p in existing)
        verb = "exists" if len(existing) == 1 else "exist"
        fail(ExitCode.REFUSED, f"{listed} already {verb}; nothing written (--force overwrites)")
    folder.mkdir(parents=True, exist_ok=True)
    for file, text in files.items():
        (folder / file).write_text(text, encoding="utf-8")
        click.echo(f"wrote {folder / file}")
    cd = [] if folder.resolve() == Path.cwd().resolve() else [f"cd {shlex.quote(str(folder))}"]
    ask = shlex.quote(f'[tool:{name}_tool {{"text": "hi", "times": 2}}] Say hi twice.')
    steps = [
        *cd,
        f"python -m pytest test_{name}.py     # its test: Redis, Triton and a worker, "
        "started and stopped by the test",
        f"agentq worker --include {name} --agents {name}     # with Redis and Triton running "
        "(README: Your first agent)",
        f"AGENTQ_INCLUDE={name} agentq submit {name} {ask}",
    ]
    click.echo("next:\n" + "\n".join(f"  {step}" for step in steps))
