#!/usr/bin/env python3
"""Copy the served model's tokenizer out of its Hugging Face checkpoint, for agentq's workers.

Workers render each conversation with the model's chat template and count tokens with its
tokenizer (settings ``triton.chat_templates`` / ``triton.tokenizers``: a folder holding
``tokenizer_config.json`` with ``chat_template`` and ``tokenizer.json``). This writes such a
folder: the checkpoint's tokenizer files, with a chat template kept in a file of its own
(``chat_template.jinja``, newer checkpoints) folded into ``tokenizer_config.json``, where the
workers read it. A checkpoint without ``tokenizer.json`` or without a chat template is refused:
its workers could neither count nor render.

Standard library only: it runs in the Triton image (python 3.12) and in agentq's tests.
    export_tokenizer.py CHECKPOINT_DIR OUTPUT_DIR
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

# What a tokenizer folder holds; the workers read the first two, the rest keeps the folder a
# complete Hugging Face tokenizer (AutoTokenizer.from_pretrained loads it).
FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "chat_template.jinja",
)
CONFIG = "tokenizer_config.json"


class ExportError(Exception):
    """The checkpoint's tokenizer cannot serve agentq's workers."""


def chat_template(checkpoint: Path, config: dict[str, object]) -> object:
    """The checkpoint's chat template: tokenizer_config.json's, else chat_template.jinja's,
    else chat_template.json's (a processor's); None when it has none."""
    if config.get("chat_template"):
        return config["chat_template"]
    jinja = checkpoint / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    processor = checkpoint / "chat_template.json"
    if processor.is_file():
        return json.loads(processor.read_text(encoding="utf-8")).get("chat_template")
    return None


def export(checkpoint: Path, out: Path) -> list[str]:
    """Write the tokenizer folder ``out`` from ``checkpoint``; the files written."""
    if not (checkpoint / "tokenizer.json").is_file():
        raise ExportError(
            f"{checkpoint} has no tokenizer.json (a fast tokenizer): agentq's workers count "
            "tokens with it; save the checkpoint's tokenizer with transformers "
            "(AutoTokenizer.from_pretrained(dir).save_pretrained(dir)) to write one"
        )
    config_file = checkpoint / CONFIG
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"cannot read {config_file}: {exc}") from exc
    template = chat_template(checkpoint, config)
    if not template:
        raise ExportError(
            f"{checkpoint} has no chat template (tokenizer_config.json chat_template or "
            "chat_template.jinja): agentq's workers render conversations with it; serve an "
            "instruct / chat model, or add its template to tokenizer_config.json"
        )
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in FILES:
        if name != CONFIG and (checkpoint / name).is_file():
            shutil.copyfile(checkpoint / name, out / name)
            written.append(name)
    config["chat_template"] = template
    (out / CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    return sorted([*written, CONFIG])


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        written = export(Path(argv[0]), Path(argv[1]))
    except ExportError as exc:
        print(f"export_tokenizer: {exc}", file=sys.stderr)
        return 1
    print(f"export_tokenizer: {', '.join(written)} in {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
