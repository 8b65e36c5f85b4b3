"""A whole search on the loopback SLURM cluster: one array of 8 trials, 4 at a time, with ASHA pruning, a
trial preempted mid-epoch that resumes as the same trial, and a trial that crashes while the others complete."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest

from tests.cluster.test_slurm_jobs import cli, submitted_job_ids
from tests.support.jobs import segments, wait_for, write_test_config
from tests.support.wandb_records import offline_run_files, read_offline_run
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.search.report import write_search_report
from zoobot_hpc.search.study import load_study

pytestmark = pytest.mark.slurm

CRASH_TASK, PREEMPT_TASK = 5, 2
SEARCH = """
trials: 8
parallel: 4
sampler: random
seed: 3
pruner: {kind: asha, min_epochs: 2}
parameters:
  model.learning_rate: {loguniform: [1.0e-5, 3.0]}
  model.head_dropout_prob: {choice: [0.2, 0.5]}
"""


def log_of(sweep_dir: Path, task: int) -> Path:
    [job] = [j for j in layout.read_json(sweep_dir / "search.json")["jobs"] if j["array_task"] == task]
    return Path(job["stdout"])


def signal_array_task_once(slurm_cluster, job: str) -> None:
    """`scancel --signal=USR2` on one array task. slurmctld 22.05 delivers it but answers "Job can not be altered
    now, try again later", and scancel retries until it hits the requeued task's next start: stop it first."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        slurm_cluster.run("scancel", "--signal=USR2", job, timeout=3, check=False)


@pytest.mark.timeout(600)
def test_search_prunes_resumes_a_preempted_trial_and_survives_a_crash(tmp_path, demo_dataset, slurm_cluster):
    probe = {
        "class_path": "tests.support.probes.ArrayTaskProbe",
        "init_args": {"crash_task": CRASH_TASK, "crash_step": 2, "slow_task": PREEMPT_TASK, "slow_s": 1.0},
    }
    config = write_test_config(
        tmp_path,
        demo_dataset,
        name="searched",
        resources__executor="slurm",
        trainer__max_epochs=3,
        trainer__limit_train_batches=3,
        trainer__limit_val_batches=2,
        trainer__callbacks=[probe],
        data__num_workers=0,
    )
    search = tmp_path / "search.yaml"
    search.write_text(SEARCH)
    result = cli("submit", str(config), "--search", str(search), "--sweep-name", "lr-search")
    assert result.returncode == 0, result.stderr
    job_ids = submitted_job_ids(result.stdout)
    assert sorted(int(job.split("_")[1]) for job in job_ids) == list(range(8))
    [array_id] = {job.split("_")[0] for job in job_ids}

    sweep_dir = tmp_path / "runs" / "lr-search"
    preempted_log = log_of(sweep_dir, PREEMPT_TASK)
    wait_for(lambda: preempted_log.exists() and "epoch 2/3 batch 1" in preempted_log.read_text(), 300, "epoch 2")
    signal_array_task_once(slurm_cluster, f"{array_id}_{PREEMPT_TASK}")
    study = load_study(sweep_dir)[0]
    wait_for(lambda: all(t.state.is_finished() for t in study.get_trials()), 420, "every trial to end", poll=2)
    wait_for(lambda: set(slurm_cluster.states(array_id)) <= {"COMPLETED", "FAILED"}, 60, "every task to end")

    trials = study.get_trials()
    assert len(trials) == 8
    states = {t.user_attrs["array_task"]: t.state.name for t in trials}
    assert states[CRASH_TASK] == "FAIL"
    assert all(state in ("COMPLETE", "PRUNED") for task, state in states.items() if task != CRASH_TASK), states
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned and all(max(t.intermediate_values) < 3 for t in pruned), "a trial pruned before max_epochs"
    for trial in pruned:
        summary = layout.read_json(sweep_dir / trial.user_attrs["run_dir"] / layout.SUMMARY)
        assert summary["trial"] == {"number": trial.number, "state": "PRUNED", "params": trial.params}
        assert (sweep_dir / trial.user_attrs["run_dir"] / layout.CHECKPOINTS / "last.ckpt").exists()

    [preempted] = [t for t in trials if t.user_attrs["array_task"] == PREEMPT_TASK]
    run_dir = sweep_dir / preempted.user_attrs["run_dir"]
    starts = segments(run_dir)
    assert len(starts) == 2 and starts[1]["resumed_from"].endswith("resume.ckpt")
    assert sorted(preempted.intermediate_values) == list(range(1, max(preempted.intermediate_values) + 1))
    assert max(preempted.intermediate_values) >= 2, "reports continued after the requeue"
    assert preempted.state.name in ("COMPLETE", "PRUNED")
    assert layout.read_json(run_dir / layout.SUMMARY)["trial"]["number"] == preempted.number
    assert f"learning_rate={preempted.params['model.learning_rate']:g}" in run_dir.name
    config_text = (run_dir / layout.CONFIG).read_text()
    assert f"learning_rate: {preempted.params['model.learning_rate']}" in config_text

    best = study.best_trial
    assert (sweep_dir / best.user_attrs["run_dir"] / layout.CHECKPOINTS / "best.ckpt").exists()
    job_states = {record["JobID"]: record["State"] for record in slurm_cluster.settled_accounting(array_id)}
    assert job_states.pop(f"{array_id}_{CRASH_TASK}") == "FAILED"
    assert set(job_states.values()) == {"COMPLETED"}, job_states

    runs = [read_offline_run(path) for t in trials for path in offline_run_files(sweep_dir / t.user_attrs["run_dir"])]
    assert {run.group for run in runs} == {"lr-search"}
    final = {run.config["trial/number"]: run for run in runs if "trial/state" in run.summary}
    assert {n: run.summary["trial/state"] for n, run in final.items()} == {t.number: t.state.name for t in trials}
    assert all(("pruned" in run.tags) == (run.summary["trial/state"] == "PRUNED") for run in final.values())

    status = cli("status", str(sweep_dir))
    assert status.returncode == 0, status.stderr
    lines = status.stdout.strip().splitlines()
    assert len(lines) == 9 and lines[-1].startswith(f"best so far: trial {best.number} ")
    assert sum(" PRUNED " in line for line in lines) == len(pruned)

    table, written = write_search_report(sweep_dir)
    assert table.set_index("trial")["state"].to_dict() == {t.number: t.state.name for t in trials}
    names = {path.name for path in written}
    expected = {"optimization_history.png", "param_importances.png", "intermediate_values.png", "learning_curves.png"}
    assert expected | {"validation_loss_vs_learning_rate.png", "validation_loss_vs_head_dropout_prob.png"} <= names
    assert all(path.stat().st_size > 0 for path in written)
