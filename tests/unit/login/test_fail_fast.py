"""Every login-node check fails with one line naming the problem, and nothing is submitted or written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tests.support.jobs import write_test_config
from zoobot_hpc.cli import main
from zoobot_hpc.core.config import dump_config, load_config
from zoobot_hpc.login.preflight import check_scheduler_kwargs, check_timm_kwargs


def run_submit(config: Path, *args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, ["submit", str(config), *args], env=env)


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def assert_nothing_submitted(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert not list(runs.rglob("submitit")) if runs.exists() else True
    assert not list(runs.rglob("submission.json")) if runs.exists() else True


@pytest.fixture
def dataset_copy(tmp_path, demo_dataset) -> Path:
    copy = tmp_path / "dataset"
    shutil.copytree(demo_dataset, copy)
    return copy


def test_config_typo(tmp_path, demo_dataset):
    config = write_test_config(tmp_path, demo_dataset, resources__executor="local")
    result = run_submit(config, "model.learning_rat=1e-3")
    assert_one_line_error(result, "unknown key 'model.learning_rat'")
    assert_nothing_submitted(tmp_path)


def test_missing_shard(tmp_path, dataset_copy):
    config = write_test_config(tmp_path, dataset_copy, resources__executor="local")
    shard = sorted(dataset_copy.glob("train-*.h5"))[0]
    shard.unlink()
    assert_one_line_error(run_submit(config), "data.dataset_dir", shard.name)
    assert_nothing_submitted(tmp_path)


def test_label_column_the_model_needs_is_missing(tmp_path, demo_dataset):
    config = write_test_config(tmp_path, demo_dataset, resources__executor="local", model__label_col="morphology")
    assert_one_line_error(run_submit(config), "morphology")
    assert_nothing_submitted(tmp_path)


def test_encoder_weights_not_cached(tmp_path, demo_dataset):
    config = write_test_config(
        tmp_path,
        demo_dataset,
        resources__executor="local",
        model__name="hf_hub:nobody/zoobot-encoder-not-cached",
        model__pretrained=True,
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf-cache")}
    assert_one_line_error(run_submit(config, "--no-download", env=env), "model.name", "not-cached")
    assert_nothing_submitted(tmp_path)


def test_local_executor_cannot_span_nodes(tmp_path, demo_dataset):
    config = write_test_config(tmp_path, demo_dataset, resources__executor="local", resources__nodes=2)
    assert_one_line_error(run_submit(config), "resources.nodes=2")
    assert_nothing_submitted(tmp_path)


def test_tasks_must_match_gpus(tmp_path, demo_dataset):
    config = write_test_config(tmp_path, demo_dataset, resources__tasks_per_node=1, resources__gpus_per_node=2)
    assert_one_line_error(run_submit(config), "tasks_per_node=1", "gpus_per_node=2")


def test_output_dir_not_writable(tmp_path, demo_dataset):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    config = write_test_config(tmp_path, demo_dataset, resources__executor="local", output_dir=str(blocker / "runs"))
    assert_one_line_error(run_submit(config), "output_dir", "not writable")


def test_callback_that_does_not_import(tmp_path, demo_dataset):
    config = write_test_config(
        tmp_path, demo_dataset, resources__executor="local", trainer__callbacks=[{"class_path": "nowhere.Callback"}]
    )
    assert_one_line_error(run_submit(config), "trainer.callbacks", "nowhere.Callback")
    assert_nothing_submitted(tmp_path)


def test_dry_run_prints_config_and_sbatch_script_and_submits_nothing(tmp_path, demo_dataset):
    config = write_test_config(tmp_path, demo_dataset, resources__executor="slurm", resources__partition="debug")
    result = run_submit(config, "model.learning_rate=1e-4,3e-4", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.count("learning_rate: 0.0003") == 1
    assert "#SBATCH --array=0-1%" in result.output
    assert "#SBATCH --partition=debug" in result.output
    assert "#SBATCH --signal=USR2@" in result.output
    assert "--kill-on-bad-exit=1" in result.output
    assert_nothing_submitted(tmp_path)


def test_sweeping_resources_is_refused(tmp_path, demo_dataset):
    config = write_test_config(tmp_path, demo_dataset, resources__executor="local")
    assert_one_line_error(run_submit(config, "resources.cpus_per_task=1,2"), "resources.cpus_per_task")
    assert_nothing_submitted(tmp_path)


def test_resubmitting_a_changed_model_into_a_run_dir_with_checkpoints_is_refused(tmp_path, demo_dataset):
    config = write_test_config(tmp_path, demo_dataset, resources__executor="local", name="taken")
    run_dir = tmp_path / "runs" / "taken"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(config.read_text().replace("learning_rate: 0.001", "learning_rate: 0.0003"))
    torch.save({"global_step": 3}, run_dir / "checkpoints" / "last.ckpt")
    assert_one_line_error(run_submit(config), str(run_dir), "model.learning_rate=0.0003")
    assert not (run_dir / "submission.json").exists()


def test_signal_delay_must_leave_time_to_train(tmp_path, demo_dataset):
    config = write_test_config(tmp_path, demo_dataset, resources__executor="local", resources__time_min=2)
    assert_one_line_error(run_submit(config, "resources.signal_delay_s=120"), "resources.signal_delay_s=120")
    assert_nothing_submitted(tmp_path)


def test_local_executor_needs_the_gpus_it_asks_for(tmp_path, demo_dataset):
    gpus = torch.cuda.device_count() + 1
    config = write_test_config(
        tmp_path,
        demo_dataset,
        resources__executor="local",
        resources__gpus_per_node=gpus,
        resources__tasks_per_node=gpus,
    )
    assert_one_line_error(run_submit(config), f"resources.gpus_per_node={gpus}")
    assert_nothing_submitted(tmp_path)


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        (
            "model.scheduler_kwargs={sched: cosine, num_epochs: 2, warmup_epoch: 1}",
            ["model.scheduler_kwargs", "'warmup_epoch'", "did you mean 'warmup_epochs'"],
        ),
        (
            "model.scheduler_kwargs={sched: wsd, num_epochs: 2, decay_epochs: 20}",
            ["model.scheduler_kwargs", "rejected by timm"],
        ),
        ("model.timm_kwargs={drop_path_rat: 0.1}", ["model.timm_kwargs.drop_path_rat", "test_convnext"]),
    ],
)
def test_scheduler_and_encoder_keyword_typos_fail_on_the_login_node(tmp_path, demo_dataset, override, fragments):
    config = write_test_config(tmp_path, demo_dataset, resources__executor="local")
    assert_one_line_error(run_submit(config, override), *fragments)
    assert_nothing_submitted(tmp_path)


def test_valid_scheduler_and_encoder_keywords_pass_the_login_node_checks(tmp_path, demo_dataset):
    path = write_test_config(tmp_path, demo_dataset, resources__executor="local")
    config = load_config(path, ["model.timm_kwargs={drop_path_rate: 0.1}"])
    check_timm_kwargs(config)
    check_scheduler_kwargs(config)


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["data.dataset_dir=/nowhere/shards"], ["data.dataset_dir", "/nowhere/shards", "does not exist"]),
        (["model.label_col=morphology"], ["data.dataset_dir", "label column 'morphology' does not exist"]),
        (
            ["model.scheduler_kwargs={sched: cosine, num_epochs: 2, warmup_epoch: 1}"],
            ["model.scheduler_kwargs", "'warmup_epoch'", "did you mean 'warmup_epochs'"],
        ),
    ],
)
def test_dry_run_runs_the_login_node_checks_and_fails_in_one_line(tmp_path, demo_dataset, overrides, fragments):
    config = write_test_config(tmp_path, demo_dataset, resources__executor="local")
    assert_one_line_error(run_submit(config, *overrides, "--dry-run"), *fragments)
    assert not (tmp_path / "runs").exists()


def test_torch_checks_are_cached_by_versions_and_kwargs(tmp_path, demo_dataset):
    from zoobot_hpc.login.check_cache import cache_path, check_key

    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    config = write_test_config(tmp_path, demo_dataset, resources__executor="local")
    sweep = ["model.scheduler_kwargs={sched: cosine, num_epochs: 2, warmup_epochs: 0}", "model.learning_rate=1e-3,3e-3"]
    first = run_submit(config, *sweep, "--dry-run", env=env)
    assert first.exit_code == 0, first.output
    import os

    os.environ["XDG_CACHE_HOME"] = env["XDG_CACHE_HOME"]
    try:
        entries = json.loads(cache_path().read_text())
        key = check_key("scheduler", {"scheduler_kwargs": {"sched": "cosine", "num_epochs": 2, "warmup_epochs": 0}})
        kinds = sorted(entry["kind"] for entry in entries.values())
        assert key in entries and kinds == ["parameters", "scheduler"], "one check of each kind for the whole sweep"
    finally:
        del os.environ["XDG_CACHE_HOME"]
    assert not (tmp_path / "runs").exists()


def _run_dir_stopped_on(tmp_path: Path, config: Path, tasks_per_node: int) -> Path:
    run_dir = tmp_path / "runs" / "elastic"
    (run_dir / "checkpoints").mkdir(parents=True)
    previous = load_config(config, [f"resources.tasks_per_node={tasks_per_node}"])
    (run_dir / "config.yaml").write_text(dump_config(previous))
    torch.save({"global_step": 3}, run_dir / "checkpoints" / "last.ckpt")
    return run_dir


def test_a_resume_on_fewer_ranks_keeps_the_global_batch_by_accumulating(tmp_path, demo_dataset):
    config = write_test_config(tmp_path, demo_dataset, resources__executor="local", name="elastic")
    _run_dir_stopped_on(tmp_path, config, tasks_per_node=2)
    result = run_submit(config, "resources.tasks_per_node=1", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "accumulate_grad_batches: 2" in result.output


def test_a_world_size_that_cannot_keep_the_global_batch_is_refused(tmp_path, demo_dataset):
    config = write_test_config(tmp_path, demo_dataset, resources__executor="local", name="elastic")
    run_dir = _run_dir_stopped_on(tmp_path, config, tasks_per_node=2)
    result = run_submit(config, "resources.tasks_per_node=3")
    assert_one_line_error(result, str(run_dir), "global batch of 16", "data.batch_size=8", "3 rank(s)")
    assert_nothing_submitted(tmp_path)
