"""What every backend's job script does before the task starts, and the protection of what submitit writes."""

from __future__ import annotations

import os
from pathlib import Path

from zoobot_hpc.core import atomic
from zoobot_hpc.core.config import ConfigError, SubmittedConfig
from zoobot_hpc.core.stop_signals import PREEMPT_SIGNAL_ENV, parse_signal


def requeue_signal_name(config: SubmittedConfig) -> str:
    """The signal the scheduler sends before the time limit: a `--signal` in `resources.sbatch_extra`, else
    `SUBMITIT_PREEMPT_SIGNAL` here, else USR2 (submitit's default), as a name without `SIG`."""
    extra = config.resources.sbatch_extra.get("signal")
    if extra is None:
        return os.environ.get(PREEMPT_SIGNAL_ENV, "USR2").removeprefix("SIG")
    try:
        return parse_signal(str(extra)).name.removeprefix("SIG")
    except ValueError as error:
        raise ConfigError(f"resources.sbatch_extra.signal={extra!r}: {error}") from None


def job_setup(config: SubmittedConfig, extra_setup: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The job's set-up lines: the config's, after telling submitit on the compute node which signal asks for a
    requeue (its handler, and ours, must listen for the signal the scheduler will actually send), and
    `extra_setup` (a search's storage URL)."""
    name = requeue_signal_name(config)
    export = [f"export {PREEMPT_SIGNAL_ENV}={name}"] if name != "USR2" else []
    return export + list(extra_setup) + list(config.resources.setup)


def protect_submission_files(folder: Path) -> None:
    """Make what submitit wrote for the job owner-only: the job scripts (they keep the secrets of setup lines)
    and the pickled jobs (redacted, but code that runs as the user). The folder itself is 0700."""
    for path in Path(folder).glob("*"):
        if path.is_file() and not path.is_symlink() and path.name.endswith(("_submission.sh", ".pkl")):
            path.chmod(atomic.OWNER_ONLY)
