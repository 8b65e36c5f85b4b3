"""`zoobot-hpc status SEARCH_DIR`: one line per trial of a search (from its study), then the best so far."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoobot_hpc.backends.base import JobRecord, SchedulerBackend
from zoobot_hpc.backends.registry import get_backend
from zoobot_hpc.login.sweep import run_name
from zoobot_hpc.search.study import fail_stale_trials, fail_trial, load_study, require_optuna, task_activity


@dataclass
class TrialRow:
    number: int
    state: str
    params: dict[str, Any]
    epochs: int
    best: float | None
    array_task: int | None
    job_state: str
    run_dir: str | None
    note: str = ""

    def line(self) -> str:
        params = run_name(self.params) if self.params else "-"
        best = f"{self.best:.4g}" if self.best is not None else "-"
        task = "-" if self.array_task is None else str(self.array_task)
        return (
            f"trial {self.number:<3} task {task:<3} {self.state:<8} job={self.job_state:<10} epochs={self.epochs:<3} "
            f"best={best:<10} {params}{'  ' + self.note if self.note else ''}"
        )


def _best_value(trial: Any, maximize: bool) -> float | None:
    if trial.value is not None and trial.state.name == "COMPLETE":
        return float(trial.value)
    values = list(trial.intermediate_values.values())
    return (max(values) if maximize else min(values)) if values else None


def maximizes(study: Any) -> bool:
    """The study's objective improves upwards (a classifier's accuracy), not downwards (a loss)."""
    return study.direction.name == "MAXIMIZE"


def fail_trials_of_ended_jobs(
    study: Any, jobs: dict[int, str], states: dict[str, str], backend: SchedulerBackend | None
) -> list[int]:
    """Mark FAIL the RUNNING trials whose array task the scheduler says has ended (e.g. killed while it waited
    in the queue after a requeue, where no heartbeat is expected)."""
    optuna = require_optuna()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        state = states.get(jobs.get(trial.user_attrs.get("array_task"), ""))
        if state is not None and backend is not None and backend.phase(state).ended:
            fail_trial(study, trial, f"its job ended {state}")
            failed.append(trial.number)
    return failed


def collect_trials(sweep_dir: Path) -> tuple[list[TrialRow], TrialRow | None, int]:
    """Every trial of the search (stale ones and those of ended jobs failed first), the best finished one, and
    the number of tasks not started."""
    sweep_dir = Path(sweep_dir)
    study, spec, record = load_study(sweep_dir)
    fail_stale_trials(study, sweep_dir, spec.stale_after_s, task_active=task_activity(sweep_dir, record))
    jobs = {job["array_task"]: job["job_id"] for job in record.get("jobs", [])}
    backend = search_backend(record)
    states = backend.job_states(job_records(sweep_dir, record)) if backend is not None else {}
    fail_trials_of_ended_jobs(study, jobs, states, backend)
    rows = []
    for trial in study.get_trials(deepcopy=False):
        task = trial.user_attrs.get("array_task")
        note = trial.user_attrs.get("stale", "")
        if "retry_of" in trial.user_attrs:
            note = f"retry of trial {trial.user_attrs['retry_of']}"
        rows.append(
            TrialRow(
                number=trial.number,
                state=trial.state.name,
                params=dict(trial.params),
                epochs=max(trial.intermediate_values, default=0),
                best=_best_value(trial, maximizes(study)),
                array_task=task,
                job_state=states.get(jobs.get(task, ""), "-"),
                run_dir=trial.user_attrs.get("run_dir"),
                note=note,
            )
        )
    complete = [row for row in rows if row.state == "COMPLETE" and row.best is not None]
    pick = max if maximizes(study) else min
    best = pick(complete, key=lambda row: row.best) if complete else None
    started = {row.array_task for row in rows}
    return rows, best, len([task for task in jobs if task not in started])


def status_lines(sweep_dir: Path) -> list[str]:
    """The text of `zoobot-hpc status` for a search directory."""
    from zoobot_hpc.login.arrays import arrays_line

    rows, best, waiting = collect_trials(sweep_dir)
    header = arrays_line(sweep_dir, "search.json")
    lines = ([header] if header else []) + [row.line() for row in rows]
    if waiting:
        lines.append(f"{waiting} task(s) not started yet")
    lines.append(f"best so far: trial {best.number} best={best.best:.4g} {best.run_dir}" if best else "no trial done")
    return lines


def search_backend(record: dict) -> SchedulerBackend | None:
    """The backend a search's `search.json` names (None: not submitted, or unknown to this version)."""
    try:
        return get_backend(str(record["executor"]))
    except (KeyError, ValueError):
        return None


def job_records(sweep_dir: Path, record: dict) -> list[JobRecord]:
    """The array tasks of a search as the scheduler backend knows them."""
    folder = Path(record.get("submitit_folder") or Path(sweep_dir) / "submitit")
    return [JobRecord(str(job["job_id"]), folder) for job in record.get("jobs", [])]


def cancel_search(sweep_dir: Path) -> list[str]:
    """Cancel the job array of a search (its running trials are failed by the next `status`); returns the ids."""
    from zoobot_hpc.core import run_dir as layout

    record = layout.read_json(Path(sweep_dir) / "search.json") or {}
    backend = search_backend(record)
    if backend is None:
        return []
    return backend.cancel(job_records(sweep_dir, record))
