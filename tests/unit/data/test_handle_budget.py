"""The handle cache a training layout needs, and the one-line warning when it is too small."""

from __future__ import annotations

from zoobot_hpc.data.handle_budget import handles_needed, thrash_warning
from zoobot_hpc.data.validate import DatasetSummary


def test_two_blocks_of_the_window_plus_what_a_batch_spans() -> None:
    assert handles_needed([14266] * 561, batch_size=128, window=4) == 9
    assert handles_needed([100] * 561, batch_size=512, window=4) == 14
    assert handles_needed([14266] * 3, batch_size=128, window=4) == 3
    assert handles_needed([], batch_size=128, window=4) == 0


def test_warning_names_the_keys_and_the_number_needed() -> None:
    assert thrash_warning([14266] * 561, 128, 4, 16) is None
    line = thrash_warning([14266] * 561, 128, 16, 16)
    assert line is not None and "\n" not in line
    assert "data.max_open_shards=16" in line and "33" in line and "561 train shards" in line


def test_inspect_warns_when_the_defaults_would_thrash() -> None:
    def summary(counts: dict[str, int]) -> DatasetSummary:
        return DatasetSummary(
            dataset_dir="d",
            image_shape=(8, 8, 3),
            split_counts={"train": sum(counts.values())},
            shard_counts={"train": counts},
            label_stats={},
            allow_nan=(),
            checksums_verified=False,
            problems=[],
        )

    assert summary({f"train-{i}.h5": 14266 for i in range(561)}).handle_warning() is None
    tiny = summary({f"train-{i}.h5": 2 for i in range(100)})
    assert "data.max_open_shards=16" in tiny.handle_warning()
    assert "warning: data.max_open_shards" in tiny.format()
