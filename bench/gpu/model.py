"""A Llama of a real shape with random weights, and a tokenizer for it, written to a folder
that ``transformers serve`` loads (no hub: nothing is downloaded).

    python bench/gpu/model.py --size 1b --device cuda --out /tmp/llama-1b

Honest for throughput (the shapes, hence the work per token, are Llama 3.2 1B's), not for
text: the weights are random, so the replies are random words. The tokenizer is a word-level
one whose vocabulary is as large as the model's (words ``w0``, ``w1``, ... after the chat
template's special tokens), so every id the model samples decodes to a word.

Runs with the Python that serves the model (torch, transformers and tokenizers); it imports
nothing of agentq.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

# Llama 3.2 1B's shape (1.24 B parameters); "tiny" is for tests on a CPU.
SHAPES: dict[str, dict[str, Any]] = {
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 4096,
        "tie_word_embeddings": True,
    },
}
MAX_POSITIONS = 4096
UNK, EOS, START, END = "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL = [UNK, EOS, START, END]
# Words of the prompts the bench sends, so they are tokens of their own rather than <unk>.
WORDS = [
    "system",
    "user",
    "assistant",
    "You",
    "are",
    "a",
    "helpful",
    "agent.",
    "Say",
    "hello.",
    "Write",
    "a",
    "short",
    "story",
    "about",
]
CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def build_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer of exactly ``vocab_size`` ids: special tokens, the prompt's
    words, then filler words; split on whitespace, decoded by joining words with spaces."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    words = SPECIAL + list(dict.fromkeys(WORDS))
    words += [f"w{i}" for i in range(vocab_size - len(words))]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    return tokenizer


def write_tokenizer(out: Path, vocab_size: int) -> None:
    """tokenizer.json and tokenizer_config.json (ChatML chat template) into ``out``."""
    build_tokenizer(vocab_size).save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": UNK,
        "bos_token": None,
        "eos_token": END,
        "pad_token": EOS,
        "model_max_length": MAX_POSITIONS,
        "chat_template": CHATML,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def build(size: str, device: str, out: Path, seed: int = 0) -> dict[str, Any]:
    """Write the model (config, random weights, generation config) and its tokenizer into
    ``out``; what was built."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    started = time.monotonic()
    torch.manual_seed(seed)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    ids = {token: i for i, token in enumerate(SPECIAL)}
    config = LlamaConfig(
        **SHAPES[size],
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=None,
        eos_token_id=ids[END],
        pad_token_id=ids[EOS],
    )
    config.dtype = dtype  # what "auto" loads it as
    # Initialised where it runs: random init of 1.2 B parameters is quick on a GPU.
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        eos_token_id=ids[END], pad_token_id=ids[EOS], do_sample=False
    )
    model.save_pretrained(out)
    write_tokenizer(out, config.vocab_size)
    return {
        "architecture": "LlamaForCausalLM",
        "size": size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(dtype).removeprefix("torch."),
        "shape": SHAPES[size],
        "weights": f"random (seed {seed}): throughput is honest, the text is not",
        "build_s": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--device", default="cpu", help="where the weights are made: cpu, cuda")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    built = build(args.size, args.device, args.out)
    (args.out / "built.json").write_text(json.dumps(built, indent=2))
    print(json.dumps(built))


if __name__ == "__main__":
    main()
