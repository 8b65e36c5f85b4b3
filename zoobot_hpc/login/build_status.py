"""A submitted shard build seen from the login node: `status DATASET`, and the refusal of a second build while
the first one's jobs are queued or running. Reads `DATASET/.zoobot-build/build_submission.json`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zoobot_hpc.backends.base import JobRecord, Phase
from zoobot_hpc.backends.registry import get_backend
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.data.build_state import record_path
from zoobot_hpc.data.shard_format import MANIFEST_NAME, STATE_DIR
from zoobot_hpc.login.preflight import PreflightError

SUBMISSION = "build_submission.json"


def build_submission(out_dir: Path) -> dict[str, Any]:
    return layout.read_json(Path(out_dir) / STATE_DIR / SUBMISSION) or {}


def _job_states(submitted: dict[str, Any]) -> tuple[list[JobRecord], dict[str, str], Any]:
    """The build's jobs (tasks, then the last step), their states, and their backend (None: unknown)."""
    try:
        backend = get_backend(str(submitted["executor"]))
    except (KeyError, ValueError):
        return [], {}, None
    entries = [*submitted.get("tasks", []), submitted.get("finish") or {}]
    jobs = [
        JobRecord(str(job["job_id"]), Path(job.get("submitit_folder", ".")), job.get("process_start"))
        for job in entries
        if job.get("job_id")
    ]
    return jobs, backend.job_states(jobs), backend


def refuse_active_build(out_dir: Path) -> None:
    """One dataset, one build: a PreflightError (one line) while a submitted build's job is queued or running,
    since planning again rewrites the work units its tasks read."""
    jobs, states, backend = _job_states(build_submission(out_dir))
    active = [job.job_id for job in jobs if backend.phase(states.get(job.job_id, "UNKNOWN")) is Phase.ACTIVE]
    if active:
        raise PreflightError(
            f"{out_dir}: its build job {active[0]} is queued or running ({states[active[0]]}): one dataset, one "
            "build (wait for it to end)"
        )


def build_status_lines(out_dir: Path) -> list[str]:
    """Each task's job state and shards written, the last step's state and log, whether the manifest is written."""
    submitted = build_submission(out_dir)
    _, states, _ = _job_states(submitted)
    tasks = submitted.get("tasks", [])
    written = {task["job_id"]: sum(record_path(out_dir, s).exists() for s in task.get("shards", [])) for task in tasks}
    total = sum(len(task.get("shards", [])) for task in tasks)
    manifest = "written" if (Path(out_dir) / MANIFEST_NAME).exists() else "not written yet"
    lines = [f"build of {out_dir}: {sum(written.values())}/{total} shards written, manifest {manifest}"]
    for task in tasks:
        state = states.get(str(task["job_id"]), "UNKNOWN")
        lines.append(f"  task {task['job_id']:<14} {state:<11} shards {written[task['job_id']]}/{len(task['shards'])}")
    finish = submitted.get("finish") or {}
    if finish.get("job_id"):
        state = states.get(str(finish["job_id"]), "UNKNOWN")
        lines.append(f"  last step {finish['job_id']:<9} {state:<11} log: {finish.get('stdout')}")
    return lines
