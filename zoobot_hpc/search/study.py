"""Hyper-parameter search with Optuna over the shared filesystem: the search file, the study, trials and heartbeats.

A search file (`configs/searches/*.yaml`):

```yaml
trials: 24
parallel: 6                             # array tasks at once (%6)
sampler: tpe                            # tpe | random | grid
pruner: {kind: asha, min_epochs: 2}     # asha | hyperband | median | none
parameters:
  model.learning_rate: {loguniform: [1.0e-5, 1.0e-3]}
  model.layer_decay: {uniform: [0.5, 0.9]}
  model.head_dropout_prob: {choice: [0.2, 0.35, 0.5]}
```

The study lives in `SWEEP_DIR/study.journal` (Optuna's journal file storage: appends under a lock file that only its
owner releases, `journal_lock`, which works on NFS and Lustre without a database server) unless `storage:` names an
Optuna storage URL. Array task `i` owns one trial, found again by its `array_task` user attribute when the task is
requeued. Journal storage has no heartbeat of its own, so each running trial's task rewrites
`SWEEP_DIR/heartbeats/trial-N.json`; a RUNNING trial whose heartbeat is older than the grace period is failed (and
retried with the same parameters if its task ever starts again). Steps reported to the pruner are epochs completed
(1, 2, ...).

Login-node module: Optuna is imported inside functions (it is the optional `search` extra), torch never.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.config import ConfigError, load_yaml
from zoobot_hpc.login.sweep import run_name

SEARCH = layout.SEARCH
DIRECTIONS = {"min": "minimize", "max": "maximize"}  # a metric's mode -> Optuna's study direction
STORAGE_ENV = "ZOOBOT_HPC_SEARCH_STORAGE"  # the storage URL as given, for tasks and `status` (search.json: redacted)
JOURNAL = "study.journal"
HEARTBEATS = "heartbeats"
TASKS = "tasks"
PARAMETER_KINDS = ("loguniform", "uniform", "int", "choice")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("asha", "hyperband", "median", "none")
FINAL_STATES = ("COMPLETE", "PRUNED", "FAIL")


def require_optuna() -> Any:
    """The optuna module, or a one-line error naming the extra to install."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("hyper-parameter search needs Optuna: pip install 'zoobot-hpc[search]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclass
class Parameter:
    """One searched config key and its range: `loguniform`/`uniform` [low, high], `int` [low, high], `choice`."""

    key: str
    kind: str
    values: list[Any]

    def distribution(self) -> Any:
        distributions = require_optuna().distributions
        if self.kind == "choice":
            return distributions.CategoricalDistribution(self.values)
        low, high = self.values
        if self.kind == "int":
            return distributions.IntDistribution(int(low), int(high))
        return distributions.FloatDistribution(float(low), float(high), log=self.kind == "loguniform")

    def grid_values(self) -> list[Any]:
        if self.kind == "choice":
            return list(self.values)
        if self.kind == "int":
            return list(range(int(self.values[0]), int(self.values[1]) + 1))
        raise ConfigError(f"parameters.{self.key}: sampler 'grid' needs `choice` or `int` values, not {self.kind}")

    def example(self) -> Any:
        """A value inside the range, to check that the key exists in the config."""
        if self.kind == "choice":
            return self.values[0]
        low, high = self.values
        if self.kind == "int":
            return int(low)
        return math.sqrt(low * high) if self.kind == "loguniform" else (low + high) / 2


@dataclass
class SearchSpec:
    """What a search file asks for."""

    parameters: list[Parameter]
    trials: int
    parallel: int
    sampler: str = "tpe"
    seed: int = 0
    pruner: str = "asha"
    min_epochs: int = 1
    reduction_factor: int = 3
    storage: str | None = None
    metric: str | None = None  # the validation metric to optimise (None: the model kind's monitored one)
    direction: str | None = None  # minimize | maximize; must agree with the metric's own direction
    heartbeat_s: float = 60.0
    stale_after_s: float = 600.0
    source: str = "search"
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def distributions(self) -> dict[str, Any]:
        return {p.key: p.distribution() for p in self.parameters}

    def grid_size(self) -> int:
        return math.prod(len(p.grid_values()) for p in self.parameters)


def _parameter(source: str, key: str, spec: Any) -> Parameter:
    where = f"{source}: parameters.{key}"
    if key.startswith("resources."):
        raise ConfigError(f"{where}: a search is one job array with one set of resources; search other keys")
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in PARAMETER_KINDS:
        raise ConfigError(f"{where}: expected one of {{{', '.join(k + ': ...' for k in PARAMETER_KINDS)}}}")
    kind, values = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: choice must be a non-empty list (got {values!r})")
        return Parameter(key, kind, values)
    if not (isinstance(values, list) and len(values) == 2 and all(isinstance(v, int | float) for v in values)):
        raise ConfigError(f"{where}: {kind} must be [low, high] numbers (got {values!r})")
    low, high = values
    if not low < high:
        raise ConfigError(f"{where}: {kind} needs low < high (got {values!r})")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0 (got {low!r})")
    if kind == "int" and not all(float(v).is_integer() for v in values):
        raise ConfigError(f"{where}: int bounds must be whole numbers (got {values!r})")
    return Parameter(key, kind, [low, high])


def parse_search(raw: dict[str, Any], source: str = "search") -> SearchSpec:
    """Validate a search file's mapping; every problem is a one-line ConfigError naming the key."""
    allowed = {
        "trials",
        "parallel",
        "sampler",
        "seed",
        "pruner",
        "parameters",
        "storage",
        "heartbeat",
        "metric",
        "direction",
    }
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} (expected one of {sorted(allowed)})")
    parameters = raw.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise ConfigError(f"{source}: 'parameters' must map dotted config keys to ranges")
    trials, parallel = raw.get("trials"), raw.get("parallel", raw.get("trials"))
    for key, value in (("trials", trials), ("parallel", parallel)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{source}: {key} must be a positive whole number (got {value!r})")
    sampler = raw.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise ConfigError(f"{source}: sampler {sampler!r} is not one of {list(SAMPLERS)}")
    pruner = raw.get("pruner", {"kind": "asha"})
    pruner = {"kind": pruner} if isinstance(pruner, str) else pruner
    if not isinstance(pruner, dict) or pruner.get("kind") not in PRUNERS:
        raise ConfigError(f"{source}: pruner.kind must be one of {list(PRUNERS)} (got {pruner!r})")
    unknown_pruner = sorted(set(pruner) - {"kind", "min_epochs", "reduction_factor"})
    if unknown_pruner:
        raise ConfigError(f"{source}: unknown key 'pruner.{unknown_pruner[0]}'")
    direction = raw.get("direction")
    if direction not in (None, *DIRECTIONS.values()):
        raise ConfigError(f"{source}: direction must be one of {sorted(DIRECTIONS.values())} (got {direction!r})")
    metric = raw.get("metric")
    if metric is not None and not isinstance(metric, str):
        raise ConfigError(f"{source}: metric must be a logged metric's name, e.g. validation/accuracy")
    heartbeat = raw.get("heartbeat") or {}
    if not isinstance(heartbeat, dict) or set(heartbeat) - {"interval_s", "stale_after_s"}:
        raise ConfigError(f"{source}: heartbeat takes interval_s and stale_after_s (got {heartbeat!r})")
    spec = SearchSpec(
        parameters=[_parameter(source, key, value) for key, value in parameters.items()],
        trials=trials,
        parallel=min(parallel, trials),
        sampler=sampler,
        seed=int(raw.get("seed", 0)),
        pruner=pruner["kind"],
        min_epochs=int(pruner.get("min_epochs", 1)),
        reduction_factor=int(pruner.get("reduction_factor", 3)),
        storage=raw.get("storage"),
        metric=metric,
        direction=direction,
        heartbeat_s=float(heartbeat.get("interval_s", 60)),
        stale_after_s=float(heartbeat.get("stale_after_s", 600)),
        source=source,
        raw=raw,
    )
    if spec.min_epochs < 1 or spec.reduction_factor < 2:
        raise ConfigError(f"{source}: pruner needs min_epochs >= 1 and reduction_factor >= 2 (got {pruner!r})")
    if spec.stale_after_s <= 2 * spec.heartbeat_s:
        raise ConfigError(f"{source}: heartbeat.stale_after_s must exceed twice heartbeat.interval_s")
    if sampler == "grid" and spec.trials > spec.grid_size():
        raise ConfigError(f"{source}: trials={spec.trials} but the grid has only {spec.grid_size()} points")
    return spec


def load_search(path: str | Path) -> SearchSpec:
    """Read and validate a search file."""
    return parse_search(load_yaml(path), source=str(path))


def make_sampler(spec: SearchSpec, task_index: int = 0) -> Any:
    """The spec's sampler; each array task seeds TPE / random its own way, so tasks starting together do not draw
    alike (the grid sampler assigns points by trial number instead)."""
    samplers = require_optuna().samplers
    seed = spec.seed + task_index
    if spec.sampler == "random":
        return samplers.RandomSampler(seed=seed)
    if spec.sampler == "grid":  # one seed for all: it shuffles the grid, and grid_id i must mean one point
        return samplers.GridSampler({p.key: p.grid_values() for p in spec.parameters}, seed=spec.seed)
    return samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=min(10, max(spec.parallel, 2)))


def make_pruner(spec: SearchSpec, max_epochs: int) -> Any:
    """The spec's pruner, in epochs completed."""
    pruners = require_optuna().pruners
    if spec.pruner == "asha":
        return pruners.SuccessiveHalvingPruner(min_resource=spec.min_epochs, reduction_factor=spec.reduction_factor)
    if spec.pruner == "hyperband":
        return pruners.HyperbandPruner(
            min_resource=spec.min_epochs, max_resource=max_epochs, reduction_factor=spec.reduction_factor
        )
    if spec.pruner == "median":
        return pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=spec.min_epochs)
    return pruners.NopPruner()


def open_storage(sweep_dir: Path, storage: str | None = None) -> Any:
    """An Optuna storage URL as given, else journal file storage in the sweep dir (O_EXCL lock file: NFSv3+).

    A URL read back from `search.json` has its password redacted: the real one comes from `ZOOBOT_HPC_SEARCH_STORAGE`
    (the array tasks get it from their sbatch script's set-up; export it yourself for `status`)."""
    optuna = require_optuna()
    if storage:
        from zoobot_hpc.core.redaction import REDACTED, URL_PASSWORD, redact_text

        given = os.environ.get(STORAGE_ENV)
        if given and redact_text(given) == redact_text(storage):
            return given
        if f":{URL_PASSWORD}@" in storage or REDACTED in storage:
            raise ConfigError(
                f"storage {redact_text(storage)}: its password is not recorded; export {STORAGE_ENV}=URL "
                "(or keep the password in the database's own file, e.g. ~/.pgpass)"
            )
        return storage
    from zoobot_hpc.search.journal_lock import CheckedJournalBackend, OwnedJournalLock

    path = str(Path(sweep_dir) / JOURNAL)
    return optuna.storages.JournalStorage(CheckedJournalBackend(path, lock_obj=OwnedJournalLock(path)))


def create_study(sweep_dir: Path, spec: SearchSpec, name: str, direction: str, metric: str) -> Any:
    """Create the search's study (once, at submit), optimising `metric` in `direction`."""
    optuna = require_optuna()
    study = optuna.create_study(
        study_name=name, storage=open_storage(sweep_dir, spec.storage), direction=direction, load_if_exists=False
    )
    study.set_user_attr("metric", metric)
    return study


def load_study(sweep_dir: Path, task_index: int = 0, max_epochs: int = 1) -> tuple[Any, SearchSpec, dict[str, Any]]:
    """The study of a search dir with the spec's sampler and pruner, the spec, and `search.json`."""
    record = layout.read_json(Path(sweep_dir) / SEARCH)
    if record is None:
        raise ValueError(f"{sweep_dir}: not a search directory (no {SEARCH})")
    spec = parse_search(record["spec"], source=str(Path(sweep_dir) / SEARCH))
    optuna = require_optuna()
    study = optuna.load_study(
        study_name=record["study"],
        storage=open_storage(sweep_dir, spec.storage),
        sampler=make_sampler(spec, task_index),
        pruner=make_pruner(spec, max_epochs),
    )
    return study, spec, record


def is_search_dir(path: Path) -> bool:
    return (Path(path) / SEARCH).exists()


def trial_run_name(number: int, params: dict[str, Any]) -> str:
    """A trial's run directory name: its number, then its parameters as grid runs are named."""
    return f"trial{number:03d}-{run_name(params)}"


# --- heartbeats and stale trials ---------------------------------------------------------------------------------


def heartbeat_path(sweep_dir: Path, number: int) -> Path:
    return Path(sweep_dir) / HEARTBEATS / f"trial-{number}.json"


def write_heartbeat(sweep_dir: Path, number: int, state: str = "running") -> None:
    """Record that trial `number`'s task is alive (`running`) or waiting in the queue after a requeue."""
    path = heartbeat_path(sweep_dir, number)
    path.parent.mkdir(parents=True, exist_ok=True)
    layout.write_json(path, {"state": state, "time": time.time()})


def last_heartbeat(sweep_dir: Path, trial: Any) -> tuple[str, float]:
    """(state, time) of a trial's latest heartbeat; its start time when its task never wrote one."""
    beat = layout.read_json(heartbeat_path(sweep_dir, trial.number))
    if beat is not None:
        return beat["state"], float(beat["time"])
    started = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
    return "running", started


def task_activity(sweep_dir: Path, record: dict[str, Any]) -> Callable[[int], bool | None] | None:
    """Whether the search's scheduler (`search.json`'s record) says array task `i` is queued, running or
    requeued: True / False, None when it cannot say. The scheduler is asked once, when a trial's heartbeat is first
    found stale. None when the search names no backend this version knows."""
    from zoobot_hpc.backends.base import JobRecord, Phase
    from zoobot_hpc.backends.registry import get_backend

    try:
        backend = get_backend(str(record["executor"]))
    except (KeyError, ValueError):
        return None
    folder = Path(record.get("submitit_folder") or Path(sweep_dir) / "submitit")
    jobs = {job["array_task"]: JobRecord(str(job["job_id"]), folder) for job in record.get("jobs", [])}
    states: list[dict[str, str]] = []

    def active(task: int) -> bool | None:
        job = jobs.get(task)
        if job is None:
            return None
        if not states:
            states.append(backend.job_states(list(jobs.values())))
        phase = backend.phase(states[0].get(job.job_id, "UNKNOWN"))
        return None if phase is Phase.UNKNOWN else phase is Phase.ACTIVE

    return active


def fail_stale_trials(
    study: Any,
    sweep_dir: Path,
    stale_after_s: float,
    now: float | None = None,
    task_active: Callable[[int], bool | None] | None = None,
) -> list[int]:
    """Mark FAIL every RUNNING trial whose task has not beaten for `stale_after_s` (killed without a word), unless
    the scheduler says its task is pending, requeued or running (`task_active`: a task requeued after its node
    died waits in the queue without a heartbeat). Where the scheduler cannot say (None), a SLURM search's trial is
    left alone; trials waiting in the queue after a preemption are left alone. Returns the numbers failed."""
    optuna = require_optuna()
    now = time.time() if now is None else now
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        state, beat = last_heartbeat(sweep_dir, trial)
        if state != "running" or now - beat < stale_after_s:
            continue
        if task_active is not None and task_active(trial.user_attrs.get("array_task")) is not False:
            continue
        try:
            fail_trial(study, trial, f"no heartbeat for {now - beat:.0f} s")
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        failed.append(trial.number)
    return failed


# --- the study adapter: the one place that reaches into Optuna's storage -----------------------------------------
# A trial of an array task is told apart by its number, and its attributes and state are set by another process
# than the one that asked for it; Optuna's public API covers neither, so these use `study._storage`.


def trial_by_number(study: Any, number: int) -> Any:
    """The (frozen) trial `number` of the study, fresh from its storage."""
    storage = study._storage
    return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study._study_id, number))


def set_trial_attr(study: Any, trial: Any, key: str, value: Any) -> None:
    """Set a user attribute of any trial of the study (not only one this process asked for)."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def fail_trial(study: Any, trial: Any, why: str) -> None:
    """Mark a RUNNING trial FAIL, recording why in its `stale` attribute."""
    optuna = require_optuna()
    set_trial_attr(study, trial, "stale", why)
    study._storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)


def retry_trial(study: Any, trial: Any, task_index: int) -> int:
    """A new RUNNING trial with the parameters of `trial` (failed as stale), owned by array task `task_index`, that
    trains in `trial`'s run directory (so it resumes from that trial's newest checkpoint)."""
    optuna = require_optuna()
    template = optuna.trial.create_trial(
        state=optuna.trial.TrialState.RUNNING,
        params=trial.params,
        distributions=trial.distributions,
        user_attrs={
            "array_task": task_index,
            "retry_of": trial.number,
            "run_dir": trial.user_attrs.get("run_dir") or trial_run_name(trial.number, trial.params),
        },
    )
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    return int(study._storage.get_trial_number_from_id(trial_id))


def reporting_trial(study: Any, trial: Any) -> Any:
    """An `optuna.trial.Trial` of a trial this process did not ask for (to report and ask the pruner)."""
    optuna = require_optuna()
    return optuna.trial.Trial(study, trial._trial_id)


# --- array task -> trial -----------------------------------------------------------------------------------------


def task_trials(study: Any, task_index: int) -> list[Any]:
    """Every trial array task `task_index` has owned, oldest first."""
    return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("array_task") == task_index]


def acquire_trial(
    study: Any,
    spec: SearchSpec,
    sweep_dir: Path,
    task_index: int,
    task_active: Callable[[int], bool | None] | None = None,
) -> Any:
    """The trial array task `task_index` trains: its own unfinished one (a requeued task resumes it), a retry
    with the same parameters when its trial was failed as stale (in the stale trial's run directory, so that it
    resumes from its newest checkpoint), or a new one from the sampler. `task_active`: see `fail_stale_trials`."""
    optuna = require_optuna()
    running = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    owned = task_trials(study, task_index)
    latest = owned[-1] if owned else None
    if latest is not None and latest.state in running:
        write_heartbeat(sweep_dir, latest.number)
        fail_stale_trials(study, sweep_dir, spec.stale_after_s, task_active=task_active)
        return latest
    fail_stale_trials(study, sweep_dir, spec.stale_after_s, task_active=task_active)
    if latest is not None and "stale" not in latest.user_attrs:
        return latest
    if latest is not None:
        number = retry_trial(study, latest, task_index)
    else:
        trial = study.ask(spec.distributions)
        set_trial_attr(study, trial, "array_task", task_index)
        number = trial.number
    write_heartbeat(sweep_dir, number)
    return trial_by_number(study, number)
