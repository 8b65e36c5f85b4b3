"""Secrets in setup lines and sbatch_extra stay in the run's config.yaml (and the sbatch script): W&B records,
the pickled job, logs, prediction files and dry-run output show them redacted."""

from __future__ import annotations

import h5py
import pytest
import yaml
from click.testing import CliRunner

from tests.support.jobs import write_test_config
from tests.support.wandb_records import offline_run_files, read_offline_run
from zoobot_hpc.cli import main
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.redaction import REDACTED, redact_text
from zoobot_hpc.login.status import collect_status
from zoobot_hpc.login.submit import plan_runs, submit_plan

SETUP_SECRET = "setup-secret-6b1f0c2d"
EXTRA_SECRET = "extra-secret-93d2aa7e"


def secret_config(tmp_path, dataset, executor: str = "local"):
    return write_test_config(
        tmp_path,
        dataset,
        name="secretive",
        resources__executor=executor,
        resources__setup=[f"export HF_TOKEN={SETUP_SECRET}", "export PLAIN_SETTING=visible-value"],
        resources__sbatch_extra={"comment": f"run with WANDB_API_KEY={EXTRA_SECRET}"},
        trainer__max_epochs=1,
        trainer__limit_train_batches=2,
        data__num_workers=0,
    )


def files_holding_secrets(root):
    secrets = (SETUP_SECRET.encode(), EXTRA_SECRET.encode())
    return sorted(p for p in root.rglob("*") if p.is_file() and any(s in p.read_bytes() for s in secrets))


def test_redact_text_hides_values_of_secret_looking_names_only():
    line = "export HF_TOKEN=abc WANDB_API_KEY='a b' db_password=\"x y\" --export=ALL,MY_SECRET=s3 SEED=42"
    assert redact_text(line) == (
        f"export HF_TOKEN={REDACTED} WANDB_API_KEY={REDACTED} db_password={REDACTED} "
        f"--export=ALL,MY_SECRET={REDACTED} SEED=42"
    )
    assert (
        redact_text("export AWS_SHARED_CREDENTIALS_FILE=/home/me/c") == f"export AWS_SHARED_CREDENTIALS_FILE={REDACTED}"
    )


@pytest.mark.timeout(300)
def test_a_secret_in_a_setup_line_reaches_only_the_runs_config_yaml(tmp_path, demo_dataset):
    config = secret_config(tmp_path / "input", demo_dataset)
    submission = submit_plan(plan_runs(config))
    run_dir = submission.plan.runs[0].run_dir
    assert [s.state for s in collect_status(run_dir)] == ["RUNNING"]
    submission.jobs[0].result()
    assert [s.state for s in collect_status(run_dir)] == ["COMPLETED"]
    assert layout.read_json(run_dir / layout.SUMMARY) is not None

    checkpoint = run_dir / layout.CHECKPOINTS / "last.ckpt"
    predicted = CliRunner().invoke(
        main, ["predict", str(checkpoint), str(demo_dataset), "--here", "--split", "val", "data.num_workers=0"]
    )
    assert predicted.exit_code == 0, predicted.output
    [prediction] = run_dir.glob("predict-*.h5")

    local_script = run_dir / "submitit" / "local_submission.sh"  # the local job's sbatch script, 0600
    assert set(files_holding_secrets(tmp_path)) == {run_dir / layout.CONFIG, config, local_script}
    kept = yaml.safe_load((run_dir / layout.CONFIG).read_text())["resources"]
    assert kept["setup"][0] == f"export HF_TOKEN={SETUP_SECRET}"

    [run_file] = offline_run_files(run_dir)
    logged = read_offline_run(run_file).config["resources"]
    assert logged["setup"] == [f"export HF_TOKEN={REDACTED}", "export PLAIN_SETTING=visible-value"]
    assert logged["sbatch_extra"] == {"comment": f"run with WANDB_API_KEY={REDACTED}"}
    with h5py.File(prediction, "r") as handle:
        provenance = yaml.safe_load(handle.attrs["config"])
    assert provenance["resources"]["setup"][0] == f"export HF_TOKEN={REDACTED}"


def test_dry_run_shows_the_sbatch_script_and_config_with_secrets_redacted(tmp_path, demo_dataset):
    config = secret_config(tmp_path, demo_dataset, executor="slurm")
    result = CliRunner().invoke(main, ["submit", str(config), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"export HF_TOKEN={REDACTED}" in result.output
    assert "#SBATCH --comment" in result.output
    assert SETUP_SECRET not in result.output and EXTRA_SECRET not in result.output
