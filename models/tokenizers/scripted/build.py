"""Build the scripted model's tokenizer: byte-level BPE trained on corpus.txt, deterministic.

    .venv/bin/python models/tokenizers/scripted/build.py

writes tokenizer.json and tokenizer_config.json (its chat template: ChatML with Hermes tools,
app.inference.templates.HERMES_TEMPLATE) beside this file; a unit test rebuilds both and
compares them byte for byte, so neither drifts from this script.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

HERE = Path(__file__).resolve().parent
BOS, EOS, PAD = "<|endoftext|>", "<|im_end|>", "<|endoftext|>"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]
VOCAB_SIZE = 1000


def build_tokenizer(corpus: str) -> Tokenizer:
    """A byte-level BPE (every byte is a token, so no text is unknown) trained on ``corpus``."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # One line per training "sequence", in file order: the same corpus gives the same merges.
    tokenizer.train_from_iterator(corpus.splitlines(), trainer=trainer)
    return tokenizer


def tokenizer_config(chat_template: str) -> dict[str, object]:
    """HF's tokenizer_config.json for the tokenizer, with its chat template."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": EOS,
        "pad_token": PAD,
        "model_max_length": 32768,
        "add_bos_token": False,
        "chat_template": chat_template,
    }


def build(out: Path = HERE) -> list[Path]:
    """Write tokenizer.json and tokenizer_config.json into ``out``; their paths."""
    from app.inference.templates import HERMES_TEMPLATE

    tokenizer = build_tokenizer((HERE / "corpus.txt").read_text(encoding="utf-8"))
    files = [out / "tokenizer.json", out / "tokenizer_config.json"]
    files[0].write_text(tokenizer.to_str(pretty=True) + "\n", encoding="utf-8")
    config = json.dumps(tokenizer_config(HERMES_TEMPLATE), indent=2, ensure_ascii=False)
    files[1].write_text(config + "\n", encoding="utf-8")
    return files


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[2]))  # the checkout, for app.inference.templates
    for path in build():
        print(path)
