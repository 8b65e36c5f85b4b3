"""submitit executors from a config's resources: SLURM or local, with the same job semantics."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import submitit

from zoobot_hpc.core import atomic
from zoobot_hpc.core.config import ConfigError, RunConfig
from zoobot_hpc.runtime.preemption import PREEMPT_SIGNAL_ENV, parse_signal


def requeue_signal_name(config: RunConfig) -> str:
    """The signal SLURM sends before the time limit: a `--signal` in `resources.sbatch_extra`, else
    `SUBMITIT_PREEMPT_SIGNAL` here, else USR2 (submitit's default), as a name without `SIG`."""
    extra = config.resources.sbatch_extra.get("signal")
    if extra is None:
        return os.environ.get(PREEMPT_SIGNAL_ENV, "USR2").removeprefix("SIG")
    try:
        return parse_signal(str(extra)).name.removeprefix("SIG")
    except ValueError as error:
        raise ConfigError(f"resources.sbatch_extra.signal={extra!r}: {error}") from None


def job_setup(config: RunConfig, extra_setup: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The job's set-up lines: the config's, after telling submitit on the compute node which signal asks for a
    requeue (its handler, and ours, must listen for the signal SLURM will actually send), and `extra_setup`
    (a search's storage URL)."""
    name = requeue_signal_name(config)
    export = [f"export {PREEMPT_SIGNAL_ENV}={name}"] if name != "USR2" else []
    return export + list(extra_setup) + list(config.resources.setup)


def slurm_executor(
    config: RunConfig, folder: Path, job_name: str, extra_setup: list[str] | tuple[str, ...] = ()
) -> submitit.SlurmExecutor:
    """One SLURM task per device, USR2 `signal_delay_s` before the time limit, a failed rank ends the job."""
    res = config.resources
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=res.max_time_limit_requeues)
    params: dict = {
        "job_name": job_name,
        "time": res.time_min,
        "nodes": res.nodes,
        "ntasks_per_node": res.tasks_per_node,
        "cpus_per_task": res.cpus_per_task,
        "signal_delay_s": res.signal_delay_s,
        "array_parallelism": res.array_parallelism,
        "srun_args": ["--kill-on-bad-exit=1"],
        "setup": job_setup(config, extra_setup),
        "additional_parameters": {"requeue": True, **res.sbatch_extra},
    }
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    if res.mem_gb:
        params["mem"] = f"{int(res.mem_gb * 1024)}M"
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(res, key):
            params[key] = getattr(res, key)
    executor.update_parameters(**params)
    return executor


def local_executor(
    config: RunConfig, folder: Path, extra_setup: list[str] | tuple[str, ...] = ()
) -> submitit.LocalExecutor:
    """submitit's local executor: the same signal-before-timeout, checkpoint and requeue semantics, one node."""
    res = config.resources
    executor = submitit.LocalExecutor(folder=folder, max_num_timeout=res.max_time_limit_requeues)
    executor.update_parameters(
        timeout_min=res.time_min,
        tasks_per_node=res.tasks_per_node,
        gpus_per_node=res.gpus_per_node,
        signal_delay_s=min(res.signal_delay_s, 30 * res.time_min),
        setup=local_setup(folder, [*extra_setup, *res.setup]),
    )
    return executor


LOCAL_SETUP = "local_submission.sh"


def local_setup(folder: Path, lines: list[str]) -> list[str]:
    """The local job's set-up as one line sourcing an owner-only script in the submitit folder (the local job's
    counterpart of the sbatch script): submitit's local executor runs set-up lines as `sh -c "..."`, whose command
    line every user of the machine can read (`ps`), secrets included."""
    if not lines:
        return []
    script = atomic.private_directory(folder) / LOCAL_SETUP
    atomic.write_text(script, "\n".join(lines) + "\n", mode=atomic.OWNER_ONLY)
    return [f". {shlex.quote(str(script.resolve()))}"]


def make_executor(
    config: RunConfig, folder: Path, cluster: str, job_name: str, extra_setup: list[str] | tuple[str, ...] = ()
) -> submitit.SlurmExecutor | submitit.LocalExecutor:
    """The executor for `cluster` ('slurm' or 'local') writing its files to `folder`."""
    if cluster == "slurm":
        return slurm_executor(config, folder, job_name, extra_setup)
    return local_executor(config, folder, extra_setup)


def sbatch_script(
    config: RunConfig, folder: Path, job_name: str, array_size: int, extra_setup: list[str] | tuple[str, ...] = ()
) -> str:
    """The sbatch script SLURM receives (for --dry-run), as submitit writes it."""
    executor = slurm_executor(config, folder, job_name, extra_setup)
    if array_size > 1:
        executor.parameters["map_count"] = array_size
    return executor._make_submission_file_text(executor._submitit_command_str, "DRYRUN")


def protect_submission_files(folder: Path) -> None:
    """Make what submitit wrote for the job owner-only: the sbatch scripts (they keep the secrets of setup lines)
    and the pickled jobs (redacted, but code that runs as the user). The folder itself is 0700."""
    for path in Path(folder).glob("*"):
        if path.is_file() and not path.is_symlink() and path.name.endswith(("_submission.sh", ".pkl")):
            path.chmod(atomic.OWNER_ONLY)
