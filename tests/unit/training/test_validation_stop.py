"""A stop signal during a validation pass: acted on at the next validation batch, the training position saved with
the pass marked as not run, and the resumed run validates that epoch again and ends like an uninterrupted one."""

from __future__ import annotations

import signal

import pytest
import torch

from tests.support.jobs import segments, write_test_config
from tests.support.probes import step_digests
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.config import load_config
from zoobot_hpc.core.stop_signals import PreemptionFlag
from zoobot_hpc.training.checkpointing import VALIDATION_RERUN_KEY
from zoobot_hpc.training.run import run_training


def config_for(tmp_path, dataset, name, *callbacks):
    probe = {"class_path": "tests.support.probes.StepDigests", "init_args": {"out_dir": str(tmp_path / name)}}
    path = write_test_config(
        tmp_path / name,
        dataset,
        name=name,
        data__num_workers=0,
        tracking__mode="disabled",
        trainer__callbacks=[probe, *callbacks],
    )
    return load_config(path)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigterm_during_validation_saves_the_training_position_and_the_resumed_run_validates_again(
    tmp_path, demo_dataset
):
    uninterrupted = run_training(config_for(tmp_path, demo_dataset, "a"), tmp_path / "a" / "run")

    signal_spec = {
        "class_path": "tests.support.probes.SignalDuringValidation",
        "init_args": {"epoch": 0, "batch": 1, "marker": str(tmp_path / "signalled"), "signum": int(signal.SIGTERM)},
    }
    config = config_for(tmp_path, demo_dataset, "b", signal_spec)
    run_dir = tmp_path / "b" / "run"
    flag = PreemptionFlag().install()
    try:
        first = run_training(config, run_dir, flag=flag)
        resumed = run_training(config, run_dir, flag=PreemptionFlag())
    finally:
        flag.uninstall()
    assert first.preempted and flag.stopped.terminated
    saved = torch.load(run_dir / layout.CHECKPOINTS / "resume.ckpt", weights_only=True)
    assert saved[VALIDATION_RERUN_KEY] and saved["epoch"] == 0
    assert segments(run_dir)[0]["stop"] == "SIGTERM"

    assert not resumed.preempted
    for key in ("validation/loss", "validation/accuracy", "lr/head"):
        assert resumed.metrics[key] == uninterrupted.metrics[key], key
    run, baseline = step_digests(tmp_path / "b"), step_digests(tmp_path / "a")
    assert run.keys() == baseline.keys() and all(run[s] == baseline[s] for s in run)
    a = torch.load(tmp_path / "a" / "final.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "final.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
