"""Elastic resume through the local executor: a run stopped mid-epoch on 2 ranks continues on 1 (and one stopped on
1 continues on 2) with the same global order, the same global batch, step count and final LR as an uninterrupted
run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tests.support.jobs import segments, wait_for, write_test_config
from tests.support.probes import epoch_indices
from zoobot_hpc.cli import main
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.data.shard_format import read_manifest
from zoobot_hpc.login.submit import plan_runs, submit_plan

PER_UPDATE = {"sched": "cosine", "num_epochs": 1, "warmup_epochs": 0, "step_on_epochs": False}


def _config(tmp_path: Path, dataset: Path, name: str, tasks: int, accumulate: int, probe: Path, sleep_s: float):
    callbacks = [{"class_path": "tests.support.probes.EpochIndices", "init_args": {"out_dir": str(probe)}}]
    if sleep_s:
        slow = {"out_dir": str(probe / "slow"), "step_sleep_s": sleep_s}
        callbacks.append({"class_path": "tests.support.probes.StepDigests", "init_args": slow})
    return write_test_config(
        tmp_path,
        dataset,
        name=name,
        resources__executor="local",
        resources__tasks_per_node=tasks,
        trainer__accumulate_grad_batches=accumulate,
        trainer__callbacks=callbacks,
        model__scheduler_kwargs=PER_UPDATE,
        trainer__max_epochs=1,
        data__num_workers=0,
        tracking__mode="disabled",
    )


def _stop_mid_epoch(job, run_dir: Path) -> None:
    def trained_a_batch() -> bool:
        text = job.paths.stdout.read_text() if job.paths.stdout.exists() else ""
        return bool(re.search(r"epoch 1/1 batch", text))

    wait_for(trained_a_batch, 180, "the first training batch")
    assert CliRunner().invoke(main, ["cancel", str(run_dir)]).exit_code == 0
    wait_for(job.done, 120, "the cancelled job to end")
    [start] = segments(run_dir)
    assert start["stop"] == "SIGTERM", start


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, demo_dataset) -> tuple[dict, dict]:
    """An uninterrupted run on 1 rank with the global batch of the others: its metrics and its summary."""
    tmp_path = tmp_path_factory.mktemp("baseline")
    config = _config(tmp_path, demo_dataset, "baseline", 1, 2, tmp_path / "probe", 0.0)
    submission = submit_plan(plan_runs(config))
    metrics = submission.jobs[0].result()
    return metrics, layout.read_json(submission.plan.runs[0].run_dir / layout.SUMMARY)


@pytest.mark.timeout(420)
@pytest.mark.parametrize(("first", "then"), [(2, 1), (1, 2)])
def test_a_run_resumed_on_another_world_size_trains_each_image_once_with_the_same_steps_and_lr(
    tmp_path, demo_dataset, baseline, first: int, then: int
) -> None:
    probe = tmp_path / "probe"
    stopped = _config(tmp_path / "a", demo_dataset, "elastic", first, 2 // first, probe, 1.0)
    submission = submit_plan(plan_runs(stopped))
    run_dir = submission.plan.runs[0].run_dir
    _stop_mid_epoch(submission.jobs[0], run_dir)

    resumed = _config(tmp_path / "a", demo_dataset, "elastic", then, 1, probe, 0.0)
    resubmission = submit_plan(plan_runs(resumed))
    assert yaml.safe_load((run_dir / layout.CONFIG).read_text())["trainer"]["accumulate_grad_batches"] == 2 // then
    metrics = resubmission.jobs[0].results()[0]

    assert [s["world_size"] for s in segments(run_dir)] == [first, then]
    train_size = read_manifest(demo_dataset).split_count("train")
    [indices] = epoch_indices(probe).values()
    assert set(indices) == set(range(train_size))
    assert len(indices) - train_size < 2, "only the padding repeats"
    baseline_metrics, baseline_summary = baseline
    assert 0 < segments(run_dir)[0]["stop_step"] < baseline_summary["global_step"], "stopped mid-epoch"
    assert layout.read_json(run_dir / layout.SUMMARY)["global_step"] == baseline_summary["global_step"]
    assert metrics["lr/head"] == baseline_metrics["lr/head"]
