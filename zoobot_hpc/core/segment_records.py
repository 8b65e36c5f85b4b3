"""Per-segment records of a run (each start of its job) and their totals, from the run dir's `segments.jsonl`:
what the W&B run's config and summary and `zoobot-hpc status` show about requeues."""

from __future__ import annotations

from typing import Any

from zoobot_hpc.core import run_dir as layout

# What the recorded stop signal says: the requeue signal comes `signal_delay_s` before the time limit (or from a
# user's `scancel --signal`); SIGTERM is a preemption, a cancel or a drained node (or, without a requeue signal,
# the time limit itself: the stop protocol then requeues the job).
REQUEUE_STOP = "time limit (requeue signal)"
STOP_REASONS = {"SIGTERM": "preemption or cancel (SIGTERM)", "SIGINT": "interrupt"}


def _ended(segment: dict[str, Any]) -> float | None:
    return segment.get("stopped") or segment.get("reached_at")


def segment_records(segments: list[dict[str, Any]], finished: bool) -> list[dict[str, Any]]:
    """One record per start of the job: job id, nodes, start and end time, why it stopped, the steps the next start
    trained again after it, and the device-hours it used (`finished`: the run's summary exists)."""
    redone = {work.segment - 1: work.steps for work in layout.redone_work(segments)}
    records = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment.get("stop"):
            why = STOP_REASONS.get(segment["stop"], REQUEUE_STOP)
        elif last:
            why = "finished" if finished else "running"
        else:
            why = "lost node, hang or kill (no save)"
        start, end = segment.get("start"), _ended(segment)
        hours = (end - start) * segment.get("world_size", 1) / 3600 if start and end else 0.0
        records.append(
            {
                "job": segment.get("job"),
                "nodes": segment.get("nodes") or segment.get("host"),
                "start": start,
                "stop": end,
                "stopped_because": why,
                "resumed_step": segment.get("resumed_step"),
                "reached_step": max(segment.get("reached_step") or 0, segment.get("stop_step") or 0),
                "redone_steps_after": redone.get(index, 0),
                "device_hours": round(hours, 6),
            }
        )
    return records


def segment_totals(records: list[dict[str, Any]]) -> dict[str, float]:
    """Device-hours used by all starts, and those lost: spent on steps a later start trained again (at each
    segment's own rate of steps per hour)."""
    used = sum(record["device_hours"] for record in records)
    lost = 0.0
    for record in records:
        steps = record["reached_step"] - (record["resumed_step"] or 0)
        if record["redone_steps_after"] and steps > 0:
            lost += record["device_hours"] * min(1.0, record["redone_steps_after"] / steps)
    return {"gpu_hours/used": round(used, 6), "gpu_hours/lost": round(lost, 6), "segments": len(records)}


def segments_note(segments: list[dict[str, Any]], finished: bool) -> str:
    """`status`'s line of a requeued run's segments: how each stopped and the device-hours used and lost."""
    if len(segments) < 2:
        return ""
    records = segment_records(segments, finished)
    totals = segment_totals(records)
    stops = ", ".join(f"{n}: {r['stopped_because']}" for n, r in enumerate(records, start=1))
    return f"segments {stops}; GPU-h used {totals['gpu_hours/used']:.3f}, lost {totals['gpu_hours/lost']:.3f}"
