"""The local model's request logic (models/llm), loaded by path without Triton: what each
row asks for, how it samples, and which guides it refuses."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

MODEL = Path(__file__).resolve().parents[3] / "models" / "llm" / "ensemble" / "1" / "model.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("llm_model_under_test", MODEL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


llm = _load()


def rows(**inputs: object) -> dict[str, np.ndarray | None]:
    """A request's inputs as Triton hands them over: [B, 1] arrays, stop_words [B, n]."""
    out: dict[str, np.ndarray | None] = dict.fromkeys(llm.INPUTS)
    for name, value in inputs.items():
        out[name] = np.array(value, dtype=np.object_ if name in _BYTES else None)
    return out


_BYTES = {"text_input", "stop_words", "guided_decoding_guide_type", "guided_decoding_guide"}


def test_each_row_is_read_with_its_own_settings_and_greedy_by_default() -> None:
    got = llm.generations(
        rows(
            text_input=[[b"first"], [b"second"]],
            max_tokens=[[8], [2]],
            stop_words=[[b"\n", b""], [b"x", b"y"]],
        )
    )
    assert got == [
        llm.Generation("first", 8, 0.0, 1.0, 0, None, ["\n"], None),
        llm.Generation("second", 2, 0.0, 1.0, 0, None, ["x", "y"], None),
    ]
    with pytest.raises(llm.RequestError, match="max_tokens must be at least 1"):
        llm.generations(rows(text_input=[[b"a"], [b"b"]], max_tokens=[[8], [0]]))


def test_sampling_inputs_and_guides_reach_the_generation() -> None:
    (got,) = llm.generations(
        rows(
            text_input=[[b"p"]],
            max_tokens=[[4]],
            temperature=[[0.7]],
            top_p=[[0.9]],
            top_k=[[20]],
            seed=[[2**40 + 3]],
            guided_decoding_guide_type=[[b"json_schema"]],
            guided_decoding_guide=[[b'{"type": "object"}']],
        )
    )
    assert (got.temperature, got.top_k, got.guide) == (
        pytest.approx(0.7),
        20,
        ("json_schema", '{"type": "object"}'),
    )
    # llama.cpp seeds are 32-bit.
    assert got.completion_args()["seed"] == 3


@pytest.mark.parametrize(
    ("temperature", "top_p", "top_k", "greedy"),
    [
        (None, None, None, True),
        (0.0, 0.9, 50, True),
        (1.0, None, 1, True),
        (0.5, None, None, False),
    ],
)
def test_greedy_when_asked_or_when_nothing_asks_for_sampling(
    temperature: float | None, top_p: float | None, top_k: int | None, greedy: bool
) -> None:
    assert (llm.sampling(temperature, top_p, top_k)["temperature"] == 0.0) is greedy


@pytest.mark.parametrize(
    ("kind", "guide", "message"),
    [
        ("regex", "a+", "'regex' is not supported by the local model"),
        ("xml", "", "unknown guided_decoding_guide_type 'xml'"),
        ("ebnf_grammar", " ", "guided_decoding_guide is empty"),
    ],
)
def test_guides_the_model_cannot_follow_are_refused_with_the_reason(
    kind: str, guide: str, message: str
) -> None:
    with pytest.raises(llm.RequestError, match=message):
        llm.grammar_text(kind, guide)


def test_a_json_schema_guide_becomes_a_grammar_and_a_bad_one_is_named() -> None:
    pytest.importorskip("llama_cpp")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    assert "root ::=" in llm.grammar_text("json_schema", json.dumps(schema))
    assert "root" in llm.grammar_text("json", "")
    with pytest.raises(llm.RequestError, match="not JSON"):
        llm.grammar_text("json_schema", "{bad")
    with pytest.raises(llm.RequestError, match="Unrecognized schema"):
        llm.grammar_text("json_schema", '{"type": "foo"}')
