"""The local model on a real Triton, called as the worker calls the ensemble (its inputs from
app.inference.triton.build_inputs, prompts rendered with the model's own chat template):
greedy replies without the prompt, streamed the same, stop words, JSON Schema guides, and
guides it cannot follow refused while it keeps serving."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from app.inference.chat import ChatRequest, GenerationParams, Message
from app.inference.templates import ChatTemplate
from app.inference.triton import build_inputs
from app.local.triton import TritonServer

pytest.importorskip("llama_cpp")

GREEDY = GenerationParams(max_tokens=48, temperature=0.0, random_seed=7)
CALCULATOR_ARGS = {
    "type": "object",
    "properties": {"expression": {"type": "string"}},
    "required": ["expression"],
}
# The shape of a schema-constrained tool call: one alternative per tool.
TOOL_CALL = {
    "anyOf": [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": arguments},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for name, arguments in (
            ("calculator", CALCULATOR_ARGS),
            ("search", {"type": "object", "properties": {"query": {"type": "string"}}}),
        )
    ]
}
SCHEMAS = [
    (
        "Give the name and age of a person.",
        {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
            "additionalProperties": False,
        },
    ),
    ("List three numbers.", {"type": "array", "items": {"type": "integer"}, "maxItems": 3}),
    (
        "Pick a colour.",
        {
            "type": "object",
            "properties": {"colour": {"enum": ["red", "green", "blue"]}},
            "required": ["colour"],
        },
    ),
    ("What is 20+22? Use the calculator.", TOOL_CALL),
]


@pytest.fixture(scope="module")
def client(llm_triton: TritonServer) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(llm_triton.grpc_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def template(llm_model_dir: Path) -> ChatTemplate:
    return ChatTemplate.from_config(llm_model_dir)


def prompt(template: ChatTemplate, user: str) -> str:
    return template.render(ChatRequest((Message("user", user),), GREEDY))


def unary(
    client: grpcclient.InferenceServerClient,
    text: str,
    params: GenerationParams = GREEDY,
    guide: tuple[str, str] | None = None,
) -> str:
    result = client.infer("ensemble", build_inputs(text, params, guide=guide))
    return str(result.as_numpy("text_output")[0][0].decode())


def streamed(
    client: grpcclient.InferenceServerClient, text: str, guide: tuple[str, str] | None = None
) -> list[str]:
    replies: queue.Queue[tuple[grpcclient.InferResult | None, Exception | None]] = queue.Queue()
    client.start_stream(callback=lambda result, error: replies.put((result, error)))
    pieces = []
    try:
        client.async_stream_infer(
            "ensemble_stream", build_inputs(text, GREEDY, stream=True, guide=guide),
            enable_empty_final_response=True,
        )  # fmt: skip
        while True:
            result, error = replies.get(timeout=60)
            if error is not None:
                raise error
            assert result is not None
            chunk = result.as_numpy("text_output")
            if chunk is not None:
                pieces.append(chunk[0][0].decode())
            if result.get_response().parameters["triton_final_response"].bool_param:
                return pieces
    finally:
        client.stop_stream()


def test_a_greedy_reply_is_text_without_the_prompt_and_streams_the_same(
    client: grpcclient.InferenceServerClient, template: ChatTemplate
) -> None:
    text = prompt(template, "Name a fruit.")
    reply = unary(client, text)
    assert reply.strip() and "<|im_start|>" not in reply and "Name a fruit." not in reply
    pieces = streamed(client, text)
    assert len(pieces) > 1 and "".join(pieces) == reply


def test_the_reply_stops_before_a_stop_word(
    client: grpcclient.InferenceServerClient, template: ChatTemplate
) -> None:
    text = prompt(template, "Tell me about the sea.")
    reply = unary(client, text)
    words = reply.split()
    assert len(words) > 3, reply
    stop = words[len(words) // 2]
    params = replace(GREEDY, stop_words=[stop])
    assert unary(client, text, params) == reply[: reply.index(stop)]


@pytest.mark.parametrize(("user", "schema"), SCHEMAS, ids=["object", "array", "enum", "tool"])
def test_a_json_schema_guide_gives_json_that_fits_it(
    client: grpcclient.InferenceServerClient, template: ChatTemplate, user: str, schema: dict
) -> None:
    guide = ("json_schema", json.dumps(schema))
    reply = unary(client, prompt(template, user), guide=guide)
    jsonschema.validate(json.loads(reply), schema)


@pytest.mark.parametrize(
    ("guide", "reason"),
    [
        (("ebnf_grammar", "root ::= undefined-rule"), "Undefined rule identifier 'undefined-rule'"),
        (("json_schema", '{"type": "nonsense"}'), "Unrecognized schema"),
        (("regex", "[a-z]+"), "'regex' is not supported by the local model"),
    ],
    ids=["grammar", "schema", "regex"],
)
def test_a_guide_it_cannot_follow_is_refused_and_it_keeps_serving(
    client: grpcclient.InferenceServerClient,
    template: ChatTemplate,
    guide: tuple[str, str],
    reason: str,
) -> None:
    text = prompt(template, "Answer yes or no.")
    with pytest.raises(InferenceServerException, match=reason) as refused:
        unary(client, text, guide=guide)
    assert "INVALID_ARGUMENT" in str(refused.value.status())
    with pytest.raises(InferenceServerException, match=reason):
        streamed(client, text, guide)
    yes_no = ("ebnf_grammar", 'root ::= "yes" | "no"')
    assert unary(client, text, guide=yes_no) in ("yes", "no")
