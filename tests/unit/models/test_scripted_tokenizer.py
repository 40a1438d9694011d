"""The scripted model's tokenizer: rebuilt from its script and corpus, byte for byte."""

from __future__ import annotations

import importlib.util
import json

from tokenizers import Tokenizer

from app.config import REPO_ROOT
from app.inference.templates import HERMES_TEMPLATE

FOLDER = REPO_ROOT / "models" / "tokenizers" / "scripted"
_spec = importlib.util.spec_from_file_location("scripted_tokenizer_build", FOLDER / "build.py")
assert _spec is not None and _spec.loader is not None
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)


def test_the_kept_files_are_what_the_script_builds(tmp_path):
    for made in build.build(tmp_path):
        assert made.read_bytes() == (FOLDER / made.name).read_bytes(), (
            f"{made.name} drifted from models/tokenizers/scripted/build.py; rebuild it: "
            ".venv/bin/python models/tokenizers/scripted/build.py"
        )


def test_special_tokens_are_single_tokens_and_any_text_round_trips():
    tokenizer = Tokenizer.from_file(str(FOLDER / "tokenizer.json"))
    for token in build.SPECIAL:
        assert tokenizer.encode(token).tokens == [token]
    text = '<|im_start|>user\nÉté 漢字 {"name": "x"}<|im_end|>\n'
    assert tokenizer.decode(tokenizer.encode(text).ids, skip_special_tokens=False) == text


def test_the_config_carries_the_chat_template_and_stays_small():
    config = json.loads((FOLDER / "tokenizer_config.json").read_text())
    assert config["chat_template"] == HERMES_TEMPLATE and config["eos_token"] == "<|im_end|>"
    assert (FOLDER / "tokenizer.json").stat().st_size < 200_000
