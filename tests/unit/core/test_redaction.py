"""The one redaction point (`zoobot_hpc.core.redaction`): what it hides, by key name and by form, and what it leaves."""

from __future__ import annotations

import os
import stat

import pytest
from click.testing import CliRunner

from tests.support.jobs import write_test_config
from zoobot_hpc.cli import main
from zoobot_hpc.core import atomic
from zoobot_hpc.core.config import ConfigError, build_config
from zoobot_hpc.core.redaction import REDACTED, literal_secret, redact_argv, redact_text, redact_value

HF = "hf_" + "a1B2c3D4e5F6g7H8i9J0kLmN"
GHP = "ghp_" + "Z9y8X7w6V5u4T3s2R1q0PoNmLk"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"huggingface-cli login --token {HF}", f"huggingface-cli login --token {REDACTED}"),
        (f"huggingface-cli login --token={HF}", f"huggingface-cli login --token={REDACTED}"),
        (f"echo {HF} | huggingface-cli login", f"echo {REDACTED} | huggingface-cli login"),
        ("curl -H 'Authorization: Bearer abc.def-1' x", f"curl -H 'Authorization: Bearer {REDACTED}' x"),
        ("curl -H 'Authorization: token abc' x", f"curl -H 'Authorization: token {REDACTED}' x"),
        ("export DB_PASS=hunter2 GITHUB_PAT=zzz", f"export DB_PASS={REDACTED} GITHUB_PAT={REDACTED}"),
        ("export HF_TOKEN=$(cat ~/.hf)", f"export HF_TOKEN={REDACTED}"),
        ("export SLACK_WEBHOOK=https://hooks/x", f"export SLACK_WEBHOOK={REDACTED}"),
        ("postgresql://user:PASSWORD@host/db", "postgresql://user:***@host/db"),
        (f"git clone https://{GHP}@github.com/o/r", f"git clone https://{REDACTED}@github.com/o/r"),
        ("export OPENAI=sk-" + "A" * 24, f"export OPENAI={REDACTED}"),
        ("--export=ALL,MY_SECRET=s3 SEED=42", f"--export=ALL,MY_SECRET={REDACTED} SEED=42"),
        ("export S='sqlite:///f?auth_token=x&uri=1'", f"export S='sqlite:///f?auth_token={REDACTED}&uri=1'"),
        ("--comment='HF_TOKEN=abc'", f"--comment='HF_TOKEN={REDACTED}'"),
    ],
)
def test_secret_forms_are_hidden(text, shown):
    assert redact_text(text) == shown
    assert redact_text(shown) == shown  # idempotent


@pytest.mark.parametrize(
    "text",
    [
        "hf_hub:timm/convnext_nano.in12k",
        "pip install hf_transfer",
        "sqlite:////lustre/me/study.db",
        "--signal=USR2@120",
        "export PATH=$PATH:/opt/bin OMP_NUM_THREADS=4",
        "module load cuda/12.4 && source ~/venv/bin/activate",
        "--no-auth --verbose",
    ],
)
def test_ordinary_text_is_left_alone(text):
    assert redact_text(text) == text
    assert not literal_secret(text)


def test_a_literal_secret_is_told_from_one_taken_from_the_environment_or_a_file():
    assert literal_secret(f"export HF_TOKEN={HF}")
    assert literal_secret("export WANDB_API_KEY=abc123")
    assert not literal_secret("export HF_TOKEN=$(cat ~/.hf_token)")
    assert not literal_secret('huggingface-cli login --token "$HF_TOKEN"')


def test_the_config_tree_is_redacted_by_key_name_and_by_form():
    tree = {
        "trainer": {
            "callbacks": [
                {
                    "class_path": "x.Notifier",
                    "init_args": {"api_key": "k", "webhook_url": "https://h/x", "retries": 3, "auth": None},
                }
            ]
        },
        "resources": {"setup": [f"echo {HF}"], "sbatch_extra": {"comment": "WANDB_API_KEY=x", "mail-type": "END"}},
        "flags": {"use_auth": True},
    }
    assert redact_value(tree) == {
        "trainer": {
            "callbacks": [
                {
                    "class_path": "x.Notifier",
                    "init_args": {"api_key": REDACTED, "webhook_url": REDACTED, "retries": 3, "auth": None},
                }
            ]
        },
        "resources": {
            "setup": [f"echo {REDACTED}"],
            "sbatch_extra": {"comment": f"WANDB_API_KEY={REDACTED}", "mail-type": "END"},
        },
        "flags": {"use_auth": True},
    }


def test_the_command_line_is_redacted():
    argv = ["train", "c.yaml", "--token", "abc", f'resources.setup=["export HF_TOKEN={HF}"]', "--run-dir", "r"]
    assert redact_argv(argv) == [
        "train",
        "c.yaml",
        "--token",
        REDACTED,
        f'resources.setup=["export HF_TOKEN={REDACTED}"]',
        "--run-dir",
        "r",
    ]


def test_a_config_error_does_not_echo_the_secret(tmp_path, demo_dataset):
    raw = {"data": {"dataset_dir": "d"}, "model": {"kind": "classifier", "name": "m", "num_classes": 2}}
    with pytest.raises(ConfigError) as error:
        build_config({**raw, "resources": {"setup": f"export HF_TOKEN={HF}"}})
    assert HF not in str(error.value) and f"HF_TOKEN={REDACTED}" in str(error.value)
    config = write_test_config(tmp_path, demo_dataset)
    result = CliRunner().invoke(main, ["submit", str(config), f"resources.setup=export HF_TOKEN={HF}", "--dry-run"])
    assert result.exit_code != 0 and HF not in result.output and "resources.setup" in result.output


def test_submit_warns_in_one_line_about_a_literal_secret(tmp_path, demo_dataset):
    config = write_test_config(
        tmp_path, demo_dataset, resources__executor="local", resources__setup=[f"export HF_TOKEN={HF}"]
    )
    result = CliRunner().invoke(main, ["submit", str(config), "--dry-run"])
    assert result.exit_code == 0, result.output
    [warning] = [line for line in result.output.splitlines() if "literal secret" in line]
    assert warning.startswith("warning: resources.setup[0]") and "$(cat ~/" in warning and "environment" in warning
    assert HF not in result.output
    quiet = write_test_config(
        tmp_path / "q", demo_dataset, resources__executor="local", resources__setup=["export HF_TOKEN=$(cat ~/.hf)"]
    )
    assert "literal secret" not in CliRunner().invoke(main, ["submit", str(quiet), "--dry-run"]).output


def test_owner_only_files_stay_owner_only_across_rewrites(tmp_path):
    target = tmp_path / "config.yaml"
    old = os.umask(0o002)
    try:
        atomic.write_text(target, "a: 1\n", mode=atomic.OWNER_ONLY)
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        target.chmod(0o644)
        atomic.write_text(target, "a: 2\n", mode=atomic.OWNER_ONLY)
        assert stat.S_IMODE(target.stat().st_mode) == 0o600 and target.read_text() == "a: 2\n"
        folder = atomic.private_directory(tmp_path / "submitit")
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    finally:
        os.umask(old)
