"""The local model's repository, worker settings and missing-extra message (no llama.cpp
needed: a stand-in file takes the GGUF's place)."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

from app.config import Settings
from app.errors import ConfigurationError
from app.local import llm
from app.local.gguf import read_metadata

SCRIPTED = Path(__file__).resolve().parents[3] / "models" / "scripted"


def _interface(config: str) -> str:
    return config.split("input [", 1)[1].split("instance_group")[0]


def test_the_repository_serves_both_models_with_the_scripted_interface(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    repo = llm.llm_repository(tmp_path / "models", instances=2, n_ctx=4096, threads=3, gguf=gguf)
    assert sorted(p.name for p in repo.iterdir()) == ["ensemble", "ensemble_stream"]
    for model in ("ensemble", "ensemble_stream"):
        config = (repo / model / "config.pbtxt").read_text()
        assert _interface(config) == _interface((SCRIPTED / model / "config.pbtxt").read_text())
        assert "instance_group [ { count: 2 kind: KIND_CPU } ]" in config
        for key, value in (("gguf", str(gguf.resolve())), ("n_ctx", "4096"), ("threads", "3")):
            assert f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}' in config
        assert ("decoupled: true" in config) is (model == "ensemble_stream")


def test_worker_env_gives_both_models_the_folder_as_template_and_tokenizer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in llm.worker_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    triton = Settings(_env_file=None).triton
    expected = dict.fromkeys(("ensemble", "ensemble_stream"), str(tmp_path.resolve()))
    assert triton.chat_templates == expected and triton.tokenizers == expected


def test_without_the_llm_extra_the_message_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ConfigurationError, match=r"setup\.sh --llm.*agentq\[llm\]"):
        llm.gguf_path()


def test_a_file_that_is_not_gguf_is_named(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    path.write_text(json.dumps({"not": "gguf"}))
    with pytest.raises(ConfigurationError, match="not a GGUF file"):
        read_metadata(path)
