"""The scripted model's reply logic, loaded by path without Triton (it is pure)."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest

from app import constants
from app.errors import ToolCallParseError
from app.inference import templates
from app.inference.chat import ChatRequest, GenerationParams, Message, ToolCall, ToolSchema

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
    assert scripted.PROMPT_SYSTEM == constants.PROMPT_SYSTEM


def test_system_answers_with_the_system_prompt_after_the_tool_calls() -> None:
    lines = "System: be scripted\nYou remember:\n- teal\nUser: what colour? [system]\nAssistant:"
    assert reply(lines).text == "Answer: be scripted You remember: - teal"
    asked = "what colour? [tool:calculator] [system]"
    assert reply(prompt(asked)).text.startswith('{"tool"')  # the call comes first
    assert reply(prompt(asked, "42")).text == "Answer: be scripted"


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


# ---- prompts rendered with the scripted model's chat template (ChatML, Hermes tools) ----

HERMES = templates.ChatTemplate.named("hermes")
CALC_TOOL = ToolSchema("calculator", "Evaluate.", {"type": "object"})


def chatml(user: str, *results: str, history: tuple[Message, ...] = ()) -> ChatRequest:
    """A request as the agent loop builds it: one tool call and its result per result."""
    messages = [Message("system", "be scripted"), *history, Message("user", user)]
    for i, result in enumerate(results):
        call = ToolCall(f"call_{i}", "calculator", {})
        messages += [
            Message("assistant", "", tool_calls=(call,)),
            Message("tool", result, tool_call_id=call.id, name="calculator"),
        ]
    return ChatRequest(tuple(messages), GenerationParams(100), (CALC_TOOL,))


def template_reply(request: ChatRequest) -> str:
    return reply(HERMES.render(request)).text


def test_chatml_markers_match_the_chat_template() -> None:
    assert scripted.TOOL_CALL_OPEN == templates.TOOL_CALL_OPEN
    assert scripted.TOOL_CALL_CLOSE == templates.TOOL_CALL_CLOSE
    assert scripted.REPAIR_PREFIX == templates.REPAIR_PREFIX
    assert scripted.IM_START in HERMES.render(chatml("hi"))


def test_a_templated_prompt_gets_calls_in_the_templates_format_then_the_answer() -> None:
    user = 'go [tool:calculator {"expression": "2+3"}] [tool:clock]'
    assert HERMES.parse(template_reply(chatml(user))) == (
        "",
        (ToolCall("call_0", "calculator", {"expression": "2+3"}),),
    )
    assert HERMES.parse(template_reply(chatml(user, "5")))[1] == (ToolCall("call_0", "clock"),)
    assert template_reply(chatml(user, "5", '{"time": "12:00"}')) == 'Answer: {"time": "12:00"}'


def test_a_templated_prompt_answers_its_last_user_turn() -> None:
    history = (Message("user", "old [tool:calculator]"), Message("assistant", "Answer: OLD"))
    assert template_reply(chatml("new  one", history=history)) == "Answer: NEW ONE"


def test_badtool_breaks_the_call_until_a_repair_turn() -> None:
    request = chatml('[badtool:calculator {"expression": "1"}]')
    bad = template_reply(request)
    with pytest.raises(ToolCallParseError, match="not valid JSON"):
        HERMES.parse(bad)
    repaired = replace(
        request,
        messages=(*request.messages, Message("assistant", bad), templates.repair_message("x")),
    )
    assert HERMES.parse(template_reply(repaired))[1] == (
        ToolCall("call_0", "calculator", {"expression": "1"}),
    )


def test_brokentool_stays_broken_after_a_repair_turn() -> None:
    request = chatml("[brokentool:calculator]")
    bad = template_reply(request)
    repaired = replace(
        request,
        messages=(*request.messages, Message("assistant", bad), templates.repair_message("x")),
    )
    with pytest.raises(ToolCallParseError):
        HERMES.parse(template_reply(repaired))


def test_system_reads_the_system_turn_of_a_chatml_prompt() -> None:
    request = chatml("what colour? [system]")
    assert template_reply(request).startswith("Answer: be scripted")
