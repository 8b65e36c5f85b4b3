"""`zoobot-hpc submit CONFIG --search SEARCH.yaml`: check a search on the login node, create its study, submit
`trials` tasks, `parallel` at a time, as one job array (several where `trials` outgrows the scheduler's
MaxArraySize: `zoobot_hpc.login.arrays`); each task asks the study for its trial (search/trial_job.py)."""

from __future__ import annotations

import copy
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoobot_hpc.core import atomic
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.config import ConfigError, RunConfig, apply_override, build_config, dump_config, load_yaml
from zoobot_hpc.core.redaction import literal_secret, redact_config, redact_text, redact_value
from zoobot_hpc.login.sweep import parse_overrides
from zoobot_hpc.search.study import (
    DIRECTIONS,
    SEARCH,
    STORAGE_ENV,
    SearchSpec,
    create_study,
    load_search,
    require_optuna,
)


@dataclass
class SearchPlan:
    """What a search submit would do."""

    spec: SearchSpec
    config: RunConfig
    raw: dict[str, Any]
    executor: str
    base_dir: Path
    sweep_name: str
    source: str
    overrides: list[str]

    @property
    def metric(self) -> str:
        return self.config.monitored[0]

    @property
    def direction(self) -> str:
        """Optuna's study direction: the direction the optimised metric improves in."""
        return DIRECTIONS[self.config.monitored[1]]

    @property
    def submitit_dir(self) -> Path:
        return self.base_dir / "submitit"


def plan_search(
    config_path: str | Path,
    overrides: list[str] | tuple[str, ...],
    search_file: str | Path,
    sweep_name: str | None = None,
) -> SearchPlan:
    """Validate the config, the search file and every searched key against the config (nothing is written)."""
    from zoobot_hpc.backends.registry import resolve_backend

    spec = load_search(search_file)
    require_optuna()
    raw = load_yaml(config_path)
    fixed, swept = parse_overrides(overrides)
    if swept:
        raise ConfigError(f"{sorted(swept)[0]}: a search samples its parameters; put ranges in {search_file}")
    for key, value in fixed.items():
        apply_override(raw, key.split("."), value)
    for parameter in spec.parameters:
        trial_raw = copy.deepcopy(raw)
        apply_override(trial_raw, parameter.key.split("."), parameter.example())
        build_config(trial_raw, source=f"{search_file}: parameters.{parameter.key}")
    raw.setdefault("resources", {})["array_parallelism"] = spec.parallel
    if spec.metric:  # every trial monitors the searched metric: its best checkpoint and summary follow it
        raw.setdefault("trainer", {})["monitor"] = spec.metric
    config = build_config(raw, source=str(config_path))
    metric, mode = config.monitored
    if spec.direction and spec.direction != DIRECTIONS[mode]:
        raise ConfigError(
            f"{search_file}: direction={spec.direction} but {metric} improves by {DIRECTIONS[mode][:-1]}ing; "
            "drop direction or search another metric"
        )
    name = sweep_name or f"{config.name}-search-{time.strftime('%Y%m%d-%H%M%S')}"
    return SearchPlan(
        spec=spec,
        config=config,
        raw=raw,
        executor=resolve_backend(config.resources.executor),
        base_dir=config.output_dir / name,
        sweep_name=name,
        source=str(config_path),
        overrides=list(overrides),
    )


def describe_search(plan: SearchPlan) -> str:
    """The search, the base config and the one job array's script, for --dry-run."""
    from zoobot_hpc.backends.registry import get_backend
    from zoobot_hpc.login.arrays import describe_arrays, plan_arrays
    from zoobot_hpc.login.submit import job_script_text

    spec = plan.spec
    hidden = redact_config(plan.config)
    lines = [
        f"# search {plan.sweep_name}: {spec.trials} trials, {spec.parallel} at a time, sampler {spec.sampler}, "
        f"pruner {spec.pruner} (min_epochs {spec.min_epochs}), executor {plan.executor}",
        f"# objective: {plan.direction} {plan.metric}",
        f"# study: {spec.storage or plan.base_dir / 'study.journal'}",
        describe_arrays(*plan_arrays(get_backend(plan.executor), spec.trials, spec.parallel)),
    ]
    lines += [f"#   {p.key}: {p.kind} {p.values}" for p in spec.parameters]
    lines.append(f"# --- base config (each trial overrides the keys above)\n{dump_config(hidden)}")
    lines.append(
        job_script_text(
            hidden, plan.executor, plan.submitit_dir, plan.sweep_name, spec.trials, extra_setup=storage_setup(spec)
        )
    )
    return redact_text("\n".join(lines))


def storage_setup(spec: SearchSpec) -> list[str]:
    """The set-up line that hands a `storage:` URL to the array tasks through their environment: the URL (and
    any password in it) stays in the job script, while `search.json` and the pickled tasks hold it redacted."""
    return [f"export {STORAGE_ENV}={shlex.quote(spec.storage)}"] if spec.storage else []


def search_warnings(plan: SearchPlan) -> list[str]:
    """One-line warnings of a search submit: secrets written out in setup lines or in the storage URL."""
    from zoobot_hpc.login.submit import secret_warnings

    warnings = secret_warnings(plan.config)
    if plan.spec.storage and literal_secret(plan.spec.storage):
        warnings.append(
            f"{plan.spec.source}: storage holds a password: search.json records it as ***; keep it out of files "
            f"with the database's own password file (~/.pgpass, ~/.my.cnf) or export {STORAGE_ENV}=URL before "
            "submitting and running status"
        )
    return warnings


def submit_search(plan: SearchPlan, allow_download: bool = True) -> list[Any]:
    """Check everything, create the study, submit the job array; returns the submitit jobs."""
    from zoobot_hpc.backends.job_setup import protect_submission_files
    from zoobot_hpc.backends.registry import get_backend
    from zoobot_hpc.login.arrays import plan_arrays, submit_arrays
    from zoobot_hpc.login.preflight import preflight
    from zoobot_hpc.search.trial_job import TrialJob

    preflight([plan.config], plan.executor, plan.base_dir, allow_download=allow_download)
    backend = get_backend(plan.executor)
    parts, _ = plan_arrays(backend, plan.spec.trials, plan.spec.parallel)
    if (plan.base_dir / SEARCH).exists():
        raise ConfigError(f"{plan.base_dir}: a search of that name exists; choose another --sweep-name")
    plan.base_dir.mkdir(parents=True, exist_ok=True)
    create_study(plan.base_dir, plan.spec, plan.sweep_name, direction=plan.direction, metric=plan.metric)
    # The base config with its secrets, owner-only, as a run's config.yaml; every other record is redacted.
    atomic.write_text(plan.base_dir / layout.CONFIG, dump_config(plan.config), mode=atomic.OWNER_ONLY)
    base = redact_config(plan.config).model_dump(mode="json")
    record = {
        "study": plan.sweep_name,
        "spec": redact_value(plan.spec.raw),
        "source": plan.source,
        "search_file": plan.spec.source,
        "overrides": [redact_text(text) for text in plan.overrides],
        "executor": plan.executor,
        "objective": {"metric": plan.metric, "direction": plan.direction},
        "config": base,
    }
    layout.write_json(plan.base_dir / SEARCH, record)
    atomic.private_directory(plan.submitit_dir)
    executor = backend.make_executor(
        plan.config, plan.submitit_dir, plan.sweep_name, extra_setup=storage_setup(plan.spec)
    )
    sweep_dir = str(plan.base_dir.resolve())
    calls = [TrialJob(base, sweep_dir, index) for index in range(plan.spec.trials)]
    jobs, arrays = submit_arrays(backend, executor, calls, parts)
    protect_submission_files(plan.submitit_dir)
    record.update(
        submitted=time.time(),
        submitit_folder=str(plan.submitit_dir.resolve()),
        arrays=arrays,
        jobs=[{"array_task": i, "job_id": job.job_id, "stdout": str(job.paths.stdout)} for i, job in enumerate(jobs)],
    )
    layout.write_json(plan.base_dir / SEARCH, record)
    return jobs
