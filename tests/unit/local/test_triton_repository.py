"""A copy of the model repository with extra models: renamed copies, one instance each."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Settings
from app.errors import LocalServiceError
from app.local.triton import repository_with_copies

SOURCE = Settings().triton.model_repository


def test_each_copy_is_the_original_renamed_with_one_instance(tmp_path: Path) -> None:
    repo = repository_with_copies(
        SOURCE, tmp_path / "m", {"alt": "ensemble", "alt_stream": "ensemble_stream"}
    )
    assert sorted(p.name for p in repo.iterdir()) == [
        "alt",
        "alt_stream",
        "ensemble",
        "ensemble_stream",
    ]
    for name, original in (("alt", "ensemble"), ("alt_stream", "ensemble_stream")):
        config = (repo / name / "config.pbtxt").read_text()
        source = (SOURCE / original / "config.pbtxt").read_text()
        assert f'\nname: "{name}"\n' in config
        assert "instance_group [ { count: 1 kind: KIND_CPU } ]" in config
        # Inputs, outputs, batching and parameters as the original's.
        assert (
            config.split("input [", 1)[1].split("instance_group")[0]
            == (source.split("input [", 1)[1].split("instance_group")[0])
        )
        assert (
            config.split("instance_group", 1)[1].split("\n", 1)[1]
            == (source.split("instance_group", 1)[1].split("\n", 1)[1])
        )
        assert (repo / name / "1" / "model.py").read_bytes() == (
            SOURCE / original / "1" / "model.py"
        ).read_bytes()
    assert (repo / "ensemble" / "config.pbtxt").read_text() == (
        SOURCE / "ensemble" / "config.pbtxt"
    ).read_text()


def test_copying_a_model_the_repository_lacks_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LocalServiceError, match="no model 'llama'"):
        repository_with_copies(SOURCE, tmp_path / "m", {"alt": "llama"})
