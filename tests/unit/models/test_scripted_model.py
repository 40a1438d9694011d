"""The scripted model's reply logic, loaded by path without Triton (it is pure)."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest

from app import constants

MODEL = Path(__file__).resolve().parents[3] / "models" / "scripted" / "ensemble" / "1" / "model.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scripted_model_under_test", MODEL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


scripted = _load()


def prompt(user: str, *tool_results: str, history: tuple[str, ...] = ()) -> str:
    lines = ["System: be scripted", *history, f"User: {user}"]
    for result in tool_results:
        lines += ["Assistant: {}", f"Tool: {result}"]
    return "\n".join([*lines, "Assistant:"])


def reply(text: str, max_tokens: int = 100, delay: int = 0):
    return scripted.plan_reply(text, max_tokens, delay)


def test_markers_match_the_prompt_builder() -> None:
    assert scripted.PROMPT_USER == constants.PROMPT_USER
    assert scripted.PROMPT_ASSISTANT == constants.PROMPT_ASSISTANT
    assert scripted.PROMPT_TOOL == constants.PROMPT_TOOL


def test_plain_input_is_answered_upper_cased_and_normalised() -> None:
    assert reply(prompt("hello   world ")).text == "Answer: HELLO WORLD"
    assert reply("hello world").text == "Answer: HELLO WORLD"  # no markers at all


def test_only_the_last_user_turn_counts() -> None:
    history = ("User: old question [tool:search]", "Assistant: old answer")
    assert reply(prompt("new one", history=history)).text == "Answer: NEW ONE"


def test_tool_directives_are_asked_in_order_then_last_result_answers() -> None:
    user = 'go [tool:calculator {"expression": "2+3"}] [tool:search {"q": "a]b {c}"}] [tool:clock]'
    first = json.loads(reply(prompt(user)).text)
    assert first == {"tool": "calculator", "args": {"expression": "2+3"}}
    second = json.loads(reply(prompt(user, "5")).text)
    assert second == {"tool": "search", "args": {"q": "a]b {c}"}}
    assert json.loads(reply(prompt(user, "5", "found")).text) == {"tool": "clock", "args": {}}
    assert reply(prompt(user, "5", "found", "12:00")).text == "Answer: 12:00"


def test_tool_call_reply_is_compact_json() -> None:
    text = reply(prompt('[tool:calculator {"expression": "2+3"}]')).text
    assert text == '{"tool":"calculator","args":{"expression":"2+3"}}'


def test_words_directive_gives_a_long_answer() -> None:
    assert reply(prompt("[words:4]")).text == "w1 w2 w3 w4"
    assert reply(prompt("[tool:x] [words:2]", "done")).text == "w1 w2"


def test_error_and_delay_directives() -> None:
    failed = reply(prompt("please [error:model exploded] [delay:30]"), delay=5)
    assert failed.error == "model exploded"
    assert failed.delay_ms == 35
    ok = reply(prompt("slow [delay:10] [delay:20]"))
    assert (ok.text, ok.delay_ms, ok.error) == ("Answer: SLOW", 30, None)


def test_malformed_directive_is_an_error_not_a_crash() -> None:
    assert "invalid JSON" in reply(prompt("[tool:calc {oops}]")).error
    assert reply(prompt("[delay:soon]")).error is not None


@pytest.mark.parametrize(("limit", "expected"), [(2, "w1 w2"), (0, ""), (-1, "")])
def test_reply_is_cut_to_max_tokens(limit: int, expected: str) -> None:
    assert reply(prompt("[words:10]"), max_tokens=limit).text == expected


def test_stream_pieces_concatenate_to_the_reply() -> None:
    planned = reply(prompt("one two  three"))
    assert planned.pieces == ["Answer:", " ONE", " TWO", " THREE"]
    assert "".join(planned.pieces) == planned.text


def test_pace_directive_sets_the_pause_between_streamed_tokens() -> None:
    assert reply(prompt("[words:3] [pace:25]")).pace_ms == 25
    assert reply(prompt("[words:3]")).pace_ms == 0
    assert reply(prompt("[words:3] [pace:25]")).text == "w1 w2 w3"


def _args(**params: str) -> dict[str, str]:
    config = {"parameters": {k: {"string_value": v} for k, v in params.items()}}
    return {"model_config": json.dumps(config)}


def test_scheduling_defaults_to_batch_and_refuses_unknown_modes() -> None:
    assert scripted.scheduling(_args()) == scripted.BATCH
    assert scripted.scheduling(_args(scheduling="")) == scripted.BATCH
    assert scripted.scheduling(_args(scheduling="inflight")) == scripted.INFLIGHT
    with pytest.raises(ValueError, match="continuous"):
        scripted.scheduling(_args(scheduling="continuous"))


def test_timeline_runs_each_action_at_its_time_in_time_order() -> None:
    done: list[str] = []
    finished = threading.Event()
    timeline = scripted.Timeline()
    try:
        timeline.after(0.15, lambda: (done.append("late"), finished.set()))
        timeline.after(0.05, lambda: done.append("early"))
        timeline.after(0.0, lambda: done.append("now"))
        assert finished.wait(10)
    finally:
        timeline.close()
    assert done == ["now", "early", "late"]


def test_a_failing_action_does_not_stop_the_others(capsys) -> None:
    done = threading.Event()
    timeline = scripted.Timeline()
    try:
        timeline.after(0.0, lambda: 1 / 0)
        timeline.after(0.01, done.set)
        assert done.wait(10)
    finally:
        timeline.close()
    assert "ZeroDivisionError" in capsys.readouterr().out


def test_close_runs_what_is_left_at_once() -> None:
    done: list[int] = []
    timeline = scripted.Timeline()
    timeline.after(3600, lambda: done.append(1))
    timeline.after(7200, lambda: done.append(2))
    timeline.close()  # a model unloaded with calls in flight still answers them
    assert done == [1, 2]
