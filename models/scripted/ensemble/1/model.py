"""Scripted stand-in for an LLM behind the TensorRT-LLM ``ensemble`` interface (unary).

The reply is a pure function of the prompt (see ``plan_reply``), so tests and the demo can
drive an agent through tool calls, errors, delays and long streams by what they put in the
user's turn:

- ``[tool:NAME {json args}]`` (repeatable, args optional): ask for tool calls, one per step;
- ``[badtool:NAME {json args}]``: as ``tool``, but the call is first written with broken JSON,
  and written right after a repair turn (the agent's "did not parse" user turn);
- ``[brokentool:NAME]``: a call written with broken JSON every time (the run fails);
- ``[delay:MS]``: sleep MS milliseconds before replying;
- ``[error:MESSAGE]``: fail the call with MESSAGE;
- ``[words:N]``: answer ``w1 w2 ... wN`` (long streams);
- ``[pace:MS]``: when streaming, MS milliseconds between tokens (an LLM's decode step);
- ``[system]``: answer with the system prompt (after any tool calls): what an agent was told,
  its recalled memories included.

Two ways to serve (the ``scheduling`` parameter of config.pbtxt):

- ``batch`` (default): an instance takes every request queued when it is free and answers
  them together after the longest delay; later requests wait in Triton's queue (static
  batching: queue depth and admission control can be seen with two instances);
- ``inflight``: every call runs on its own clock, answered ``delay`` after it arrived
  whatever else is running, as TensorRT-LLM's in-flight batcher serves calls while the GPU
  has room: a fixed per-call latency (the inference bench).

A request its client cancelled stops where it is: no further token is sent, a batch's delay
ends once all its requests are cancelled (in-flight scheduling drops a unary reply when it is
due). Triton's /metrics counts such requests (``scripted_requests_cancelled``) and the tokens
streamed (``scripted_tokens_sent``), so tests see a cancelled call stop generating.

The prompt is read in either layout the agent sends: ChatML as the model's chat template
renders it (models/tokenizers/scripted: ``<|im_start|>user`` turns, tool results as
``<tool_response>`` blocks in a user turn; calls answered as ``<tool_call>`` blocks), or
``System:``/``User:``/``Tool:`` lines (a model with no template; calls answered as JSON).

The pure logic imports nothing from Triton, so unit tests load this file by path.
"""

from __future__ import annotations

import heapq
import itertools
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

try:  # only present inside the python backend's stub process
    import triton_python_backend_utils as pb_utils
except ImportError:  # unit tests import the pure logic below
    pb_utils = None

import numpy as np

# Prompt markers; must match app/constants.py (a unit test checks), this file runs in Triton.
PROMPT_SYSTEM = "System: "
PROMPT_USER = "User: "
PROMPT_ASSISTANT = "Assistant: "
PROMPT_TOOL = "Tool: "
# ChatML of the model's chat template; must match app/inference/templates.py (a unit test checks).
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
REPAIR_PREFIX = "Your tool call did not parse"
_RESPONSE = re.compile(r"<tool_response>\n?(.*?)\n?</tool_response>", re.DOTALL)

SYSTEM_DIRECTIVE = "[system]"
_DIRECTIVE = re.compile(r"\[(tool|badtool|brokentool|delay|error|words|pace):")
_TOOL_NAME = re.compile(r"[^\s\]{]+")
_NUMBER_END = re.compile(r"\s*(\d+)\s*\]")


class DirectiveError(ValueError):
    """Raised when a directive in the user's turn is malformed."""


@dataclass(frozen=True)
class Directives:
    """What the user's turn asks of the scripted model."""

    tools: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    delay_ms: int = 0
    error: str | None = None
    words: int | None = None
    text: str = ""  # the user text with directives removed, whitespace-normalised
    pace_ms: int = 0
    broken: dict[int, bool] = field(default_factory=dict)  # tool index -> broken every time
    system: bool = False  # answer with the system prompt


@dataclass(frozen=True)
class Reply:
    """The scripted model's answer to one prompt: text to send, or an error, after a delay."""

    text: str
    delay_ms: int = 0
    error: str | None = None
    pace_ms: int = 0  # streaming only: pause between tokens

    @property
    def pieces(self) -> list[str]:
        """Stream chunks: one per token, later ones with a leading space (they concatenate)."""
        tokens = self.text.split()
        return tokens[:1] + [" " + t for t in tokens[1:]]


def _is(line: str, marker: str) -> bool:
    # The prompt builder ends with a bare "Assistant:" line, so match the marker unpadded.
    return line.startswith(marker.rstrip())


def _content(line: str, marker: str) -> str:
    return line[len(marker.rstrip()) :].strip()


def split_turn(prompt: str) -> tuple[str, list[str]]:
    """The user's last turn and the tool results after it (no ``User:`` line: the whole prompt)."""
    lines = prompt.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(PROMPT_USER)]
    first = starts[-1] if starts else -1
    rest = lines[first + 1 :]
    user_lines = [lines[first][len(PROMPT_USER) :]] if starts else []
    for line in rest:
        if _is(line, PROMPT_ASSISTANT) or _is(line, PROMPT_TOOL):
            if starts:
                break
            continue
        user_lines.append(line)
    tools = [_content(line, PROMPT_TOOL) for line in rest if _is(line, PROMPT_TOOL)]
    return "\n".join(user_lines), tools


@dataclass(frozen=True)
class Turn:
    """What a prompt holds for the model: the user's last turn, the tool results after it, and
    whether the turn just before the reply asks to repair a tool call."""

    user: str
    results: list[str]
    repair: bool = False
    chatml: bool = False
    system: str = ""  # the system prompt


def _chatml_turns(prompt: str) -> list[tuple[str, str]]:
    turns = []
    for chunk in prompt.split(IM_START)[1:]:
        role, _, content = chunk.partition("\n")
        turns.append((role.strip(), content.split(IM_END)[0]))
    return turns


def read_chatml(prompt: str) -> Turn:
    """The user's last turn (not a tool-result or repair turn), the results after it."""
    turns = _chatml_turns(prompt)
    users = [
        i
        for i, (role, content) in enumerate(turns)
        if role == "user" and not content.startswith(("<tool_response>", REPAIR_PREFIX))
    ]
    first = users[-1] if users else -1
    results = [
        m.group(1)
        for role, content in turns[first + 1 :]
        if role == "user"
        for m in _RESPONSE.finditer(content)
    ]
    asked = [t for t in turns if t != ("assistant", "")]  # not the opened reply turn
    repair = bool(asked) and asked[-1][0] == "user" and asked[-1][1].startswith(REPAIR_PREFIX)
    user = turns[first][1] if users else ""
    system = "\n".join(content for role, content in turns if role == "system")
    return Turn(user, results, repair, chatml=True, system=system)


def read_prompt(prompt: str) -> Turn:
    """The prompt in either layout (see the module docstring)."""
    if IM_START in prompt:
        return read_chatml(prompt)
    return Turn(*split_turn(prompt), system=system_of(prompt))


def system_of(prompt: str) -> str:
    """The system prompt of a prompt in lines: from ``System:`` up to the first other turn."""
    lines = prompt.splitlines()
    if not lines or not lines[0].startswith(PROMPT_SYSTEM):
        return ""
    kept = [lines[0][len(PROMPT_SYSTEM) :]]
    for line in lines[1:]:
        if line.startswith((PROMPT_USER, PROMPT_ASSISTANT, PROMPT_TOOL)):
            break
        kept.append(line)
    return "\n".join(kept)


def _number(text: str, pos: int, kind: str) -> tuple[int, int]:
    match = _NUMBER_END.match(text, pos)
    if not match:
        raise DirectiveError(f"[{kind}:N] needs a whole number")
    return int(match.group(1)), match.end()


def _tool(text: str, pos: int) -> tuple[tuple[str, dict[str, Any]], int]:
    name = _TOOL_NAME.match(text, pos)
    if not name:
        raise DirectiveError("[tool:NAME {args}] needs a tool name")
    pos = name.end()
    while pos < len(text) and text[pos].isspace():
        pos += 1
    args: Any = {}
    if pos < len(text) and text[pos] == "{":
        try:
            args, pos = json.JSONDecoder().raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DirectiveError(f"[tool:{name.group()}] has invalid JSON args: {exc}") from exc
    while pos < len(text) and text[pos].isspace():
        pos += 1
    if pos >= len(text) or text[pos] != "]":
        raise DirectiveError(f"[tool:{name.group()}] is not closed by ']'")
    return (name.group(), args), pos + 1


def parse_directives(user_text: str) -> Directives:
    """Read the directives out of the user's text (see the module docstring)."""
    system = SYSTEM_DIRECTIVE in user_text
    user_text = user_text.replace(SYSTEM_DIRECTIVE, " ")
    tools: list[tuple[str, dict[str, Any]]] = []
    broken: dict[int, bool] = {}
    delay_ms, error, words, pace_ms = 0, None, None, 0
    kept: list[str] = []
    pos = 0
    while (match := _DIRECTIVE.search(user_text, pos)) is not None:
        kept.append(user_text[pos : match.start()])
        kind, pos = match.group(1), match.end()
        if kind in ("tool", "badtool", "brokentool"):
            call, pos = _tool(user_text, pos)
            if kind != "tool":
                broken[len(tools)] = kind == "brokentool"
            tools.append(call)
        elif kind == "delay":
            ms, pos = _number(user_text, pos, kind)
            delay_ms += ms
        elif kind == "words":
            words, pos = _number(user_text, pos, kind)
        elif kind == "pace":
            pace_ms, pos = _number(user_text, pos, kind)
        else:
            end = user_text.find("]", pos)
            if end < 0:
                raise DirectiveError("[error:MESSAGE] is not closed by ']'")
            error, pos = user_text[pos:end].strip(), end + 1
    kept.append(user_text[pos:])
    text = " ".join("".join(kept).split())
    return Directives(tools, delay_ms, error, words, text, pace_ms, broken, system)


def call_text(name: str, args: dict[str, Any], chatml: bool, broken: bool = False) -> str:
    """A tool call as the model writes it: a ``<tool_call>`` block (ChatML prompts) or a JSON
    object (line prompts); ``broken``: with JSON that does not parse."""
    if not chatml:
        return json.dumps({"tool": name, "args": args}, separators=(",", ":"))
    body = json.dumps({"name": name, "arguments": args})
    if broken:
        body = body[:-1] + ",}"  # a trailing comma: not JSON
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def plan_reply(prompt: str, max_tokens: int, default_delay_ms: int = 0) -> Reply:
    """The scripted reply to ``prompt``, cut to ``max_tokens`` whitespace-separated tokens."""
    turn = read_prompt(prompt)
    tool_results = turn.results
    try:
        d = parse_directives(turn.user)
    except DirectiveError as exc:
        return Reply("", default_delay_ms, f"scripted model: {exc}")
    delay = default_delay_ms + d.delay_ms
    if d.error is not None:
        return Reply("", delay, d.error)
    k = len(tool_results)
    if k < len(d.tools):
        name, args = d.tools[k]
        always = d.broken.get(k)
        broken = always is not None and (always or not turn.repair)
        text = call_text(name, args, turn.chatml, broken)
    elif d.words is not None:
        text = " ".join(f"w{i}" for i in range(1, d.words + 1))
    elif d.system:
        text = "Answer: " + " ".join(turn.system.split())
    elif k > 0:
        text = "Answer: " + tool_results[-1]
    else:
        text = "Answer: " + d.text.upper()
    return Reply(" ".join(text.split()[: max(max_tokens, 0)]), delay, pace_ms=d.pace_ms)


# ---- Triton glue (runs only inside the python backend) ----


def input_rows(request: Any, name: str) -> np.ndarray | None:
    """Input ``name`` of a request as a [B] array (inputs arrive [B, 1]); None if not sent."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)


def replies_for(request: Any, default_delay_ms: int) -> list[Reply]:
    """One planned reply per batch row of ``request``."""
    prompts = input_rows(request, "text_input")
    limits = input_rows(request, "max_tokens")
    out = []
    for i, raw in enumerate(prompts if prompts is not None else []):
        prompt = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        limit = int(limits[i]) if limits is not None else 0
        out.append(plan_reply(prompt, limit, default_delay_ms))
    return out


def text_tensor(texts: list[str]) -> Any:
    """``text_output`` as [B, 1] BYTES."""
    rows = np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_).reshape(-1, 1)
    return pb_utils.Tensor("text_output", rows)


def _parameter(args: dict[str, Any], name: str) -> str:
    """A ``parameters`` entry of the model's config.pbtxt ("" when absent)."""
    params = json.loads(args["model_config"]).get("parameters", {})
    return str(params.get(name, {}).get("string_value", ""))


def default_delay(args: dict[str, Any]) -> int:
    """The ``delay_ms`` parameter of the model's config.pbtxt (0 when absent)."""
    return int(_parameter(args, "delay_ms") or 0)


BATCH, INFLIGHT = "batch", "inflight"


def scheduling(args: dict[str, Any]) -> str:
    """The ``scheduling`` parameter: ``batch`` (default) or ``inflight``."""
    mode = _parameter(args, "scheduling") or BATCH
    if mode not in (BATCH, INFLIGHT):
        raise ValueError(f"scheduling must be {BATCH!r} or {INFLIGHT!r}, got {mode!r}")
    return mode


class Timeline:
    """Runs each action at its own time from one thread (in-flight scheduling).

    ``close`` runs what is left at once, so no request is left without its responses.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="scripted-timeline", daemon=True)
        self._thread.start()

    def at(self, when: float, action: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._order), action))
            self._cond.notify()

    def after(self, delay_s: float, action: Callable[[], None]) -> None:
        self.at(self._clock() + delay_s, action)

    def _next(self) -> Callable[[], None] | None:
        with self._cond:
            while True:
                if self._heap and (self._closed or self._heap[0][0] <= self._clock()):
                    return heapq.heappop(self._heap)[2]
                if self._closed:
                    return None
                timeout = self._heap[0][0] - self._clock() if self._heap else None
                self._cond.wait(timeout)

    def _run(self) -> None:
        while (action := self._next()) is not None:
            try:
                action()
            except Exception as exc:  # a failed send must not stop the other calls' clocks
                print(f"scripted model: a scheduled response failed: {exc!r}", flush=True)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)


# Counters on Triton's /metrics (the python backend's custom metrics), labelled by model.
CANCELLED_METRIC = "scripted_requests_cancelled"
TOKENS_METRIC = "scripted_tokens_sent"
# How often a delay looks for cancelled requests (a client's cancellation ends it this soon).
CANCEL_CHECK_S = 0.05


class Observed:
    """What the model did, on Triton's /metrics: requests it stopped because their client
    cancelled them, and tokens it streamed (tests see a cancelled call stop generating)."""

    def __init__(self, args: dict[str, Any]) -> None:
        labels = {"model": args["model_name"]}
        counter = pb_utils.MetricFamily.COUNTER
        # The families must stay referenced: the backend drops a metric whose family is gone.
        self._families = (
            pb_utils.MetricFamily(CANCELLED_METRIC, "Requests stopped as cancelled", counter),
            pb_utils.MetricFamily(TOKENS_METRIC, "Tokens streamed", counter),
        )
        self._cancelled = self._families[0].Metric(labels=labels)
        self._tokens = self._families[1].Metric(labels=labels)

    def cancelled(self) -> None:
        self._cancelled.increment(1)

    def tokens(self, n: int) -> None:
        self._tokens.increment(n)


def cancelled_response() -> Any:
    """The answer to a request its client cancelled (nobody reads it; Triton counts it)."""
    error = pb_utils.TritonError("request cancelled by its client", pb_utils.TritonError.CANCELLED)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def wait_unless_cancelled(requests: list[Any], delay_s: float) -> list[bool]:
    """Wait ``delay_s`` (a batch's delay), ending early once every request in it is cancelled;
    which of ``requests`` were cancelled meanwhile."""
    cancelled = [False] * len(requests)
    end = time.monotonic() + delay_s
    while (left := end - time.monotonic()) > 0 and not all(cancelled):
        time.sleep(min(CANCEL_CHECK_S, left))
        cancelled = [c or bool(r.is_cancelled()) for c, r in zip(cancelled, requests, strict=True)]
    return cancelled


def longest_delay_s(replies: list[Reply]) -> float:
    """The longest delay of ``replies`` (the rows of a request, or a whole batch), in s."""
    return max((r.delay_ms for r in replies), default=0) / 1000


def response_for(replies: list[Reply]) -> Any:
    """The one response of a unary request: its rows' texts, or the first row's error."""
    errors = [r.error for r in replies if r.error is not None]
    if errors:
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(errors[0]))
    return pb_utils.InferenceResponse(output_tensors=[text_tensor([r.text for r in replies])])


class TritonPythonModel:
    """Unary scripted model: one response per request."""

    def initialize(self, args: dict[str, Any]) -> None:
        self.delay_ms = default_delay(args)
        self.timeline = Timeline() if scheduling(args) == INFLIGHT else None
        self.observed = Observed(args)

    def execute(self, requests: list[Any]) -> list[Any] | None:
        batch = [replies_for(request, self.delay_ms) for request in requests]
        if self.timeline is None:
            # Dynamic batching hands over every request that queued meanwhile; they finish
            # together, or earlier when every one of them was cancelled.
            delay_s = longest_delay_s([reply for replies in batch for reply in replies])
            cancelled = wait_unless_cancelled(requests, delay_s)
            return [self._answer(r, gone) for r, gone in zip(batch, cancelled, strict=True)]
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        for request, replies in zip(requests, batch, strict=True):
            sender = request.get_response_sender()
            self.timeline.after(
                longest_delay_s(replies),
                lambda q=request, s=sender, r=replies: s.send(
                    self._answer(r, bool(q.is_cancelled())), flags=final
                ),
            )
        return None  # each request is answered through its sender when its time comes

    def _answer(self, replies: list[Reply], cancelled: bool) -> Any:
        if cancelled:
            self.observed.cancelled()
            return cancelled_response()
        return response_for(replies)

    def finalize(self) -> None:
        if self.timeline is not None:
            self.timeline.close()
