"""`segments.jsonl` tolerates its expected failure: a torn last line is skipped with a warning, and the next
append starts a line of its own."""

from __future__ import annotations

import logging

from zoobot_hpc.core import run_dir as layout


def test_a_torn_last_line_is_skipped_and_the_next_segment_is_recorded(tmp_path, caplog):
    layout.append_segment(tmp_path, {"start": 1.0, "job": "1"})
    with open(tmp_path / layout.SEGMENTS, "a") as handle:
        handle.write('{"start": 2.0, "jo')  # a full disk or a client crash mid-append
    with caplog.at_level(logging.WARNING):
        assert layout.read_segments(tmp_path) == [{"start": 1.0, "job": "1"}]
    [warning] = [r.getMessage() for r in caplog.records]
    assert "segments.jsonl line 2" in warning

    layout.append_segment(tmp_path, {"start": 3.0, "job": "3"})
    assert [record["job"] for record in layout.read_segments(tmp_path)] == ["1", "3"]
    layout.update_last_segment(tmp_path, {"stop": "SIGTERM"})
    assert layout.read_segments(tmp_path)[-1] == {"start": 3.0, "job": "3", "stop": "SIGTERM"}
    assert (tmp_path / layout.SEGMENTS).read_text().count("\n") == 2, "the rewrite drops the torn line"


def test_status_of_a_run_whose_segments_end_in_a_torn_line(tmp_path):
    from zoobot_hpc.login.status import collect_status

    (tmp_path / layout.CONFIG).write_text("name: torn\n")
    layout.append_segment(tmp_path, {"start": 1.0, "job": "1", "resumed_step": 0, "reached_step": 4})
    with open(tmp_path / layout.SEGMENTS, "a") as handle:
        handle.write('{"start": 2.0, "jo')
    [status] = collect_status(tmp_path)
    assert status.requeues == 0
