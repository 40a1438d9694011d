"""The commands of app/cli's other modules are imported when one of them runs: LAZY_COMMANDS
names each command with the module that declares it, so `agentq worker` imports none."""

from __future__ import annotations

import importlib

from click.testing import CliRunner

from app.cli import LAZY_COMMANDS, main


def test_lazy_commands_name_every_command_with_its_module() -> None:
    for module in set(LAZY_COMMANDS.values()):
        importlib.import_module(module)
    declared = {
        name: command.callback.__module__
        for name, command in main.commands.items()
        if command.callback is not None and command.callback.__module__ != "app.cli"
    }
    assert declared == LAZY_COMMANDS


def test_help_lists_the_lazy_commands_too() -> None:
    listed = CliRunner().invoke(main, ["--help"]).output
    assert all(f"  {name} " in listed for name in LAZY_COMMANDS)
