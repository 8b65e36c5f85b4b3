"""Which signals stop a run: SIGTERM always, and the site's requeue signal wherever USR2 was assumed."""

from __future__ import annotations

import os
import re
import signal
from types import SimpleNamespace

import pytest

from tests.support.jobs import write_test_config
from zoobot_hpc.backends.slurm import SlurmBackend
from zoobot_hpc.core.config import ConfigError, load_config
from zoobot_hpc.core.stop_signals import PREEMPT_SIGNAL_ENV, PreemptionFlag, parse_signal
from zoobot_hpc.runtime.preemption import run_preemptible


@pytest.mark.parametrize(("text", "expected"), [("USR1@60", "SIGUSR1"), ("B:SIGUSR2@90", "SIGUSR2"), ("10", "SIGUSR1")])
def test_signals_are_read_in_sbatch_notation(text, expected):
    assert parse_signal(text).name == expected


def test_a_signal_in_sbatch_extra_is_the_one_the_job_listens_for(tmp_path, demo_dataset):
    config = load_config(
        write_test_config(
            tmp_path, demo_dataset, resources__executor="slurm", resources__sbatch_extra={"signal": "USR1@60"}
        )
    )
    script = SlurmBackend().job_script(config, tmp_path / "submitit", "site-signal", 1)
    assert "#SBATCH --signal=USR1@60" in script
    assert f"export {PREEMPT_SIGNAL_ENV}=USR1" in script.split("# setup")[1]

    bad = write_test_config(tmp_path / "bad", demo_dataset, resources__sbatch_extra={"signal": "NOPE@60"})
    with pytest.raises(ConfigError, match=re.escape("resources.sbatch_extra.signal='NOPE@60'")):
        SlurmBackend().job_script(load_config(bad), tmp_path / "submitit", "site-signal", 1)


def test_the_flag_records_sigterm_and_the_site_signal_and_restores_the_handlers(monkeypatch):
    monkeypatch.setenv(PREEMPT_SIGNAL_ENV, "USR1")
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGUSR1)}

    def work(flag: PreemptionFlag):
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        return SimpleNamespace(preempted=False, flag=flag)

    flag = run_preemptible(work, submitted=False).flag
    assert flag.requeue_requested and flag.terminated and flag.first_at is not None
    assert {signum: signal.getsignal(signum) for signum in before} == before
