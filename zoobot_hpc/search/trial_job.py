"""One array task of a search: take this task's trial from the study, train it, report every epoch, end as
COMPLETE, PRUNED or FAIL. A requeued task resumes the same trial (same parameters, same number, the pruner's
history in the study); a heartbeat thread tells the other tasks this trial is alive (launch/search.py)."""

from __future__ import annotations

import copy
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from zoobot_hpc.backends.registry import running_backend
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.config import RunConfig, apply_override
from zoobot_hpc.core.stop_signals import PreemptionFlag
from zoobot_hpc.runtime.node import compute_node_environment, configure_job_logging
from zoobot_hpc.runtime.preemption import run_preemptible
from zoobot_hpc.runtime.stall_watchdog import making_progress
from zoobot_hpc.search.study import (
    TASKS,
    acquire_trial,
    load_study,
    set_trial_attr,
    task_activity,
    trial_by_number,
    trial_run_name,
    write_heartbeat,
)

log = logging.getLogger(__name__)


class Heartbeat:
    """Rewrites the trial's heartbeat file every `interval_s` seconds from a daemon thread until stopped, while the
    main thread makes progress."""

    def __init__(self, sweep_dir: Path, number: int, interval_s: float) -> None:
        self.sweep_dir, self.number, self.interval_s = sweep_dir, number, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="trial-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        write_heartbeat(self.sweep_dir, self.number)
        self._thread.start()
        return self

    def _beat(self) -> None:
        """Beat only while the training makes progress (the stall watchdog's view): a hung trial goes stale."""
        while not self._stop.wait(self.interval_s):
            if making_progress():
                write_heartbeat(self.sweep_dir, self.number)

    def stop(self, state: str) -> None:
        """Stop beating, leaving `state` ('requeued' keeps a preempted trial from looking stale in the queue)."""
        self._stop.set()
        self._thread.join()
        write_heartbeat(self.sweep_dir, self.number, state)


def _segment_token() -> str:
    """Identifies this start of the job, the same on every rank (a requeue changes it)."""
    backend = running_backend()
    if backend is None:
        return ""
    return f"{backend.name}:{backend.job_key() or ''}:{backend.restart_count() or 0}"


def _await_rank0_trial(sweep_dir: Path, task_index: int, timeout_s: float = 600) -> int:
    """On ranks > 0: the trial number rank 0 took for this start of the task."""
    path = sweep_dir / TASKS / f"task-{task_index}.json"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = layout.read_json(path)
        if record and record["segment"] == _segment_token():
            return int(record["trial"])
        time.sleep(0.5)
    raise RuntimeError(f"{path}: rank 0 did not record this task's trial within {timeout_s:.0f} s")


def trial_config(base: dict[str, Any], params: dict[str, Any], name: str) -> RunConfig:
    """The base config with the trial's parameters and its run name."""
    raw = copy.deepcopy(base)
    for key, value in params.items():
        apply_override(raw, key.split("."), value)
    raw["name"] = name
    return RunConfig.model_validate(raw)


def _add_to_summary(run_dir: Path, trial: dict[str, Any]) -> None:
    summary = layout.read_json(run_dir / layout.SUMMARY)
    if summary is not None:
        layout.write_json(run_dir / layout.SUMMARY, {**summary, "trial": trial})


def _this_tasks_trial(
    study: Any, spec: Any, sweep_dir: Path, task_index: int, rank: int, record: dict[str, Any]
) -> Any:
    """Rank 0 takes the task's trial from the study (its own again after a requeue) and records it for this start;
    the other ranks wait for that record. Another task's trial is failed as stale only on the scheduler's word."""
    if rank == 0:
        trial = acquire_trial(study, spec, sweep_dir, task_index, task_active=task_activity(sweep_dir, record))
        (sweep_dir / TASKS).mkdir(exist_ok=True)
        task_file = sweep_dir / TASKS / f"task-{task_index}.json"
        layout.write_json(task_file, {"trial": trial.number, "segment": _segment_token()})
        return trial
    number = _await_rank0_trial(sweep_dir, task_index)
    return trial_by_number(study, number)


def _finish_trial(study: Any, trial: Any, run_dir: Path, *, pruned: bool, heartbeat: Heartbeat) -> None:
    """Tell the study how the trial ended (PRUNED, COMPLETE with its best metric, or FAIL without one)."""
    best = (layout.read_json(run_dir / layout.SUMMARY) or {}).get("best")
    if pruned:
        state = study.tell(trial.number, state=_states().PRUNED).state
    elif best is not None:
        state = study.tell(trial.number, best).state
    else:
        state = study.tell(trial.number, state=_states().FAIL).state
    heartbeat.stop(state.name.lower())
    _add_to_summary(run_dir, {"number": trial.number, "state": state.name, "params": trial.params})
    log.info("trial %d ended as %s", trial.number, state.name)


@dataclass
class TrialOutcome:
    """How this start of an array task ended (`preempted`: stopped on a signal with its checkpoint written)."""

    preempted: bool
    metrics: dict[str, float]


@dataclass
class TrialJob(submitit.helpers.Checkpointable):
    """Array task `task_index` of the search in `sweep_dir`, training on top of the `base` config."""

    base: dict[str, Any]
    sweep_dir: str
    task_index: int

    def __call__(self) -> dict[str, float]:
        return run_preemptible(self._run_trial, submitted=True).metrics

    def _run_trial(self, flag: PreemptionFlag) -> TrialOutcome:
        configure_job_logging()
        compute_node_environment()
        from zoobot_hpc.runtime.environment import SubmititEnvironment
        from zoobot_hpc.search.reporter import TrialReporter
        from zoobot_hpc.training.run import run_training

        environment = SubmititEnvironment()
        rank = environment.global_rank()
        sweep_dir = Path(self.sweep_dir)
        from zoobot_hpc.core.kept_config import with_kept_values

        base = with_kept_values(self.base, sweep_dir / layout.CONFIG)
        max_epochs = int(base["trainer"]["max_epochs"])
        study, spec, record = load_study(sweep_dir, self.task_index, max_epochs)
        trial = _this_tasks_trial(study, spec, sweep_dir, self.task_index, rank, record)
        if trial.state.is_finished():
            log.info("trial %d of task %d already ended as %s", trial.number, self.task_index, trial.state.name)
            return TrialOutcome(preempted=False, metrics={})
        name = trial.user_attrs.get("run_dir") or trial_run_name(trial.number, trial.params)  # a retry: its own
        run_dir = sweep_dir / name
        if rank == 0:
            set_trial_attr(study, trial, "run_dir", name)
            log.info("task %d: trial %d %s", self.task_index, trial.number, trial.params)
        config = trial_config(base, trial.params, name)
        reporter = TrialReporter(study, trial, monitor=config.monitored[0])
        heartbeat = Heartbeat(sweep_dir, trial.number, spec.heartbeat_s).start() if rank == 0 else None
        try:
            outcome = run_training(
                config,
                run_dir,
                flag=flag,
                cluster_environment=environment,
                group=record["study"],
                interactive=False,
                extra_callbacks=[reporter],
                tracked_params=trial.params,
            )
        except BaseException:
            if heartbeat is not None:
                heartbeat.stop("failed")
                study.tell(trial.number, state=_states().FAIL)
                log.exception("trial %d failed", trial.number)
            raise
        if outcome.preempted:
            if heartbeat is not None:
                heartbeat.stop("requeued")
            return TrialOutcome(preempted=True, metrics=outcome.metrics)
        if heartbeat is not None:
            _finish_trial(study, trial, run_dir, pruned=reporter.pruned, heartbeat=heartbeat)
        return TrialOutcome(preempted=False, metrics=outcome.metrics)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """The requeued task is this same task: it finds its trial again in the study."""
        return submitit.helpers.DelayedSubmission(self)


def _states() -> Any:
    import optuna

    return optuna.trial.TrialState
