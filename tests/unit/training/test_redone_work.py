"""How much work a run did twice: starts that saved nothing at their end (a lost node, a kill) against the step
the next start resumed from, as `status` and the run's summary report it."""

from __future__ import annotations

from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.login.status import collect_status


def test_a_start_lost_without_saving_counts_the_steps_since_the_checkpoint_it_resumed_from():
    starts = [
        {"job": "local1", "resumed_step": 0, "reached_step": 57},
        {"job": "local1", "resumed_step": 40, "reached_step": 90},
        {"job": "local1", "resumed_step": 96, "reached_step": 120},
    ]
    redone = layout.redone_work(starts)
    assert [(r.segment, r.resumed_step, r.reached_step, r.steps) for r in redone] == [(1, 40, 57, 17)]


def test_starts_stopped_by_a_signal_redo_nothing():
    starts = [
        {"resumed_step": 0, "reached_step": 30, "stop": "SIGTERM", "stop_step": 32},
        {"resumed_step": 32, "reached_step": 60, "stop": "SIGUSR2", "stop_step": 60},
        {"resumed_step": 60, "reached_step": 96},
    ]
    assert layout.redone_work(starts) == []


def test_records_without_a_resumed_step_are_not_counted():
    """Segments written before `resumed_step` was recorded say nothing about redone work."""
    assert layout.redone_work([{"reached_step": 10}, {"resumed_from": "x.ckpt"}]) == []


def test_status_names_the_redone_steps(tmp_path):
    run_dir = tmp_path / "runs" / "lost"
    run_dir.mkdir(parents=True)
    (run_dir / layout.CONFIG).write_text("name: lost\n")
    layout.append_segment(run_dir, {"job": "local7", "resumed_step": 0, "reached_step": 11})
    layout.append_segment(run_dir, {"job": "local7", "resumed_step": 8, "reached_step": 20})
    (status,) = collect_status(run_dir)
    assert status.requeues == 1
    redone, segments_note, gpu_hours = status.why.split("; ")
    assert redone == "3 steps redone (steps 8-11, restart 1)"
    assert segments_note == "segments 1: lost node, hang or kill (no save), 2: running"
    assert gpu_hours.startswith("GPU-h used ")
