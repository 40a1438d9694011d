"""The local model's tokenizer folder: tokenizer.json counts what llama.cpp counts, and the
chat template is the GGUF's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.inference.templates import ChatTemplate
from app.inference.tokens import load_tokenizer
from app.local import llm

llama_cpp = pytest.importorskip("llama_cpp")

CORPUS = [
    "Hello, world!",
    "def f(x):\n    return x**2  # square\n\n\tprint(f(12345))\n",
    "In 2024, 1,000,000 people paid $3.50 (0x1F, 1e-9, 3.14159).",
    "Ünïcödé — café, naïve, 日本語のテキスト, emoji 🚀🔥, Ελληνικά, \u00a0nbsp",
    "   leading and trailing spaces   \n\n\n  \r\n",
    "it's they're we've I'm you'll he'd",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
    "<|im_start|>assistant\n",
    '<tool_call>\n{"name": "calculator", "arguments": {"expression": "20+22"}}\n</tool_call>',
    "<repo_name>a<file_sep>b<|endoftext|> <|im_start no special",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return llm.prepare_model(tmp_path_factory.mktemp("llm"))


def test_token_counts_are_llama_cpps_own(folder: Path) -> None:
    model = llama_cpp.Llama(str(llm.gguf_path()), vocab_only=True, verbose=False)
    tokenizer = load_tokenizer(folder)
    for text in CORPUS:
        ours = tokenizer.encode(text, add_special_tokens=False).ids
        assert ours == model.tokenize(text.encode(), add_bos=False, special=True), text


def test_preparing_again_keeps_the_folder(folder: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert llm.prepare_model(folder) == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(before)


def test_the_chat_template_is_the_ggufs_chatml(folder: Path) -> None:
    template = ChatTemplate.from_config(folder)
    assert template.eos_token == "<|im_end|>"
    assert "<|im_start|>" in str(template.source) and "tool" not in str(template.source)
