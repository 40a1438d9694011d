"""Long-term memory's pure parts: embedding checks, JSON equality for metadata filters, the
embedding column's encoding on each dialect, and the embedded backend's in-process copy."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import numpy as np
import pytest
from sqlalchemy.dialects import postgresql, sqlite

from app.constants import EMBEDDING_DIM
from app.errors import InvalidMemoryError
from app.memory.schema import Embedding
from app.memory.vector_sqlite import TenantVectors
from app.memory.vectors import (
    checked_k,
    checked_tenant,
    json_equal,
    matches,
    unit_vector,
    where_options,
)


def test_unit_vector_takes_a_unit_float32_vector_of_the_model_size() -> None:
    vector = np.zeros(EMBEDDING_DIM, dtype=np.float64)
    vector[3] = 1.0
    assert unit_vector(vector).dtype == np.float32
    with pytest.raises(InvalidMemoryError, match=r"shape \(2,\)"):
        unit_vector([1.0, 0.0])
    with pytest.raises(InvalidMemoryError, match=r"norm 2\.0000"):
        unit_vector(vector * 2)
    vector[4] = np.nan
    with pytest.raises(InvalidMemoryError, match="norm nan"):
        unit_vector(vector)


@pytest.mark.parametrize("k", [0, -1, True, 2.0])
def test_k_must_be_a_positive_int(k: object) -> None:
    with pytest.raises(InvalidMemoryError):
        checked_k(k)  # type: ignore[arg-type]


@pytest.mark.parametrize("tenant", ["", None, 3])
def test_a_memory_call_without_its_tenant_fails(tenant: object) -> None:
    with pytest.raises(InvalidMemoryError, match="tenant"):
        checked_tenant(tenant)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (1, 1.0, True),
        (True, 1, False),
        (False, 0, False),
        (True, True, True),
        ("1", 1, False),
        (None, None, True),
        ([1, "a"], [1.0, "a"], True),
        ([1, 2], [2, 1], False),
        ({"x": [True]}, {"x": [True]}, True),
        ({"x": 1}, {"x": 1, "y": 2}, False),
    ],
)
def test_json_equal_is_json_equality(a: object, b: object, equal: bool) -> None:
    assert json_equal(a, b) is equal


def test_where_needs_every_key_and_a_list_means_one_of() -> None:
    options = where_options({"kind": ["fact", "episode"], "n": 2})
    assert options == [("kind", ["fact", "episode"]), ("n", [2])]
    assert matches({"kind": "episode", "n": 2.0, "extra": 1}, options)
    assert not matches({"kind": "preference", "n": 2}, options)
    assert not matches({"kind": "fact"}, options)
    assert matches({}, where_options(None))
    assert not matches({"kind": "fact"}, where_options({"kind": []}))


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.dialect()])
def test_an_embedding_round_trips_through_its_column_encoding(dialect: object) -> None:
    column = Embedding()
    vector = np.random.default_rng(1).standard_normal(EMBEDDING_DIM).astype(np.float32)
    stored = column.process_bind_param(vector, dialect)  # type: ignore[arg-type]
    assert isinstance(stored, str if dialect.name == "postgresql" else bytes)  # type: ignore[attr-defined]
    back = column.process_result_value(stored, dialect)  # type: ignore[arg-type]
    assert back is not None and back.dtype == np.float32
    np.testing.assert_array_equal(back, vector)


def _rows(start: int, stop: int, agent: str = "a") -> list[SimpleNamespace]:
    vectors = np.eye(EMBEDDING_DIM, dtype=np.float32)
    return [
        SimpleNamespace(
            id=f"m{i}", tenant="acme", agent=agent, session_id=None, text=f"t{i}",
            metadata={}, model="m", created_at=datetime.now(UTC), embedding=vectors[i],
        )
        for i in range(start, stop)
    ]  # fmt: skip


def test_an_extended_copy_leaves_the_copy_it_grew_from_as_it_was() -> None:
    first = TenantVectors.empty().extended("g", 3, 0, _rows(0, 3))
    second = first.extended("g", 70, 0, _rows(3, 70, agent="b"))  # past capacity: it grows
    third = second.extended("g", 71, 0, _rows(70, 71, agent="c"))  # into spare rows
    assert (first.count, second.count, third.count) == (3, 70, 71)
    np.testing.assert_array_equal(first.matrix, np.eye(EMBEDDING_DIM, dtype=np.float32)[:3])
    assert list(first.column("agents")) == ["a"] * 3
    assert list(second.column("agents")[-1:]) == ["b"]
    assert third.column("agents")[-1] == "c" and len(second.memories) == 70
    np.testing.assert_array_equal(third.matrix[70], np.eye(EMBEDDING_DIM)[70])
