"""Preemption through submitit's local executor (no SLURM): signal mid-epoch twice, requeue, exact resume
(with a per-update LR schedule; the SLURM test uses a per-epoch one)."""

from __future__ import annotations

import itertools
import re

import pytest
from click.testing import CliRunner

from tests.support.jobs import (
    assert_same_weights,
    final_weights,
    segments,
    signal_local_tasks,
    wait_for,
    write_test_config,
)
from tests.support.wandb_records import logged_tables, offline_run_files, read_offline_run
from zoobot_hpc.cli import main
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.job_result import RANK_ERRORS
from zoobot_hpc.login.submit import plan_runs, submit_plan
from zoobot_hpc.training.checkpointing import stored_step

STARTUP_PHASES = (
    "interpreter, imports",
    "model, datamodule",
    "trainer, loggers",
    "process group, W&B run, data set up",
    "model on the device",
    "checkpoint restored",
    "loader workers, first batch",
    "first training step",
)


def _log_mentions(job, pattern: str, at_least: int = 1):
    def check():
        text = job.paths.stdout.read_text() if job.paths.stdout.exists() else ""
        return len(re.findall(pattern, text)) >= at_least

    return check


@pytest.mark.timeout(420)
def test_local_job_preempted_twice_mid_epoch_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, demo_dataset):
    per_update = {"sched": "cosine", "num_epochs": 2, "warmup_epochs": 1, "step_on_epochs": False}
    common = {"resources__executor": "local", "model__scheduler_kwargs": per_update}
    interrupted_cfg = write_test_config(tmp_path / "a", demo_dataset, name="interrupted", **common)
    baseline_cfg = write_test_config(tmp_path / "b", demo_dataset, name="baseline", **common)
    interrupted = submit_plan(plan_runs(interrupted_cfg))
    baseline = submit_plan(plan_runs(baseline_cfg))
    job = interrupted.jobs[0]
    run_dir = interrupted.plan.runs[0].run_dir

    wait_for(_log_mentions(job, r"epoch 1/2 batch"), 180, "the first training batch")
    assert signal_local_tasks(int(job.job_id))
    wait_for(lambda: len(segments(run_dir)) == 2, 120, "the requeued second segment")
    wait_for(_log_mentions(job, r"epoch 2/2 batch"), 180, "the second epoch after resume")
    assert signal_local_tasks(int(job.job_id))
    wait_for(lambda: len(segments(run_dir)) == 3, 120, "the requeued third segment")

    metrics = job.result()
    baseline_metrics = baseline.jobs[0].result()
    for key in ("validation/loss", "validation/accuracy", "lr/head"):
        assert metrics[key] == baseline_metrics[key], key

    starts = segments(run_dir)
    assert starts[0]["resumed_from"] is None
    assert all(s["resumed_from"].endswith("resume.ckpt") for s in starts[1:])
    log_text = job.paths.stdout.read_text()
    assert log_text.count("preemption signal (SIGUSR2): saved") == 2
    phases = re.findall(r"start-up: (\S.*?\S)\s+\d+\.\d+ s \(", log_text)
    assert phases[:8] == list(STARTUP_PHASES), "the first start logs each start-up phase, in order"
    assert phases.count("first training step") == 3, "every start (two requeues) logs its way to the first step"
    assert_same_weights(final_weights(run_dir), final_weights(baseline.plan.runs[0].run_dir))

    runs = [read_offline_run(path) for path in offline_run_files(run_dir)]
    assert len(runs) == 3
    assert len({run.run_id for run in runs}) == 1
    assert runs[-1].metric("requeue_count")[-1] == 2

    steps = [run.metric("_step") for run in runs]
    logged = [segment for segment in steps if segment]  # a segment stopped before its first log has no rows
    assert len(logged) >= 2, steps
    for earlier, later in itertools.pairwise(logged):
        assert min(later) > max(earlier), "a later segment's history lands after the earlier one's last step"
    flat = [step for segment in steps for step in segment]
    assert flat == sorted(set(flat)), "W&B steps strictly increase across segments: none logged twice"
    final_step = layout.read_json(run_dir / layout.SUMMARY)["global_step"]
    assert runs[-1].metric("trainer/global_step")[-1] == final_step - 1, "the last segment ends the history"

    records = runs[-1].config["segments"]
    assert [r["job"] for r in records] == [s["job"] for s in starts]
    assert [r["stopped_because"] for r in records] == ["time limit (requeue signal)"] * 2 + ["finished"]
    assert [r["start"] for r in records] == [s["start"] for s in starts]
    assert [r["stop"] for r in records[:2]] == [s["stopped"] for s in starts[:2]]
    assert all(r["redone_steps_after"] == 0 for r in records)
    assert runs[-1].summary["gpu_hours/used"] == pytest.approx(sum(r["device_hours"] for r in records))
    assert runs[-1].summary["gpu_hours/lost"] == 0 and runs[-1].summary["segments"] == 3

    status = CliRunner().invoke(main, ["status", str(run_dir)])
    assert (
        "segments 1: time limit (requeue signal), 2: time limit (requeue signal), 3: finished; GPU-h used"
        in status.output
    )

    sync = CliRunner().invoke(main, ["sync", "--dry-run", str(run_dir)])
    assert sync.exit_code == 0, sync.output
    *plan, command_line = sync.output.strip().splitlines()
    command = command_line.split()
    assert command[:4] == ["wandb", "sync", "--id", runs[0].run_id]
    assert command[-3:] == [str(path.parent) for path in offline_run_files(run_dir)]
    assert plan == [
        f"# segment {n}/3: {path.parent} " + (f"steps {min(s)}-{max(s)} ({len(s)} rows)" if s else "(no history)")
        for n, (path, s) in enumerate(zip(offline_run_files(run_dir), steps, strict=True), start=1)
    ]
    sample_ids = [[row[1] for row in table["data"] if row[0] == "sample"] for table in logged_tables(run_dir)]
    assert len(sample_ids) == 2 and sample_ids[0] and sample_ids[0] == sample_ids[1], "the same sample across a requeue"


@pytest.mark.timeout(300)
def test_cancel_of_a_local_job_saves_its_progress(tmp_path, demo_dataset):
    slow_steps = {
        "class_path": "tests.support.probes.StepDigests",
        "init_args": {"out_dir": str(tmp_path / "probe"), "step_sleep_s": 0.5},
    }
    config = write_test_config(
        tmp_path,
        demo_dataset,
        name="cancelled",
        resources__executor="local",
        data__num_workers=0,
        tracking__mode="disabled",
        trainer__callbacks=[slow_steps],
    )
    job = submit_plan(plan_runs(config)).jobs[0]
    run_dir = tmp_path / "runs" / "cancelled"
    wait_for(_log_mentions(job, r"epoch 1/2 batch"), 180, "the first training batch")
    assert CliRunner().invoke(main, ["cancel", str(run_dir)]).exit_code == 0
    wait_for(lambda: job.done(), 60, "the cancelled job to end")
    log_text = job.paths.stdout.read_text()
    assert "preemption signal (SIGTERM): saved (resume.ckpt)" in log_text, log_text[-2000:]
    [start] = segments(run_dir)
    assert start["stop"] == "SIGTERM" and start["stop_step"] >= 1, start
    assert stored_step(run_dir / layout.CHECKPOINTS / "resume.ckpt") == start["stop_step"]
    assert not (run_dir / RANK_ERRORS).exists(), "a saved stop was recorded as a rank's error"
