"""The SLURM backend: sbatch through submitit, sacct/squeue states, scancel, scontrol on the compute node."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoobot_hpc.backends.base import ArrayLimits, JobRecord, JobStart, Partition, Phase, SchedulerMissing
from zoobot_hpc.backends.job_setup import job_setup
from zoobot_hpc.backends.slurm_config import read_array_limits
from zoobot_hpc.backends.slurm_partition import read_partition

if TYPE_CHECKING:
    import submitit

    from zoobot_hpc.core.config import SubmittedConfig

log = logging.getLogger(__name__)

# SLURM's job states by phase. ACTIVE: the job still owns its run dir (it runs, or will run again by itself).
PHASES: dict[str, Phase] = {
    **dict.fromkeys(
        (
            "PENDING",
            "RUNNING",
            "REQUEUED",
            "REQUEUE_HOLD",
            "REQUEUE_FED",
            "PREEMPTED",
            "SUSPENDED",
            "CONFIGURING",
            "COMPLETING",
            "RESIZING",
            "SIGNALING",
            "STAGE_OUT",
        ),
        Phase.ACTIVE,
    ),
    "COMPLETED": Phase.COMPLETED,
    "CANCELLED": Phase.CANCELLED,
    **dict.fromkeys(
        ("FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT"), Phase.FAILED
    ),
}
JOB_ID = re.compile(r"^\d+(_\d+)?$")


def _state_lines(command: list[str]) -> dict[str, str]:
    """`JOBID|STATE` lines of a SLURM client command, as a mapping (nothing when the command is missing)."""
    if shutil.which(command[0]) is None:
        return {}
    out = subprocess.run(command, capture_output=True, text=True, check=False).stdout
    states = {}
    for line in out.splitlines():
        job, _, state = line.partition("|")
        states[job.strip()] = state.split()[0] if state.strip() else "UNKNOWN"
    return states


def job_fields(job_id: str) -> dict[str, str]:
    """`scontrol show job -o JOB` as a mapping of its `Key=Value` fields (empty when it cannot be asked)."""
    try:
        shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    fields: dict[str, str] = {}
    for key, _, value in (token.partition("=") for token in shown.stdout.split() if "=" in token):
        fields.setdefault(key, value)  # the first: SLURM's own fields come before the user's command and comment
    return fields


class SlurmBackend:
    """SLURM: one task per device, the requeue signal `signal_delay_s` before the time limit, `--requeue`."""

    name = "slurm"
    ends_stopped_jobs = True  # after SIGTERM SLURM requeues (PreemptMode=REQUEUE) or ends the job itself

    def reachable(self) -> bool:
        if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
            return False
        try:
            probe = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, timeout=15, check=False)
        except subprocess.TimeoutExpired:
            return False
        return probe.returncode == 0

    def check_resources(self, config: SubmittedConfig) -> None:
        if shutil.which("sbatch") is None:
            raise SchedulerMissing("resources.executor=slurm but `sbatch` is not on PATH (use executor=local)")

    def make_executor(
        self, config: SubmittedConfig, folder: Path, job_name: str, extra_setup: Sequence[str] = ()
    ) -> submitit.SlurmExecutor:
        import submitit

        res = config.resources
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=res.max_time_limit_requeues)
        params: dict[str, Any] = {
            "job_name": job_name,
            "time": res.time_min,
            "nodes": res.nodes,
            "ntasks_per_node": res.tasks_per_node,
            "cpus_per_task": res.cpus_per_task,
            "signal_delay_s": res.signal_delay_s,
            "array_parallelism": res.array_parallelism,
            "srun_args": ["--kill-on-bad-exit=1"],
            "setup": job_setup(config, tuple(extra_setup)),
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

    def job_script(
        self, config: SubmittedConfig, folder: Path, job_name: str, array_size: int, extra_setup: Sequence[str] = ()
    ) -> str:
        """The sbatch script SLURM receives, as submitit writes it."""
        executor = self.make_executor(config, folder, job_name, extra_setup)
        if array_size > 1:
            executor.parameters["map_count"] = array_size
        return executor._make_submission_file_text(executor._submitit_command_str, "DRYRUN")

    def array_limits(self) -> ArrayLimits:
        return read_array_limits()

    def submit_array(
        self, executor: submitit.Executor, calls: Sequence[Any], parallelism: int, after: Sequence[str] = ()
    ) -> list[submitit.Job[Any]]:
        """One `sbatch --array=0-N%P` (a plain job for one call), `--dependency=afterany:A:B` after `after`."""
        dependency = "afterany:" + ":".join(self.array_job_id(job) for job in after) if after else None
        executor.update_parameters(array_parallelism=parallelism, dependency=dependency)
        if len(calls) == 1:
            return [executor.submit(calls[0])]
        with executor.batch():
            return [executor.submit(call) for call in calls]

    def array_job_id(self, job_id: str) -> str:
        return job_id.partition("_")[0]

    def job_states(self, jobs: Sequence[JobRecord]) -> dict[str, str]:
        """From sacct, through submitit's job watcher (one call for every array), and squeue for jobs sacct does
        not know yet."""
        job_ids = [job.job_id for job in jobs]
        if not job_ids:
            return {}
        states: dict[str, str] = {}
        if shutil.which("sacct") is not None:
            from submitit.slurm.slurm import SlurmInfoWatcher

            watcher = SlurmInfoWatcher()
            for job in job_ids:
                watcher.register_job(job)
            watcher.update()
            for job in job_ids:
                state = watcher.get_state(job, mode="cache")
                if state != "UNKNOWN":
                    states[job] = state.split()[0]  # "CANCELLED by 0" -> "CANCELLED"
        missing = [job for job in job_ids if job not in states]
        if missing:
            states.update(_state_lines(["squeue", "-h", "-o", "%i|%T", "-j", ",".join(missing)]))
        return states

    def phase(self, state: str) -> Phase:
        return PHASES.get(state, Phase.UNKNOWN)

    def cancel(self, jobs: Sequence[JobRecord]) -> list[str]:
        """`scancel` of every job, once per array (an array task's id names its whole array); the newest first, so
        that no array waiting on an older one starts as that one ends."""
        ids = sorted({self.array_job_id(job.job_id) for job in jobs}, key=lambda job: (len(job), job), reverse=True)
        if ids:
            subprocess.run(["scancel", *ids], check=True)
        return ids

    def job_starts(self, job_id: str) -> list[JobStart]:
        if shutil.which("sacct") is None or not JOB_ID.match(job_id):
            return []
        command = ["sacct", "--duplicates", "--allocations", "--noheader", "--parsable2", "--format=Start,State"]
        try:
            out = subprocess.run([*command, "-j", job_id], capture_output=True, text=True, timeout=30).stdout
        except subprocess.SubprocessError:
            return []
        starts = []
        for line in out.splitlines():
            started, _, state = line.partition("|")
            try:
                starts.append(JobStart(time.mktime(time.strptime(started, "%Y-%m-%dT%H:%M:%S")), state.split()[0]))
            except (ValueError, IndexError):
                continue
        return starts

    def partition(self, name: str | None) -> Partition | None:
        return read_partition(name)

    def submitted_job_record(self, job_id: str) -> dict[str, Any]:
        return {}

    def in_job(self) -> bool:
        """A task of a SLURM job (not submitit's local executor started inside an allocation)."""
        return "SLURM_JOB_ID" in os.environ and os.environ.get("SUBMITIT_EXECUTOR", "slurm") == "slurm"

    def job_key(self) -> str | None:
        return self.job_id()

    def job_id(self) -> str | None:
        env = os.environ
        if env.get("SLURM_ARRAY_JOB_ID"):
            return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '0')}"
        return env.get("SLURM_JOB_ID") or None

    def node_list(self) -> str | None:
        return os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST") or None

    def restart_count(self) -> int | None:
        count = os.environ.get("SLURM_RESTART_COUNT")
        return int(count) if count else None

    def task_rank(self) -> int:
        return int(os.environ.get("SLURM_PROCID", "0"))

    def stop_was_time_limit(self) -> bool:
        """SLURM is ending this job for its time limit and allows it to requeue: the SIGTERM was the limit itself,
        with no requeue signal before it (none asked for, or a save that outlasted `signal_delay_s`). Such a job
        can still be requeued until it is killed (`KillWait`, 30 s by default)."""
        job_id = os.environ.get("SLURM_JOB_ID")
        fields = job_fields(job_id) if job_id else {}
        return fields.get("Reason") == "TimeLimit" and fields.get("Requeue") == "1"

    def requeue_self(self) -> bool:
        """`scontrol requeue` of the job we run in (`zoobot-hpc train` under the user's own sbatch script)."""
        job_id = os.environ["SLURM_JOB_ID"]
        done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            log.info("requeued SLURM job %s", job_id)
            return True
        log.error("could not requeue SLURM job %s (%s); continue with the same command", job_id, done.stderr.strip())
        return False

    def end_stalled_job(self, requeue: bool) -> int | None:
        """Requeue: `scontrol requeue` (SLURM then kills every task, stopped ones too) and wait for it. Otherwise,
        or when the requeue is refused: SIGKILL to every task of this job step, so that the step and the job end
        FAILED rather than wait for a stopped task until the time limit."""
        if requeue and self.requeue_self():
            return None
        step = os.environ.get("SLURM_STEP_ID")
        if step is not None:
            target = f"{os.environ['SLURM_JOB_ID']}.{step}"
            done = subprocess.run(["scancel", "--signal=KILL", target], capture_output=True, text=True, check=False)
            if done.returncode:
                log.error("could not kill job step %s (%s)", target, done.stderr.strip())
        return 1

    def lightning_environment(self) -> tuple[str, dict[str, Any]] | None:
        """Lightning's SLURM environment with its own requeue switched off (we own preemption)."""
        return "lightning.fabric.plugins.environments.SLURMEnvironment", {"auto_requeue": False}
