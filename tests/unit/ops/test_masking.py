"""What monitors see of a step message's arguments: secrets masked, long text cut."""

from __future__ import annotations

import pytest

from app.ops.masking import MASK, MAX_REPR, is_secret_key, mask_text, masked, task_kwargsrepr


@pytest.mark.parametrize(
    "key",
    ["password", "db_password", "api_key", "X-Api-Key", "apiKey", "authToken", "client_secret",
     "Authorization", "private_key", "refresh_token", "AWSSecretAccessKey", "credentials"],
)  # fmt: skip
def test_secret_keys_are_recognised(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key", ["agent", "run_id", "session_id", "step", "max_tokens_in", "tokens", "author", "input"]
)
def test_ordinary_keys_are_not(key: str) -> None:
    assert not is_secret_key(key)


def test_secret_values_are_masked_at_any_depth() -> None:
    kwargs = {
        "agent": "research",
        "input": {"q": "hi", "auth": {"user": "bob", "password": "pw1"}, "items": [{"token": 7}]},
        "session_id": "s-1",
        "budget": {"max_tokens_in": 100},
    }
    text = task_kwargsrepr(kwargs)
    assert text == (
        "{'agent': 'research', 'input': {'q': 'hi', 'auth': '********', "
        "'items': [{'token': '********'}]}, 'session_id': 's-1', 'budget': {'max_tokens_in': 100}}"
    )
    assert kwargs["input"]["auth"]["password"] == "pw1"  # the message itself is untouched


def test_a_later_steps_arguments_show_agent_run_and_step() -> None:
    text = task_kwargsrepr({"agent": "coder", "session_id": None, "run_id": "r-1", "step": 2})
    assert text == "{'agent': 'coder', 'session_id': None, 'run_id': 'r-1', 'step': 2}"


def test_secrets_inside_text_are_masked() -> None:
    assert mask_text("redis://:hunter2@cache:6379/0") == f"redis://:{MASK}@cache:6379/0"
    assert mask_text("use password=hunter2 and api_key: 'k-1'") == (
        f"use password={MASK} and api_key: '{MASK}'"
    )
    assert mask_text("Authorization: Bearer abc.def") == f"Authorization: {MASK} {MASK}"
    assert mask_text("how many tokens is a token worth") == "how many tokens is a token worth"


def test_long_values_are_cut_and_the_whole_repr_bounded() -> None:
    assert mask_text("a" * 250) == "a" * 200 + "…(+50 chars)"
    text = task_kwargsrepr({"agent": "a", "input": [f"item {i}" * 30 for i in range(100)]})
    assert len(text) == MAX_REPR and text.endswith("…")
    assert task_kwargsrepr({"input": list(range(25))}).endswith("19, '…5 more']}")
    assert task_kwargsrepr(None) == "{}"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("AMQP://guest:Guest1@rabbit/", f"AMQP://guest:{MASK}@rabbit/"),
        ("PASSWD = s3cr3t", f"PASSWD = {MASK}"),
        ("pwd:x", f"pwd:{MASK}"),
        ('{"Secret": "abc"}', f'{{"Secret": "{MASK}"}}'),
        ("TOKEN=t-1;", f"TOKEN={MASK};"),
        ("API-Key=k", f"API-Key={MASK}"),
        ("bEaReR xyz", f"bEaReR {MASK}"),
        ("capital of France?", "capital of France?"),
    ],
)
def test_every_kind_of_secret_passes_the_quick_check_before_masking(text: str, shown: str) -> None:
    # Text without any trigger word skips the three patterns; any case of a trigger must not.
    assert mask_text(text) == shown


@pytest.mark.parametrize(
    "kwargs",
    [
        {"agent": "research", "input": "What is the capital of France?", "session_id": None},
        {"agent": "research", "input": "pass the salt", "session_id": "s-1", "stream": True},
        {"agent": "research", "input": "Bearer abc", "session_id": None},
        {"agent": "research", "input": "my pa\u017fsword=hunter2", "session_id": None},
        {"agent": "research", "input": "AUTHORİZATION: x", "session_id": None},
        {"agent": "research", "input": "x" * 201, "session_id": None},
        {"agent": "research", "input": "q", "session_id": "redis://:pw@host/0"},
        {"agent": "research", "input": "q", "api_key": 7},
        {"agent": "research", "input": "q", "token": None},
        {"agent": "research", "input": {"password": "pw"}},
        {"agent": "research", "input": ["a"] * 25},
        {f"k{i}": i for i in range(25)},
    ],
)
def test_flat_arguments_without_secrets_look_the_same_as_when_masked(kwargs: dict) -> None:
    # task_kwargsrepr skips masking when a quick look finds nothing to mask or cut: whatever
    # it decides, the text is what masking everything would show.
    text = repr(masked(kwargs))
    expected = text if len(text) <= MAX_REPR else text[: MAX_REPR - 1] + "…"
    assert task_kwargsrepr(kwargs) == expected
