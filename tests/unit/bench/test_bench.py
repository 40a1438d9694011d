"""The inference bench's pure parts: its model copy's config edit and its percentiles."""

from __future__ import annotations

import pytest

from app.config import Settings
from bench.measure import BenchError, bench_repository, edit_config, percentile


def test_the_bench_copy_changes_only_delay_batch_size_and_scheduling(tmp_path) -> None:
    source = Settings().triton.model_repository
    repo = bench_repository(source, tmp_path / "models", 200, 256)
    for model in ("ensemble", "ensemble_stream"):
        before = (source / model / "config.pbtxt").read_text()
        after = (repo / model / "config.pbtxt").read_text()
        assert "max_batch_size: 256" in after
        assert 'key: "delay_ms" value: { string_value: "200" }' in after
        assert 'key: "scheduling" value: { string_value: "inflight" }' in after
        assert 'key: "scheduling" value: { string_value: "batch" }' in before
        changed = [
            a for a, b in zip(after.splitlines(), before.splitlines(), strict=True) if a != b
        ]
        assert len(changed) == 3


def test_a_config_without_the_fields_is_refused() -> None:
    with pytest.raises(BenchError):
        edit_config('name: "x"\nbackend: "python"\n', 200, 256, "inflight")
    no_scheduling = (
        'max_batch_size: 64\nparameters { key: "delay_ms" value: { string_value: "0" } }'
    )
    with pytest.raises(BenchError, match="scheduling"):
        edit_config(no_scheduling, 200, 256, "inflight")


def test_percentiles_interpolate() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile(list(map(float, range(101))), 0.99) == pytest.approx(99.0)
