"""The run listing's cursor: opaque text that gives back the mark it was made from, and a
typed error for any text it was not."""

from __future__ import annotations

import base64

import pytest

from app.errors import BadCursorError
from app.ops.runs import decode_cursor, encode_cursor


@pytest.mark.parametrize("mark", [(0, ""), (1_764_700_000_123_456, "0b6c-run"), (5, "ü/+=")])
def test_a_cursor_gives_back_its_mark_and_is_url_safe(mark: tuple[int, str]) -> None:
    cursor = encode_cursor(mark)
    assert decode_cursor(cursor) == mark
    assert "=" not in cursor and "+" not in cursor and "/" not in cursor


@pytest.mark.parametrize(
    "text",
    [
        "",
        "%%%",
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(b'{"t": 1.5, "id": "x"}').decode(),
        base64.urlsafe_b64encode(b'{"t": true, "id": "x"}').decode(),
        base64.urlsafe_b64encode(b'{"t": 1, "id": 2}').decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
def test_any_other_text_is_a_bad_cursor(text: str) -> None:
    with pytest.raises(BadCursorError, match="pass `next_cursor`"):
        decode_cursor(text)
