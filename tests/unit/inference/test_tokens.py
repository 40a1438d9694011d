"""Token counts with a model's own tokenizer (app.inference.tokens), and the labelled estimate."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

from app.config import Settings
from app.inference import tokens
from app.inference.chat import ChatRequest, GenerationParams, Message, ToolCall
from app.inference.tokens import TokenCounter, counters, load_tokenizer

CORPUS = [
    "the weather in oslo is rain and wind",
    "call the calculator tool with an expression",
    "<|user|> what is the weather <|assistant|>",
]
TEXTS = [
    "the weather in oslo",
    "call the calculator tool, then the weather tool!",
    "<|user|> rain and wind in bergen <|assistant|>",
    "",
]
PARAMS = GenerationParams(max_tokens=16)


@pytest.fixture
def tokenizer_dir(tmp_path: Path) -> Path:
    """A small BPE tokenizer with special tokens and a BOS the post-processor would add."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    folder = tmp_path / "tok"
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    # Warnings are once per process; each test starts as a fresh process would.
    monkeypatch.setattr(tokens, "_warned", set())


def _expected(folder: Path, text: str) -> int:
    reference = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return len(reference.encode(text, add_special_tokens=False).ids)


def test_counts_are_the_tokenizers_without_special_tokens_added(tokenizer_dir: Path) -> None:
    counter = TokenCounter("triton", {"m": tokenizer_dir})
    for text in TEXTS:
        assert counter.count("m", text) == (_expected(tokenizer_dir, text), "tokenizer")
    # A special token written in the text counts as one token; no BOS is added.
    assert counter.count("m", "<|user|>") == (1, "tokenizer")
    # Several texts count as their sum.
    total = sum(_expected(tokenizer_dir, t) for t in TEXTS)
    assert counter.count("m", *TEXTS) == (total, "tokenizer")


def test_a_tokenizer_json_path_works_as_well_as_its_folder(tokenizer_dir: Path) -> None:
    counter = TokenCounter("triton", {"m": tokenizer_dir / "tokenizer.json"})
    assert counter.count("m", TEXTS[1])[0] == _expected(tokenizer_dir, TEXTS[1])


def test_a_tokenizer_is_loaded_once_and_shared(tokenizer_dir: Path) -> None:
    loaded: list[Tokenizer] = []
    threads = [
        threading.Thread(target=lambda: loaded.append(load_tokenizer(tokenizer_dir)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loaded) == 8 and all(t is loaded[0] for t in loaded)
    assert load_tokenizer(tokenizer_dir / "tokenizer.json") is loaded[0]


def test_a_model_without_a_tokenizer_is_an_estimate_logged_once(
    tokenizer_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    counter = TokenCounter("openai", {"known": tokenizer_dir})
    with caplog.at_level(logging.WARNING, logger="app.inference.tokens"):
        assert counter.count("other", "three plain words") == (3, "estimate")
        assert counter.count("other", "and two") == (2, "estimate")
        counter.count("known", "counted with its tokenizer")
    lines = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1
    assert "'other'" in lines[0].getMessage() and "openai" in lines[0].getMessage()
    assert "estimates" in lines[0].getMessage()


def test_a_missing_tokenizer_file_is_an_estimate_saying_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    counter = TokenCounter("triton", {"m": tmp_path / "nowhere"})
    with caplog.at_level(logging.WARNING, logger="app.inference.tokens"):
        assert counter.count("m", "a b c") == (3, "estimate")
        assert counter.count("m", "a b") == (2, "estimate")
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "nowhere" in line


def test_request_tokens_count_each_turn_with_the_model_tokenizer(tokenizer_dir: Path) -> None:
    call = ToolCall("c1", "calculator", {"expression": "1+2"})
    request = ChatRequest(
        (
            Message("system", TEXTS[0]),
            Message("user", TEXTS[2]),
            Message("assistant", "", (call,)),
            Message("tool", "3", tool_call_id="c1"),
        ),
        PARAMS,
        model="m",
    )
    counter = TokenCounter("triton", {"m": tokenizer_dir})
    texts = [TEXTS[0], TEXTS[2], "", 'calculator {"expression": "1+2"}', "3"]
    expected = sum(_expected(tokenizer_dir, t) for t in texts)
    assert counter.request_tokens(request) == (expected, "tokenizer")
    # The backend's default model stands for a request that names none.
    default = TokenCounter("triton", {"m": tokenizer_dir}, default_model="m")
    assert default.request_tokens(ChatRequest(request.messages, PARAMS)) == (expected, "tokenizer")
    # Without a tokenizer: the words estimate, as before.
    assert TokenCounter("triton", {}).request_tokens(request) == (
        request.estimated_tokens(),
        "estimate",
    )


def test_the_scripted_models_count_with_the_shipped_tokenizer() -> None:
    settings = Settings()
    triton = counters(settings)["triton"]
    for model in ("ensemble", "ensemble_stream"):
        assert triton.tokenizer(model) is not None, settings.triton.tokenizers[model]
        assert triton.count(model, "hello world")[1] == "tokenizer"
    assert counters(settings)["openai"].tokenizer(settings.openai.model) is None
