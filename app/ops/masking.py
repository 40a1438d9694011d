"""How a step message's arguments are shown to monitors (Flower, Celery's logs): secrets masked.

Celery puts ``kwargsrepr`` in each message; Flower and the worker's log lines show it instead of
the arguments. :func:`task_kwargsrepr` builds it from the arguments with the values of
secret-looking keys, passwords in URLs and ``password=...`` pairs in text replaced by
:data:`MASK`, and long text cut. It is pure: no I/O, no settings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from itertools import pairwise
from typing import Any

MASK = "********"
MAX_TEXT = 200  # characters of a string shown before it is cut
MAX_ITEMS = 20  # items of a list or mapping shown before the rest are counted
MAX_DEPTH = 6
MAX_REPR = 1024  # Celery's own kwargsrepr limit

# Words that make a key secret wherever they appear in it: "client_secret", "authToken",
# "X-Api-Key". Compared word by word, so "max_tokens_in" or "session_id" stay visible.
_SECRET_WORDS = frozenset(
    {
        "password", "passwd", "pwd", "passphrase", "secret", "token", "apikey", "auth",
        "authorization", "credential", "credentials", "cookie", "dsn", "privatekey",
        "accesskey", "signature",
    }
)  # fmt: skip
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE)
_PAIR = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|secret|token|api[_-]?key|authorization)\b"
    r"[\"']?\s*[:=]\s*[\"']?)(?P<value>[^\s\"',;}&]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<key>\bbearer\s+)(?P<value>[^\s\"',;}&]+)", re.IGNORECASE)
# Text that none of the three patterns can match lacks all of these: one search instead of
# three substitutions for the common case (a question with no secret in it).
_MAYBE = r"://|bearer|passw|pwd|secret|token|api[_-]?key|authorization"
_MAYBE_SECRET = re.compile(_MAYBE, re.IGNORECASE)
_MAYBE_SECRET_LOWER = re.compile(_MAYBE)  # for lower-cased ASCII text: four times faster


def _maybe_secret(text: str) -> bool:
    """Whether ``text`` holds any of the words a URL password or key=value secret needs.
    ASCII text is lower-cased and searched case-sensitively; other text goes through the
    IGNORECASE pattern, which also matches the non-ASCII case variants of s, k and i."""
    if text.isascii():
        return _MAYBE_SECRET_LOWER.search(text.lower()) is not None
    return _MAYBE_SECRET.search(text) is not None


@lru_cache(maxsize=4096)  # the same few keys come in every message
def is_secret_key(key: str) -> bool:
    """Whether a mapping key names a secret (password, token, api_key, Authorization ...)."""
    words = [w.lower() for w in _WORD.findall(key)]
    if any(w in _SECRET_WORDS for w in words):
        return True
    # Two-word names: api_key, private-key, access key.
    return any(a + b in _SECRET_WORDS for a, b in pairwise(words))


def mask_text(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` cut to ``limit`` characters, with URL passwords and ``key=value`` secrets masked."""
    cut = text[:limit]
    if _maybe_secret(cut):
        cut = _URL_PASSWORD.sub(lambda m: m["head"] + MASK + "@", cut)
        for pattern in (_BEARER, _PAIR):
            cut = pattern.sub(lambda m: m["key"] + MASK, cut)
    if len(text) > limit:
        cut += f"…(+{len(text) - limit} chars)"
    return cut


def masked(value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` fit to show: secrets masked, long text and collections cut."""
    if depth >= MAX_DEPTH:
        return "…"
    kind = type(value)
    if kind is str:
        return mask_text(value)
    if value is None or kind is int or kind is bool or kind is float:
        return value  # checked first: an ABC isinstance below costs more than all of this
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, Mapping):
        shown: dict[Any, Any] = {}
        for i, (key, item) in enumerate(value.items()):
            if i == MAX_ITEMS:
                shown["…"] = f"{len(value) - MAX_ITEMS} more"
                break
            secret = isinstance(key, str) and is_secret_key(key)
            shown[key] = MASK if secret and item is not None else masked(item, depth + 1)
        return shown
    if isinstance(value, (list, tuple)):
        items = [masked(item, depth + 1) for item in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            items.append(f"…{len(value) - MAX_ITEMS} more")
        return items
    return value


def _shown_as_is(kwargs: dict[str, Any]) -> bool:
    """Whether :func:`masked` would return ``kwargs`` unchanged, by a quick look: flat, with
    short strings that hold none of the words a secret needs and no secret-looking key. False
    does not mean anything is masked, only that ``masked`` has to look."""
    if len(kwargs) > MAX_ITEMS:
        return False
    texts = []
    for key, value in kwargs.items():
        kind = type(value)
        if kind is str:
            if len(value) > MAX_TEXT:
                return False
            texts.append(value)
        elif not (value is None or kind is bool or kind is int):
            return False
        if type(key) is not str or is_secret_key(key):
            return False
    # One search over all of them: no trigger word holds a line break.
    return not _maybe_secret("\n".join(texts))


def task_kwargsrepr(kwargs: Mapping[str, Any] | None) -> str:
    """The ``kwargsrepr`` of an ``agentq.run_agent`` message: its arguments, masked and cut."""
    shown = dict(kwargs or {})
    text = repr(shown if _shown_as_is(shown) else masked(shown))
    if len(text) > MAX_REPR:
        text = text[: MAX_REPR - 1] + "…"
    return text
