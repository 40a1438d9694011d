from app.agents.prompts import FinalAnswer, ToolCall, Turn, build_prompt, parse_reply


def test_prompt_lays_out_system_history_input_and_turns():
    prompt = build_prompt(
        "Be brief.\nVery brief.",
        "What is 2+3?",
        [Turn('{"tool":"calculator","args":{"expression":"2+3"}}', 5)],
        history=[("hi", "hello")],
    )
    assert prompt.splitlines() == [
        "System: Be brief. Very brief.",
        "User: hi",
        "Assistant: hello",
        "User: What is 2+3?",
        'Assistant: {"tool":"calculator","args":{"expression":"2+3"}}',
        "Tool: 5",
        "Assistant:",
    ]


def test_json_input_and_results_are_encoded_compactly():
    prompt = build_prompt("s", {"q": "x"}, [Turn("t", {"error": "bad"})])
    assert 'User: {"q":"x"}' in prompt
    assert 'Tool: {"error":"bad"}' in prompt


def test_tool_call_reply():
    assert parse_reply(' {"tool": "kv_get", "args": {"key": "k"}} ') == ToolCall(
        "kv_get", {"key": "k"}
    )


def test_final_reply_forms():
    assert parse_reply('{"final": {"n": 1}}') == FinalAnswer({"n": 1})
    assert parse_reply("Answer: 42") == FinalAnswer("Answer: 42")
    assert parse_reply("{not json") == FinalAnswer("{not json")
    assert parse_reply('{"other": 1}') == FinalAnswer('{"other": 1}')
