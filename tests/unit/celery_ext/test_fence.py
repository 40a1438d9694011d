"""The fence: Celery's and kombu's private names are used in app/celery_ext/ only, all of
them listed in app.celery_ext.PRIVATE_NAMES, and a worker stops at start if one is missing."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import app
from app.celery_ext import PRIVATE_NAMES, PrivateName, check_internals
from app.errors import CeleryInternalsError, ConfigurationError

APP = Path(app.__file__).parent
FENCE = APP / "celery_ext"
ROOT = APP.parent

# What modules outside the fence may import from Celery and kombu: documented, stable API.
PUBLIC = {
    "celery": {
        "Celery",  # the app
        "Task",  # the task base class (RunAgentTask)
        "states",  # task state names (SUCCESS, STARTED)
        "signals",  # documented signals (logging set-up)
        "bootsteps",  # the documented way to add worker and consumer steps
    },
    "celery.signals": {"worker_shutting_down"},  # a documented signal (graceful shutdown)
    # A task's documented control flow, and the documented timeout of AsyncResult.get().
    "celery.exceptions": {"Ignore", "Reject", "Retry", "TimeoutError"},
    "celery.result": {"AsyncResult"},  # what a producer holds (RunResult extends it)
    # Celery's lazy object (celery.current_app is one): the default app's run_agent task.
    "celery.local": {"Proxy"},
    "kombu.exceptions": {"OperationalError"},  # what a publish raises with the broker away
}


def _modules(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if FENCE not in p.parents)


def _fence_breaches(path: Path, forbidden: set[str]) -> list[str]:
    """Imports from Celery/kombu beyond PUBLIC, and uses of ``forbidden`` attribute names."""
    where = path.relative_to(ROOT) if ROOT in path.parents else path.name
    breaches = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("celery", "kombu") and alias.name != "celery":
                    breaches.append(f"{where}:{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in ("celery", "kombu"):
                continue
            allowed = PUBLIC.get(node.module, set())
            names = [alias.name for alias in node.names if alias.name not in allowed]
            breaches += [f"{where}:{node.lineno}: from {node.module} import {n}" for n in names]
        elif isinstance(node, ast.Attribute) and node.attr in forbidden:
            breaches.append(f"{where}:{node.lineno}: .{node.attr}")
    return breaches


def _forbidden() -> set[str]:
    return {n.name for n in PRIVATE_NAMES if not n.common}


def test_no_module_outside_the_fence_reaches_into_celery_or_kombu() -> None:
    forbidden = _forbidden()
    breaches = [b for path in _modules(APP) for b in _fence_breaches(path, forbidden)]
    assert breaches == []


def test_the_fence_test_sees_a_breach(tmp_path: Path) -> None:
    module = tmp_path / "breach.py"
    module.write_text(
        "from celery.worker import state\n"
        "from celery import Celery\n"
        "requests = state.active_requests\n"
        "channel._brpop_start()\n"
    )
    assert [b.split(": ", 1)[1] for b in _fence_breaches(module, _forbidden())] == [
        "from celery.worker import state",
        ".active_requests",
        "._brpop_start",
    ]


def _defined_in_fence() -> set[str]:
    """Names agentq's own code in the fence defines: functions, classes, attributes it sets."""
    names: set[str] = set()
    for path in FENCE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return names


def test_every_private_attribute_the_fence_uses_is_listed() -> None:
    # A leading-underscore attribute the fence reads but does not define comes from Celery or
    # kombu (or their base classes, which agentq's subclasses inherit).
    listed = {n.name for n in PRIVATE_NAMES}
    ours = _defined_in_fence()
    used = set()
    for path in FENCE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr[:1] == "_" != node.attr[1:2]:
                used.add(node.attr)
    assert sorted(used - ours - listed) == []


def test_every_override_of_a_celery_or_kombu_class_is_listed() -> None:
    # A method or attribute a fence class redefines over its Celery/kombu base relies on
    # the base's use of it: listed, so a rename fails the start-up check.
    listed = {(n.owner, n.name) for n in PRIVATE_NAMES}
    unlisted = []
    for path in FENCE.rglob("*.py"):
        module = importlib.import_module(
            ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        )
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ClassDef):
                continue
            cls = getattr(module, node.name)
            for name in vars(cls):
                owners = _owners(cls, name)
                if name.startswith("__") or not owners:
                    continue
                if name in ("label", "requires", "name") and issubclass(cls, _bootstep()):
                    continue  # a bootstep's documented attributes (name: set by its metaclass)
                if not any((owner, name) in listed for owner in owners):
                    unlisted.append(f"{owners[0]}.{name}")
    assert unlisted == []


def _bootstep() -> type:
    from celery import bootsteps

    return bootsteps.Step  # type: ignore[no-any-return]


def _owners(cls: type, name: str) -> list[str]:
    """The ``module:Class`` of every Celery/kombu class in ``cls``'s MRO defining ``name``."""
    return [
        f"{base.__module__}:{base.__qualname__}"
        for base in cls.__mro__[1:]
        if name in vars(base) and base.__module__.split(".")[0] in ("celery", "kombu")
    ]


def test_each_listed_name_names_a_guard_that_exists() -> None:
    for name in PRIVATE_NAMES:
        assert (ROOT / name.guard).is_file(), name


def test_the_installed_celery_and_kombu_have_every_listed_name() -> None:
    check_internals()  # raises if one is missing


def test_a_missing_name_stops_with_one_line_naming_it_and_the_versions(monkeypatch) -> None:
    from importlib.metadata import version

    from kombu.transport import redis as kombu_redis

    monkeypatch.delattr(kombu_redis.Channel, "_brpop_start")
    with pytest.raises(CeleryInternalsError) as caught:
        check_internals()
    message = str(caught.value)
    assert "\n" not in message
    assert "kombu.transport.redis:Channel._brpop_start" in message
    assert f"Celery {version('celery')}" in message and f"kombu {version('kombu')}" in message
    assert isinstance(caught.value, ConfigurationError)  # `agentq worker` prints it, one line


def test_an_instance_attribute_is_checked_in_the_init_that_sets_it() -> None:
    assert PrivateName("kombu.transport.redis:Channel", "_queue_cycle", "", True).exists()
    assert not PrivateName("kombu.transport.redis:Channel", "_no_such", "", True).exists()
    assert not PrivateName("kombu.transport.nowhere:Channel", "sep", "").exists()
