"""Paths of files shipped with agentq: in a checkout, or in the installed package."""

from __future__ import annotations

from app.config.paths import APP_DIR, REPO_ROOT, shipped_path


def test_a_relative_path_is_found_in_the_checkout_else_in_the_installed_package():
    assert shipped_path("models/tokenizers/scripted") == REPO_ROOT / "models/tokenizers/scripted"
    # Not in this checkout: where the wheel puts models/ (app/_models), as in the worker image.
    assert shipped_path("models/elsewhere/tok") == APP_DIR / "_models" / "elsewhere" / "tok"
    assert shipped_path("/abs/tokenizer_config.json").is_absolute()
