"""The conversation a step sends: system, the session's earlier runs, the input, each step's
calls and results as turns; and the answer read from a final reply."""

from app.agents.prompts import MEMORY_HEADER, Turn, answer_of, conversation, memory_section
from app.inference.chat import Message, ToolCall

ADD = ToolCall("c1", "calculator", {"expression": "2+3"})
NOW = ToolCall("c2", "clock", {})


def test_the_conversation_lays_out_system_history_input_and_turns():
    messages = conversation(
        "Be brief.\nVery brief.",
        "What is 2+3?",
        [Turn("", ((ADD, 5), (NOW, "noon")))],
        history=[("hi", "hello")],
    )
    assert messages == (
        Message("system", "Be brief.\nVery brief."),  # as written: each backend lays it out
        Message("user", "hi"),
        Message("assistant", "hello"),
        Message("user", "What is 2+3?"),
        Message("assistant", "", tool_calls=(ADD, NOW)),
        Message("tool", "5", tool_call_id="c1", name="calculator"),
        Message("tool", "noon", tool_call_id="c2", name="clock"),
    )


def test_json_input_and_results_are_encoded_compactly():
    messages = conversation("s", {"q": "x"}, [Turn("t", ((ADD, {"error": "bad"}),))])
    assert messages[1] == Message("user", '{"q":"x"}')
    assert messages[-1].content == '{"error":"bad"}'


def test_final_reply_forms():
    assert answer_of('{"final": {"n": 1}}') == {"n": 1}
    assert answer_of(' {"final": null} ') is None
    assert answer_of("Answer: 42") == "Answer: 42"
    assert answer_of("{not json") == "{not json"
    assert answer_of('{"other": 1}') == '{"other": 1}'


def test_the_memory_section_keeps_the_best_memories_that_fit_its_budget() -> None:
    def words(text: str) -> int:
        return len(text.split())

    header = words(MEMORY_HEADER)
    texts = ["teal is the favourite colour", "a very long memory " * 10, "likes   cats"]
    section, shown = memory_section(texts, header + 10, words)
    assert shown == 2  # the long one does not fit; the one after it does
    assert section.splitlines() == [MEMORY_HEADER, "- teal is the favourite colour", "- likes cats"]
    assert memory_section(texts, header, words) == ("", 0)
    assert memory_section([], 100, words) == ("", 0)
