"""docs/configuration.md is the reference generated from the settings' field descriptions."""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import BaseModel

from app.config import ReplicaSettings, Settings
from app.config.reference import markdown

DOC = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


def _leaf_fields(model: type[BaseModel], prefix: str) -> list[tuple[str, str | None]]:
    fields = []
    for name, field in model.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            fields += _leaf_fields(section, f"{prefix}{name.upper()}__")
        else:
            alias = field.validation_alias
            var = alias if isinstance(alias, str) else f"{prefix}{name.upper()}"
            fields.append((var, field.description))
    return fields


def test_docs_configuration_md_matches_the_settings():
    assert DOC.read_text(encoding="utf-8") == markdown(), (
        "docs/configuration.md differs from the settings' field descriptions; regenerate it: "
        ".venv/bin/python -m app.config.reference > docs/configuration.md"
    )


def test_every_setting_is_described_and_listed():
    text = markdown()
    fields = _leaf_fields(Settings, "AGENTQ_") + _leaf_fields(ReplicaSettings, "")
    undescribed = [name for name, description in fields if not description]
    assert undescribed == [], f"settings without a description: {undescribed}"
    missing = [name for name, _ in _leaf_fields(Settings, "AGENTQ_") if f"| `{name}` |" not in text]
    assert missing == [], f"settings missing from the reference: {missing}"


def test_the_reference_does_not_depend_on_this_machine(monkeypatch, tmp_path):
    # The file is compared on every clone: environment and checkout paths must not leak in.
    monkeypatch.setenv("AGENTQ_WORKER__CONCURRENCY", "3")
    monkeypatch.chdir(tmp_path)
    text = markdown()
    assert "| `AGENTQ_WORKER__CONCURRENCY` | int, > 0 | `64` |" in text
    assert str(Path(__file__).resolve().parents[3]) not in text
    assert sys.prefix not in text
