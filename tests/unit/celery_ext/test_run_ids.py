"""Run ids are version 7 UUIDs (RFC 9562): their text is a UUID's, and they hold the
millisecond they were made, which the queued-runs index reads as the submit time."""

from __future__ import annotations

import itertools
import time
import uuid

from app.celery_ext.envelope import new_id, new_ids
from app.celery_ext.queued import time_of


def _ms() -> int:
    return time.time_ns() // 1_000_000


def test_an_id_has_the_version_and_variant_bits_and_its_millisecond() -> None:
    before = _ms()
    ids = [new_id(), *itertools.islice(new_ids(chunk=8), 50)]
    after = _ms()
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        at = time_of(text)
        assert at is not None and at % 1000 == 0
        assert before <= at // 1000 == parsed.int >> 80 <= after


def test_a_batch_of_ids_is_unique_and_increasing_across_chunks() -> None:
    ids = list(itertools.islice(new_ids(chunk=16), 20_000))  # several per millisecond
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert len({text[:13] for text in ids}) < len(ids)  # some share their millisecond
    assert len({new_id() for _ in range(2000)}) == 2000


def test_an_id_that_is_not_a_uuid7_has_no_time() -> None:
    for text in (
        str(uuid.uuid4()),
        "run-1",
        "",
        "0189abcd-ef01-7000-c000-000000000000",  # variant bits 110
        "0189abcd-ef01-7000-8000-00000000000",  # one digit short
        "0189abcz-ef01-7000-8000-000000000000",  # not hex
    ):
        assert time_of(text) is None
    assert time_of("0189ABCD-EF01-7000-B000-000000000000") == 0x0189ABCDEF01 * 1000
