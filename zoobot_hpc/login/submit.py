"""`zoobot-hpc submit`: expand a config into runs, check everything on the login node, submit one job or the job
arrays of a sweep (several where the sweep outgrows the scheduler's MaxArraySize: `zoobot_hpc.login.arrays`)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import submitit

from zoobot_hpc.backends.base import Phase
from zoobot_hpc.backends.job_setup import protect_submission_files
from zoobot_hpc.backends.registry import BACKENDS, get_backend
from zoobot_hpc.core import atomic
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.config import (
    ConfigError,
    RunConfig,
    apply_override,
    build_config,
    dump_config,
    load_config,
    load_yaml,
)
from zoobot_hpc.core.redaction import literal_secret, redact_config, redact_text, redact_value
from zoobot_hpc.login.arrays import ArrayPart, describe_arrays, plan_arrays, submit_arrays
from zoobot_hpc.login.preflight import PreflightError, check_run_dir, preflight, resolve_executor
from zoobot_hpc.login.save_time import preemption_warnings, save_time_needed
from zoobot_hpc.login.status import active_job
from zoobot_hpc.login.sweep import Point, expand_points, load_grid, parse_overrides, run_name
from zoobot_hpc.training.job import TrainingJob


@dataclass
class PlannedRun:
    name: str
    point: Point
    config: RunConfig
    run_dir: Path


@dataclass
class Plan:
    """What a submit would do: the runs, where they go, and which executor runs them."""

    runs: list[PlannedRun]
    executor: str
    base_dir: Path
    sweep_name: str | None
    source: str
    overrides: list[str] = field(default_factory=list)
    grid_file: str | None = None
    resumed: bool = False
    arrays: list[ArrayPart] = field(default_factory=list)  # set by check_plan

    @property
    def submitit_dir(self) -> Path:
        return self.base_dir / "submitit"


def plan_runs(
    config_path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    grid_file: str | Path | None = None,
    sweep_name: str | None = None,
) -> Plan:
    """Expand overrides and grid into validated run configs with their run directories (nothing is written)."""
    raw = load_yaml(config_path)
    fixed, swept = parse_overrides(overrides)
    for key, value in fixed.items():
        apply_override(raw, key.split("."), value)
    axes, include = load_grid(grid_file) if grid_file else ({}, [])
    overlap = set(axes) & set(swept)
    if overlap:
        raise ConfigError(f"{sorted(overlap)[0]} is swept both on the command line and in {grid_file}")
    points = expand_points({**axes, **swept}, include)
    resource_keys = sorted({key for point in points for key in point if key.startswith("resources.")})
    if resource_keys:
        raise ConfigError(f"{resource_keys[0]}: a sweep is one job array with one set of resources; submit separately")
    base = build_config(raw, source=str(config_path))
    is_sweep = len(points) > 1 or bool(grid_file)
    sweep = (sweep_name or f"{base.name}-{time.strftime('%Y%m%d-%H%M%S')}") if is_sweep else None
    base_dir = base.output_dir / (sweep or base.name)

    runs: list[PlannedRun] = []
    names: set[str] = set()
    for index, point in enumerate(points):
        name = run_name(point) if is_sweep else base.name
        if name in names:
            name = f"{name}-{index}"
        names.add(name)
        point_raw = copy.deepcopy(raw)
        for key, value in point.items():
            apply_override(point_raw, key.split("."), value)
        point_raw["name"] = name
        where = f"{config_path} [{name}]" if is_sweep else str(config_path)
        config = build_config(point_raw, source=where)
        runs.append(PlannedRun(name, point, config, base_dir / name if is_sweep else base_dir))
    return Plan(
        runs=runs,
        executor=resolve_executor(base),
        base_dir=base_dir,
        sweep_name=sweep,
        source=str(config_path),
        overrides=list(overrides),
        grid_file=str(grid_file) if grid_file else None,
    )


def plan_resume(run_dir: str | Path) -> Plan:
    """`zoobot-hpc resume RUN_DIR`: submit a stopped run again (cancelled, out of time-limit requeues, or on a
    cluster whose preemption cancels); its job resumes from the newest valid checkpoint in RUN_DIR."""
    from zoobot_hpc.login.status import backend_of, collect_status

    run_dir = Path(run_dir).resolve()
    if not (run_dir / layout.CONFIG).exists():
        raise ConfigError(f"{run_dir}: not a run directory (no {layout.CONFIG})")
    if (run_dir / layout.SUMMARY).exists():
        raise ConfigError(f"{run_dir}: the run has finished ({layout.SUMMARY}); nothing to resume")
    [status] = collect_status(run_dir)
    backend = backend_of(layout.read_json(run_dir / layout.SUBMISSION) or {})
    if backend is not None and backend.phase(status.state) is Phase.ACTIVE:
        raise ConfigError(
            f"{run_dir}: its {backend.name} job {status.job_id} is {status.state}; it resumes by itself (or cancel it)"
        )
    config = load_config(run_dir / layout.CONFIG)
    sweep = (layout.read_json(run_dir / layout.SUBMISSION) or {}).get("sweep")
    return Plan(
        runs=[PlannedRun(run_dir.name, {}, config, run_dir)],
        executor=resolve_executor(config),
        base_dir=run_dir.parent if sweep else run_dir,
        sweep_name=sweep,
        source=str(run_dir / layout.CONFIG),
        resumed=True,
    )


def job_script_text(config: RunConfig, executor: str, folder: Path, job_name: str, array_size: int, **kw) -> str:
    """The job script the scheduler receives, headed by its backend's name, for --dry-run: the chosen backend's,
    or under `executor: auto` the first backend's that takes one (what a submit on its cluster would send)."""
    names = [executor] if config.resources.executor == executor else list(BACKENDS)
    for name in names:
        script = get_backend(name).job_script(config, folder, job_name, array_size, **kw)
        if script is not None:
            return f"# --- {name} job script\n{script}"
    return ""


def describe_plan(plan: Plan) -> str:
    """The resolved config(s) and the job script, for --dry-run."""
    parts = [f"# executor: {plan.executor}; {len(plan.runs)} run(s) under {plan.base_dir}"]
    for run in plan.runs:
        parts.append(f"# --- run {run.name}: {run.run_dir}\n{dump_config(redact_config(run.config))}")
    job_name = plan.sweep_name or plan.runs[0].config.name
    config = redact_config(plan.runs[0].config)
    if len(plan.runs) > 1:
        parts.append(describe_arrays(*plan_arrays(get_backend(plan.executor), len(plan.runs), parallelism(plan))))
    parts.append(job_script_text(config, plan.executor, plan.submitit_dir, job_name, len(plan.runs)))
    return redact_text("\n".join(part for part in parts if part))


def secret_warnings(config: RunConfig) -> list[str]:
    """One line when setup lines or sbatch_extra write a secret out literally, saying how to keep it out of files."""
    where = [f"resources.setup[{i}]" for i, line in enumerate(config.resources.setup) if literal_secret(line)]
    where += [
        f"resources.sbatch_extra.{name}"
        for name, value in config.resources.sbatch_extra.items()
        if isinstance(value, str) and (literal_secret(f"{name}={value}") or literal_secret(value))
    ]
    if not where:
        return []
    return [
        f"{', '.join(where)} holds a literal secret: it stays only in the run's config.yaml and the job script "
        "(both 0600), but keep it out of files: export it before submitting (the job inherits your environment) "
        "or read it from a file in your home directory (export HF_TOKEN=$(cat ~/.hf_token))"
    ]


def submit_warnings(plan: Plan) -> list[str]:
    """Login-node warnings that do not stop a submit: a secret written out in a setup line, whether a checkpoint
    fits in the signal delay and in the partition's preemption grace time, and whether a preempted run comes
    back by itself."""
    config = plan.runs[0].config
    partition = get_backend(plan.executor).partition(config.resources.partition)
    need, source = save_time_needed([run.run_dir for run in plan.runs])
    return secret_warnings(config) + preemption_warnings(partition, config, need, source, plan.base_dir)


@dataclass
class Submission:
    plan: Plan
    jobs: list[submitit.Job]

    def log_paths(self) -> list[Path]:
        return [job.paths.stdout for job in self.jobs]


def check_plan(plan: Plan, allow_download: bool = True, dry_run: bool = False) -> list[str]:
    """Every login-node check of a submit (`preflight`, and each run dir against its config); raises
    PreflightError or DatasetError on the first problem, returns warnings. A dry run creates nothing."""
    configs = [run.config for run in plan.runs]
    warnings = preflight(configs, plan.executor, plan.base_dir, allow_download=allow_download, dry_run=dry_run)
    plan.arrays, _ = plan_arrays(get_backend(plan.executor), len(plan.runs), parallelism(plan))
    for run in plan.runs:
        run.config = check_run_dir(run.config, run.run_dir)
        refuse_active_run(run.run_dir)
    return warnings


def parallelism(plan: Plan) -> int:
    """How many of the plan's runs may run at once (`resources.array_parallelism`, one value for the sweep)."""
    return plan.runs[0].config.resources.array_parallelism


def refuse_active_run(run_dir: Path) -> None:
    """One run, one job: a PreflightError (one line naming it) when the run's job is queued, running or requeued."""
    job = active_job(run_dir)
    if job is not None:
        raise PreflightError(
            f"{run_dir}: its {job} is queued, running or requeued: one run directory, one job "
            f"(wait for it, or `zoobot-hpc cancel {run_dir}`)"
        )


def submit_plan(plan: Plan, allow_download: bool = True) -> Submission:
    """Check everything, then submit the plan's runs: one job, or one job array. Returns without waiting."""
    check_plan(plan, allow_download)
    for run in plan.runs:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(run.run_dir / layout.CONFIG, dump_config(run.config), mode=atomic.OWNER_ONLY)
    job_name = plan.sweep_name or plan.runs[0].config.name
    atomic.private_directory(plan.submitit_dir)
    backend = get_backend(plan.executor)
    executor = backend.make_executor(plan.runs[0].config, plan.submitit_dir, job_name)
    calls = [
        TrainingJob(redact_config(run.config).model_dump(mode="json"), str(run.run_dir.resolve()), plan.sweep_name)
        for run in plan.runs
    ]
    jobs, arrays = submit_arrays(backend, executor, calls, plan.arrays)
    protect_submission_files(plan.submitit_dir)
    submitted = time.time()
    for run, job in zip(plan.runs, jobs, strict=True):
        layout.write_json(
            run.run_dir / layout.SUBMISSION,
            {
                "executor": plan.executor,
                "job_id": job.job_id,
                "submitit_folder": str(plan.submitit_dir.resolve()),
                "stdout": str(job.paths.stdout),
                "stderr": str(job.paths.stderr),
                "process_start": None,
                **backend.submitted_job_record(job.job_id),
                "point": redact_value(run.point),
                "sweep": plan.sweep_name,
                "submitted": submitted,
            },
        )
    if plan.sweep_name and not plan.resumed:
        layout.write_json(
            plan.base_dir / layout.SWEEP,
            {
                "sweep": plan.sweep_name,
                "source": plan.source,
                "overrides": [redact_text(text) for text in plan.overrides],
                "grid_file": plan.grid_file,
                "executor": plan.executor,
                "submitted": submitted,
                "arrays": arrays,
                "runs": [
                    {"name": r.name, "point": redact_value(r.point), "run_dir": str(r.run_dir), "job_id": j.job_id}
                    for r, j in zip(plan.runs, jobs, strict=True)
                ],
            },
        )
    return Submission(plan, jobs)
