"""Will a save fit? The target partition's preemption settings against the time a run needs to stop and write its
checkpoint, checked on the login node and reported as one-line warnings."""

from __future__ import annotations

from pathlib import Path

from zoobot_hpc.backends.base import Partition
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.config import RunConfig

# Assumed stop-and-save time of a run that has not been stopped yet (its segments record no measurement).
DEFAULT_STOP_AND_SAVE_S = 30.0


def measured_stop_and_save_s(run_dir: Path) -> float | None:
    """The stop-and-save time the run's most recent measured segment recorded, or None."""
    for segment in reversed(layout.read_segments(run_dir)):
        if segment.get("stop_and_save_s") is not None:
            return float(segment["stop_and_save_s"])
    return None


def save_time_needed(run_dirs: list[Path]) -> tuple[float, str]:
    """The longest measured stop-and-save time among `run_dirs` and where it comes from, else the default."""
    measured = [s for s in (measured_stop_and_save_s(d) for d in run_dirs) if s is not None]
    if measured:
        return max(measured), "measured in the last stopped segment"
    return DEFAULT_STOP_AND_SAVE_S, "assumed before any measurement"


def preemption_warnings(
    partition: Partition | None, config: RunConfig, stop_and_save_s: float, source: str, resume_target: Path
) -> list[str]:
    """One line per way the run may lose its checkpoint, or not come back, on this partition."""
    warnings = []
    need = f"the {stop_and_save_s:.0f} s a stop-and-save takes ({source})"
    delay = config.resources.signal_delay_s
    if delay < stop_and_save_s:
        warnings.append(
            f"resources.signal_delay_s={delay} is shorter than {need}: the time limit may kill the job "
            "before its checkpoint is written"
        )
    if partition is None or not partition.preemptible:
        return warnings
    if partition.grace_time_s < stop_and_save_s:
        warnings.append(
            f"partition {partition.name}: GraceTime={partition.grace_time_s} s is shorter than {need}: "
            "a preemption may kill the job before its checkpoint is written"
        )
    if partition.cancels:
        warnings.append(
            f"partition {partition.name}: PreemptMode=CANCEL: a preempted run does not come back by itself; "
            f"continue it with `zoobot-hpc resume {resume_target}`"
        )
    return warnings
