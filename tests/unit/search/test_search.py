"""Search files, the study on the shared filesystem, array task -> trial, heartbeats (no cluster needed)."""

from __future__ import annotations

import multiprocessing
import re
import time

import pytest

from tests.support.jobs import REPO, wait_for, write_test_config
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.config import ConfigError
from zoobot_hpc.search.status import collect_trials
from zoobot_hpc.search.study import (
    SEARCH,
    acquire_trial,
    create_study,
    fail_stale_trials,
    heartbeat_path,
    load_study,
    parse_search,
    trial_run_name,
    write_heartbeat,
)
from zoobot_hpc.search.submit import describe_search, plan_search, submit_search

SPACE = {
    "model.learning_rate": {"loguniform": [1.0e-5, 1.0e-1]},
    "model.head_dropout_prob": {"choice": [0.2, 0.5]},
}


def make_search(sweep_dir, **spec_overrides):
    raw = {"trials": 8, "parallel": 4, "sampler": "random", "parameters": SPACE, **spec_overrides}
    spec = parse_search(raw)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    create_study(sweep_dir, spec, "study", direction="minimize", metric="validation/loss")
    layout.write_json(sweep_dir / SEARCH, {"study": "study", "spec": raw, "executor": "local", "jobs": []})
    return spec


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"trials": 4, "parameters": {"model.learning_rate": {"loguniform": [0, 1]}}}, "loguniform needs low > 0"),
        ({"trials": 4, "parameters": {"model.lr": {"normal": [0, 1]}}}, "parameters.model.lr: expected one of"),
        ({"trials": 0, "parameters": SPACE}, "trials must be a positive"),
        ({"trials": 4, "parameters": SPACE, "pruner": {"kind": "asha", "min_epoch": 2}}, "pruner.min_epoch"),
        ({"trials": 9, "sampler": "grid", "parameters": {"model.head_dropout_prob": {"choice": [0.2]}}}, "only 1"),
        ({"trials": 4, "parameters": {"resources.nodes": {"int": [1, 2]}}}, "one set of resources"),
        ({"trials": 4, "parameters": SPACE, "trails": 3}, "unknown key 'trails'"),
    ],
)
def test_search_file_errors_are_one_line_naming_the_key(raw, message):
    with pytest.raises(ConfigError, match=message) as error:
        parse_search(raw, source="s.yaml")
    assert "\n" not in str(error.value)


def test_dry_run_shows_the_space_and_one_array_of_trials_k_at_a_time(tmp_path, demo_dataset):
    config = write_test_config(tmp_path, demo_dataset, name="base", resources__executor="slurm")
    search = tmp_path / "search.yaml"
    search.write_text(
        "trials: 8\nparallel: 4\npruner: {kind: median, min_epochs: 2}\nparameters:\n"
        "  model.learning_rate: {loguniform: [1.0e-5, 1.0e-1]}\n  model.layer_decay: {uniform: [0.5, 0.9]}\n"
    )
    plan = plan_search(config, ["trainer.max_epochs=3"], search, "lr")
    text = describe_search(plan)
    assert "#SBATCH --array=0-7%4" in text
    assert "# one job array: tasks 0-7, 4 at a time" in text and "#SBATCH --array=0-7%4" in text
    assert "8 trials, 4 at a time, sampler tpe, pruner median (min_epochs 2)" in text
    assert "model.layer_decay: uniform [0.5, 0.9]" in text
    assert plan.config.trainer.max_epochs == 3
    assert not plan.base_dir.exists()

    shipped = plan_search(REPO / "configs" / "demo.yaml", [], REPO / "configs" / "searches" / "lr_ld_dropout.yaml")
    assert (shipped.spec.trials, shipped.spec.parallel, shipped.spec.pruner) == (24, 6, "asha")

    search.write_text("trials: 2\nparameters:\n  model.learning_rat: {uniform: [0.1, 0.2]}\n")
    with pytest.raises(ConfigError, match=re.escape("parameters.model.learning_rat: unknown key 'model.learning_rat'")):
        plan_search(config, [], search, "typo")


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_a_requeued_task_gets_its_trial_back_and_a_silent_death_is_failed_then_retried(tmp_path, storage):
    sweep_dir = tmp_path / "search"
    url = {"storage": f"sqlite:///{tmp_path / 'study.db'}"} if storage == "sqlite" else {}
    spec = make_search(sweep_dir, heartbeat={"interval_s": 1, "stale_after_s": 30}, **url)
    assert (sweep_dir / "study.journal").exists() == (storage == "journal")
    study, _, _ = load_study(sweep_dir, task_index=0)
    first = acquire_trial(study, spec, sweep_dir, task_index=0)
    second = acquire_trial(load_study(sweep_dir, task_index=1)[0], spec, sweep_dir, task_index=1)
    assert (first.number, second.number) == (0, 1)
    assert first.params != second.params

    again = acquire_trial(load_study(sweep_dir, task_index=1)[0], spec, sweep_dir, task_index=1)
    assert (again.number, again.params) == (1, second.params)

    write_heartbeat(sweep_dir, 1, state="requeued")
    old = layout.read_json(heartbeat_path(sweep_dir, 0))
    for number in (0, 1):
        beat = layout.read_json(heartbeat_path(sweep_dir, number))
        layout.write_json(heartbeat_path(sweep_dir, number), {**beat, "time": old["time"] - 60})
    third = acquire_trial(load_study(sweep_dir, task_index=2)[0], spec, sweep_dir, task_index=2)
    states = {t.number: t.state.name for t in study.get_trials()}
    assert states == {0: "FAIL", 1: "RUNNING", 2: "RUNNING"}, "only the silent trial is stale, not the requeued one"
    assert third.number == 2
    assert "no heartbeat" in study.trials[0].user_attrs["stale"]

    retry = acquire_trial(load_study(sweep_dir, task_index=0)[0], spec, sweep_dir, task_index=0)
    assert retry.number == 3
    assert retry.params == first.params
    assert retry.user_attrs == {"array_task": 0, "retry_of": 0, "run_dir": trial_run_name(0, first.params)}


def test_a_trial_whose_task_waits_in_the_queue_is_not_stale_and_a_retry_keeps_its_run_dir(tmp_path):
    """A task killed with its node waits in the queue, without a heartbeat, longer than `stale_after_s`: its trial
    is failed only when the scheduler says the task is no longer pending, requeued or running."""
    sweep_dir = tmp_path / "search"
    spec = make_search(sweep_dir, heartbeat={"interval_s": 1, "stale_after_s": 30})
    study = load_study(sweep_dir, task_index=0)[0]
    trial = acquire_trial(study, spec, sweep_dir, task_index=0)
    study._storage.set_trial_user_attr(trial._trial_id, "run_dir", "trial000-own")
    later = layout.read_json(heartbeat_path(sweep_dir, 0))["time"] + 3600
    for answer in (True, None):  # the scheduler says "in the queue" / cannot say
        assert fail_stale_trials(study, sweep_dir, 30, now=later, task_active=lambda task, a=answer: a) == []
    assert study.trials[0].state.name == "RUNNING"
    assert fail_stale_trials(study, sweep_dir, 30, now=later, task_active=lambda task: False) == [0]
    retry = acquire_trial(load_study(sweep_dir, task_index=0)[0], spec, sweep_dir, task_index=0)
    assert retry.user_attrs["run_dir"] == "trial000-own", "the retry resumes in the trial's own run dir"


def _run_task(sweep_dir, task_index, epochs):
    study, spec, _ = load_study(sweep_dir, task_index=task_index, max_epochs=epochs)
    trial = acquire_trial(study, spec, sweep_dir, task_index)
    import optuna

    handle = optuna.trial.Trial(study, trial._trial_id)
    for epoch in range(1, epochs + 1):
        handle.report(1.0 / epoch + task_index, step=epoch)
        study._storage.set_trial_user_attr(trial._trial_id, f"epoch{epoch}", time.time())
    study.tell(trial.number, 1.0 / epochs + task_index)


@pytest.mark.timeout(120)
def test_eight_tasks_writing_the_journal_at_once_lose_nothing(tmp_path):
    sweep_dir = tmp_path / "search"
    make_search(sweep_dir, pruner="none")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_run_task, args=(sweep_dir, task, 25)) for task in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=100)
    assert [worker.exitcode for worker in workers] == [0] * 8

    study, _, _ = load_study(sweep_dir)
    trials = study.get_trials()
    assert len(trials) == 8
    assert sorted(t.user_attrs["array_task"] for t in trials) == list(range(8))
    for trial in trials:
        task = trial.user_attrs["array_task"]
        assert trial.state.name == "COMPLETE"
        assert trial.intermediate_values == {e: pytest.approx(1.0 / e + task) for e in range(1, 26)}
        assert len([key for key in trial.user_attrs if key.startswith("epoch")]) == 25
        assert trial.value == pytest.approx(1.0 / 25 + task)


def test_grid_sampler_gives_each_task_its_own_point(tmp_path):
    sweep_dir = tmp_path / "search"
    grid = {"model.learning_rate": {"choice": [1.0e-4, 1.0e-3]}, "model.layer_decay": {"choice": [0.5, 0.75]}}
    spec = make_search(sweep_dir, sampler="grid", trials=4, parameters=grid)
    points = [
        acquire_trial(load_study(sweep_dir, task_index=task)[0], spec, sweep_dir, task).params for task in range(4)
    ]
    drawn = sorted((p["model.learning_rate"], p["model.layer_decay"]) for p in points)
    assert drawn == [(1e-4, 0.5), (1e-4, 0.75), (1e-3, 0.5), (1e-3, 0.75)]


def test_the_heartbeat_thread_beats_until_stopped_and_leaves_its_final_state(tmp_path):
    from zoobot_hpc.search.trial_job import Heartbeat

    heartbeat = Heartbeat(tmp_path, 3, interval_s=0.05).start()
    first = layout.read_json(heartbeat_path(tmp_path, 3))
    time.sleep(0.3)
    beating = layout.read_json(heartbeat_path(tmp_path, 3))
    assert beating["state"] == "running" and beating["time"] > first["time"]
    heartbeat.stop("requeued")
    stopped = layout.read_json(heartbeat_path(tmp_path, 3))
    time.sleep(0.2)
    assert layout.read_json(heartbeat_path(tmp_path, 3)) == stopped
    assert stopped["state"] == "requeued"


@pytest.mark.timeout(400)
def test_a_search_on_a_metric_to_maximise_maximises_it(tmp_path, demo_dataset):
    """`metric: validation/accuracy` makes the study maximise, every trial monitor accuracy (its best checkpoint
    and the value it reports), and `status` pick the trial with the highest accuracy."""
    config = write_test_config(
        tmp_path,
        demo_dataset,
        name="acc",
        resources__executor="local",
        trainer__max_epochs=2,
        trainer__limit_train_batches=2,
        trainer__limit_val_batches=2,
        data__num_workers=0,
    )
    search = tmp_path / "search.yaml"
    search.write_text(
        "trials: 2\nparallel: 2\nsampler: random\nseed: 1\npruner: none\nmetric: validation/accuracy\n"
        "parameters:\n  model.learning_rate: {loguniform: [1.0e-5, 1.0e-1]}\n"
    )
    plan = plan_search(config, [], search, "acc-search")
    assert (plan.metric, plan.direction) == ("validation/accuracy", "maximize")
    assert "# objective: maximize validation/accuracy" in describe_search(plan)
    submit_search(plan, allow_download=False)
    study = load_study(plan.base_dir)[0]
    wait_for(
        lambda: len(study.get_trials()) == 2 and all(t.state.is_finished() for t in study.get_trials()),
        360,
        "both trials to end",
        poll=1,
    )
    trials = study.get_trials()
    assert study.direction.name == "MAXIMIZE" and {t.state.name for t in trials} == {"COMPLETE"}
    for trial in trials:
        assert trial.value == max(trial.intermediate_values.values())
        summary = layout.read_json(plan.base_dir / trial.user_attrs["run_dir"] / layout.SUMMARY)
        assert (summary["monitor"], summary["mode"], summary["best"]) == ("validation/accuracy", "max", trial.value)
    _, best, _ = collect_trials(plan.base_dir)
    assert best.best == max(t.value for t in trials)

    search.write_text(
        "trials: 2\nmetric: validation/accuracy\ndirection: minimize\nparameters:\n"
        "  model.learning_rate: {uniform: [0.1, 0.2]}\n"
    )
    with pytest.raises(ConfigError, match="direction=minimize but validation/accuracy improves by maximizing"):
        plan_search(config, [], search, "contradiction")
    search.write_text("trials: 2\nmetric: validation/rmse\nparameters:\n  model.learning_rate: {uniform: [0.1, 0.2]}\n")
    with pytest.raises(ConfigError, match=re.escape("trainer.monitor: 'validation/rmse' is not a metric a classifier")):
        plan_search(config, [], search, "wrong-metric")
