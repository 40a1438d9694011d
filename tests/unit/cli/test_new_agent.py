"""`agentq new agent NAME` writes an agent module and its test, and refuses, in one line with
exit 2 and nothing written, a name that cannot be a module and files that exist."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli import main
from app.cli.new import scaffold


def new_agent(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["new", "agent", *args])
    return result.exit_code, result.output


def test_it_writes_the_module_and_its_test_and_says_what_next(tmp_path: Path) -> None:
    code, out = new_agent("weather", "--dir", str(tmp_path))
    assert code == 0, out
    module = (tmp_path / "weather.py").read_text()
    test = (tmp_path / "test_weather.py").read_text()
    assert "@tool\ndef weather_tool(text: str, times: int = 1)" in module
    assert 'Agent(\n    "weather",' in module and "tools=[weather_tool]" in module
    assert 'local_stack(include=["weather"])' in test and "[tool:weather_tool " in test
    assert f"wrote {tmp_path / 'weather.py'}\nwrote {tmp_path / 'test_weather.py'}\n" in out
    assert "python -m pytest test_weather.py" in out
    assert "agentq worker --include weather --agents weather" in out
    assert "AGENTQ_INCLUDE=weather agentq submit weather" in out


def test_the_tool_has_a_docstring_and_typed_parameters() -> None:
    files = scaffold("shop_helper")
    tree = ast.parse(files["shop_helper.py"])
    [fn] = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert fn.name == "shop_helper_tool"
    assert ast.get_docstring(fn) and "Args:" in (ast.get_docstring(fn) or "")
    assert all(a.annotation is not None for a in fn.args.args)
    ast.parse(files["test_shop_helper.py"])  # valid Python


def test_a_missing_folder_is_made(tmp_path: Path) -> None:
    code, out = new_agent("weather", "--dir", str(tmp_path / "a" / "b"))
    assert code == 0, out
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == [
        "test_weather.py",
        "weather.py",
    ]


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("Weather", "invalid agent name 'Weather'"),
        ("my-agent", "invalid agent name 'my-agent'"),
        ("2fast", "invalid agent name '2fast'"),
        ("a" * 60, "invalid agent name"),
        ("class", "it is a Python keyword"),
        ("json", "a module of Python's standard library"),
        ("celery", "would hide the installed module"),
    ],
)
def test_a_name_that_cannot_be_a_module_is_refused(tmp_path: Path, name: str, why: str) -> None:
    code, out = new_agent(name, "--dir", str(tmp_path))
    assert code == 2
    assert out.startswith("agentq: ") and why in out and out.count("\n") == 1, out
    assert list(tmp_path.iterdir()) == []


def test_existing_files_are_refused_and_kept(tmp_path: Path) -> None:
    (tmp_path / "test_weather.py").write_text("mine\n")
    code, out = new_agent("weather", "--dir", str(tmp_path))
    assert code == 2
    assert out == (
        f"agentq: {tmp_path / 'test_weather.py'} already exists; nothing written "
        "(--force overwrites)\n"
    )
    assert (tmp_path / "test_weather.py").read_text() == "mine\n"
    assert not (tmp_path / "weather.py").exists()


def test_force_overwrites_them(tmp_path: Path) -> None:
    (tmp_path / "weather.py").write_text("mine\n")
    code, out = new_agent("weather", "--dir", str(tmp_path), "--force")
    assert code == 0, out
    assert (tmp_path / "weather.py").read_text() == scaffold("weather")["weather.py"]
