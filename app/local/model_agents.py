"""Agents a small local model succeeds with (``agentq demo --model local``).

SmolLM2-135M, the model the ``llm`` extra ships, chooses among several tools poorly and
copies long expressions badly, so these agents are specialists shaped for it:

- one tool each, whose arguments are easy to read off a question (two numbers and an
  operation rather than an expression to reproduce; the text to count);
- ``tool_choice=("required", "none")``: the first reply must be a call, which the server's
  guided decoding keeps valid against the tool's JSON Schema (an ``enum`` for the operation),
  and the second must answer;
- temperature 0 and a short reply budget.

Routing a question to the right specialist is the caller's choice here (an orchestrator's in
a larger system). A bigger model (a 1-8B instruct model on TensorRT-LLM or vLLM) takes one
agent with many tools and ``tool_choice="auto"``: it chooses the tool, calls several in a row
and decides when to answer; the agents, tools and worker stay the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field

from app.agents.registry import Agent
from app.agents.tools import ToolContext, tool


@tool("arithmetic", deterministic=True)
def arithmetic(
    ctx: ToolContext,
    a: float,
    op: Literal["+", "-", "*", "/"],
    b: float,
) -> float | int:
    """Apply one arithmetic operation to two numbers: a op b.

    Args:
        a: The first number.
        op: The operation: + (plus), - (minus), * (times), / (divided by).
        b: The second number.
    """
    if op == "/" and b == 0:
        raise ValueError("division by zero")
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else 0.0}[op]
    return int(value) if float(value).is_integer() else round(value, 6)


@tool("count_words", deterministic=True)
def count_words(ctx: ToolContext, text: Annotated[str, Field(max_length=160)]) -> int:
    """Count the whitespace-separated words of a text.

    Args:
        text: The text to count, copied from the question.
    """
    # The length bound is the model's as much as the tool's: guided decoding closes the
    # string by 160 characters, where a small model copying a sentence may run on until its
    # reply budget cuts the call off.
    return len(text.split())


MATH = Agent(
    "math",
    system_prompt="You answer arithmetic questions. Use the tool, then state the result.",
    tools=[arithmetic],
    tool_choice=("required", "none"),
    temperature=0.0,
    max_tokens=48,
    max_steps=3,
)
WORDS = Agent(
    "words",
    system_prompt="You count the words of texts. Use the tool, then state the count.",
    tools=[count_words],
    tool_choice=("required", "none"),
    temperature=0.0,
    max_tokens=96,
    max_steps=3,
)


@dataclass(frozen=True)
class Question:
    """A demo input and the tool result a correct call gives."""

    agent: str
    text: str
    expected: float | int


QUESTIONS = (
    Question("math", "What is 17 * 23?", 391),
    Question("math", "What is 6 times 7?", 42),
    Question("math", "What is 250 plus 175?", 425),
    Question("math", "What is 1000 minus 1?", 999),
    Question("words", "How many words are in the sentence 'agents run on celery workers'?", 5),
    Question("words", "Count the words: the quick brown fox jumps over the lazy dog", 9),
)
"""What ``agentq demo --model local`` asks, with the tool result of a correct call."""
