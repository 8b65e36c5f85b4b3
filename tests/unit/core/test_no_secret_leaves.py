"""No secret leaves the run's own files (issue 22).

Each outlet (submit, sweep, search, predict, export with a push to a stand-in Hub client) runs for real (local
executor, job processes) with a secret in a setup line, in `sbatch_extra`, in a callback's `init_args`, in a
`storage:` URL and on the command line; then every file under the run / sweep / search / output directories (W&B
offline records, submitit pickles and logs, prediction files, the export) and the dry-run output are searched for the
secret values: they appear only in `config.yaml` files and sbatch scripts, owner-only, also after a second start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tests.support.jobs import child_pids, wait_for, write_test_config
from tests.support.wandb_records import offline_run_files, read_offline_run
from zoobot_hpc.cli import main
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.redaction import REDACTED
from zoobot_hpc.login.submit import describe_plan, plan_runs, submit_plan
from zoobot_hpc.search.submit import describe_search, plan_search, submit_search

SECRETS = {
    "setup line": "hf_" + "Q7sV2mX9pL4kR8tW1zY6nB3cD5fG0hJ2",
    "setup option": "ghp_" + "M3nB5vC7xZ9aS1dF2gH4jK6lP8oI0uY2tR",
    "sbatch_extra": "extra" + "Secret93d2aa7eF1",
    "callback api_key": "cbkey" + "Secret5e8f01a2",
    "callback webhook": "hook" + "Secret7c3b9d4e",
    "command line": "cli" + "Secret0a1b2c3d4e",
    "storage URL": "store" + "Secret6f7e8d9c",
}
CLI_OVERRIDES = [f"resources.sbatch_extra.auth_token={SECRETS['command line']}"]
# With sbatch scripts (`*_submission.sh`, and the local executor's `local_submission.sh`): the only files that may
# hold the values.
KEEPERS = ("config.yaml",)


def secret_config(root: Path, dataset: Path) -> Path:
    return write_test_config(
        root / "input",
        dataset,
        name="secretive",
        output_dir=str(root / "runs"),
        resources__executor="local",
        resources__setup=[
            f"export HF_TOKEN={SECRETS['setup line']}",
            f"true --token {SECRETS['setup option']}",
            "export PLAIN_SETTING=visible-value",
        ],
        resources__sbatch_extra={"comment": f"WANDB_API_KEY={SECRETS['sbatch_extra']}"},
        trainer__callbacks=[
            {
                "class_path": "tests.support.secret_probes.SecretHolder",
                "init_args": {
                    "api_key": SECRETS["callback api_key"],
                    "webhook_url": f"https://hooks.example.org/services/{SECRETS['callback webhook']}",
                    "out_dir": str(root / "probe"),
                },
            }
        ],
        trainer__max_epochs=1,
        trainer__limit_train_batches=2,
        trainer__limit_val_batches=1,
        data__num_workers=0,
    )


def leaks(*roots: Path) -> dict[Path, list[str]]:
    """Every file under `roots` that holds a secret value, with which."""
    found = {}
    for root in roots:
        for path in sorted(Path(root).rglob("*")):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                held = [name for name, value in SECRETS.items() if value.encode() in data]
                if held:
                    found[path] = held
    return found


def assert_only_kept_files_hold_secrets(*roots: Path) -> None:
    for path, held in leaks(*roots).items():
        assert path.name in KEEPERS or path.name.endswith("_submission.sh"), f"{path} holds {held}"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path} is {oct(path.stat().st_mode)}"
    for root in roots:
        for folder in Path(root).rglob("submitit"):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
        for config in Path(root).rglob("config.yaml"):
            assert stat.S_IMODE(config.stat().st_mode) == 0o600, config


def assert_clean_text(text: str, what: str) -> None:
    held = [name for name, value in SECRETS.items() if value in text]
    assert not held, f"{what} shows {held}"


def assert_callback_got_the_real_secrets(root: Path, run_names: list[str]) -> None:
    """The job trained the callback with the values redaction hid (from the run's config.yaml)."""
    for name in run_names:
        digest = json.loads((root / "probe" / f"{name}.json").read_text())
        assert digest["api_key"] == hashlib.sha256(SECRETS["callback api_key"].encode()).hexdigest()
        assert digest["HF_TOKEN"] == hashlib.sha256(SECRETS["setup line"].encode()).hexdigest()


def dry_runs(config: Path, *extra: str) -> str:
    """`submit --dry-run` output, from the command line and with the sbatch script a SLURM submit would print."""
    result = CliRunner().invoke(main, ["submit", str(config), *extra, *CLI_OVERRIDES, "--dry-run"])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_dataset):
    """One submitted run (local executor), then a second start of it from the command line (`zoobot-hpc train`
    with a secret in its arguments, which W&B records as run metadata)."""
    root = tmp_path_factory.mktemp("secrets")
    config = secret_config(root, demo_dataset)
    plan = plan_runs(config, CLI_OVERRIDES)
    submission = submit_plan(plan)
    controller = int(submission.jobs[0].job_id)
    tasks = wait_for(lambda: child_pids(controller), 60, "the local job's task process")
    for pid in [controller, *tasks]:  # what `ps` shows every user of the machine
        with contextlib.suppress(FileNotFoundError):
            assert_clean_text(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"), f"process {pid}")
    submission.jobs[0].result()
    run_dir = plan.runs[0].run_dir
    assert layout.read_json(run_dir / layout.SUMMARY) is not None
    first_inode = (run_dir / layout.CONFIG).stat().st_ino
    second = subprocess.run(
        [sys.executable, "-m", "zoobot_hpc.cli", "train", str(config), *CLI_OVERRIDES, "--run-dir", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert (run_dir / layout.CONFIG).stat().st_ino != first_inode, "the second start rewrote config.yaml"
    return root, config, run_dir, submission


@pytest.mark.timeout(900)
@pytest.mark.parametrize("outlet", ["submit", "sweep", "search", "predict", "export"])
def test_secrets_stay_in_config_yaml_and_the_sbatch_script(outlet, trained, demo_dataset, tmp_path, monkeypatch):
    root, config, run_dir, _ = trained
    if outlet == "submit":
        assert_clean_text(dry_runs(config), "submit --dry-run")
        plan = plan_runs(config, CLI_OVERRIDES)
        plan.executor = "slurm"  # the script a SLURM submit would send (no cluster is asked)
        script_dry_run = describe_plan(plan)
        assert "#SBATCH --comment" in script_dry_run and f"HF_TOKEN={REDACTED}" in script_dry_run
        assert_clean_text(script_dry_run, "submit --dry-run (sbatch script)")
        assert_callback_got_the_real_secrets(root, [run_dir.name])
        assert len(offline_run_files(run_dir)) == 2  # both starts logged to W&B
        for run_file in offline_run_files(run_dir):
            logged = read_offline_run(run_file).config
            assert logged["trainer"]["callbacks"][0]["init_args"]["api_key"] == REDACTED
        assert_only_kept_files_hold_secrets(root / "runs")
        kept = (run_dir / layout.CONFIG).read_bytes()  # the run's config.yaml keeps the values
        assert all(value.encode() in kept for name, value in SECRETS.items() if name != "storage URL")
        return

    if outlet == "sweep":
        sweep = ["model.learning_rate=1e-3,2e-3", "--sweep-name", "secret-sweep"]
        assert_clean_text(dry_runs(config, *sweep), "sweep --dry-run")
        plan = plan_runs(config, ["model.learning_rate=1e-3,2e-3", *CLI_OVERRIDES], sweep_name="secret-sweep")
        jobs = submit_plan(plan).jobs
        for job in jobs:
            job.result()
        assert_callback_got_the_real_secrets(root, [run.name for run in plan.runs])
        assert (plan.base_dir / layout.SWEEP).exists()
        reported = CliRunner().invoke(main, ["report", str(plan.base_dir)])
        assert reported.exit_code == 0, reported.output
        assert_clean_text(reported.output, "report output")
        assert (plan.base_dir / "report" / "runs.csv").exists()
        assert_only_kept_files_hold_secrets(plan.base_dir)
        return

    if outlet == "search":
        db = root / "runs" / "secret-search.db"
        storage = f"sqlite:///file:{db}?mode=rwc&auth_token={SECRETS['storage URL']}&uri=true"
        search_file = tmp_path / "search.yaml"
        search_file.write_text(
            yaml.safe_dump(
                {
                    "trials": 2,
                    "parallel": 1,
                    "sampler": "random",
                    "pruner": "none",
                    "storage": storage,
                    "parameters": {"model.learning_rate": {"loguniform": [1.0e-4, 1.0e-3]}},
                }
            )
        )
        search = ["--search", str(search_file), "--sweep-name", "secret-search"]
        assert_clean_text(dry_runs(config, *search), "search --dry-run")
        plan = plan_search(config, CLI_OVERRIDES, search_file, "secret-search")
        plan.executor = "slurm"
        script_dry_run = describe_search(plan)
        assert "auth_token=<redacted>" in script_dry_run and "#SBATCH --array" in script_dry_run
        assert_clean_text(script_dry_run, "search --dry-run (sbatch script)")
        plan = plan_search(config, CLI_OVERRIDES, search_file, "secret-search")
        for job in submit_search(plan):
            job.result()
        trials = sorted(p for p in plan.base_dir.glob("trial*") if p.is_dir())
        assert len(trials) == 2
        assert all(layout.read_json(t / layout.SUMMARY)["trial"]["state"] == "COMPLETE" for t in trials)
        assert_callback_got_the_real_secrets(root, [t.name for t in trials])
        status = CliRunner().invoke(main, ["status", str(plan.base_dir)])  # search.json: no storage password
        assert status.exit_code != 0 and "ZOOBOT_HPC_SEARCH_STORAGE" in status.output, status.output
        monkeypatch.setenv("ZOOBOT_HPC_SEARCH_STORAGE", storage)
        status = CliRunner().invoke(main, ["status", str(plan.base_dir)])
        assert status.exit_code == 0 and status.output.count("COMPLETE") >= 2, status.output
        assert_clean_text(status.output, "search status")
        assert_only_kept_files_hold_secrets(plan.base_dir, db)
        return

    checkpoint = run_dir / layout.CHECKPOINTS / "last.ckpt"
    if outlet == "predict":
        out = tmp_path / "predictions" / "val.h5"
        predicted = CliRunner().invoke(
            main, ["predict", str(checkpoint), str(demo_dataset), "--split", "val", "--out", str(out), "--wait"]
        )
        assert predicted.exit_code == 0, predicted.output
        assert_clean_text(predicted.output, "predict output")
        assert out.exists()
        assert_only_kept_files_hold_secrets(out.parent, run_dir)
        return

    import huggingface_hub

    api = UploadRecorder()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: api)  # the network boundary: nothing leaves
    out = tmp_path / "export"
    exported = CliRunner().invoke(main, ["export", str(checkpoint), str(out), "--push", "astro-lab/secretive"])
    assert exported.exit_code == 0, exported.output
    assert "pushed (private)" in exported.output
    assert api.created["private"] is True
    assert set(api.uploaded) == {"README.md", "config.json", "head.safetensors", "model.safetensors"}
    for name, data in api.uploaded.items():
        assert_clean_text(data.decode("latin-1"), f"uploaded {name}")
    card = (out / "README.md").read_text()
    published = yaml.safe_load(card.split("```yaml\n")[1].split("```")[0])
    assert set(published) == {"model", "data", "trainer"}  # no resources (setup lines), tracking or output_dir
    assert published["data"]["dataset_dir"] == demo_dataset.name  # the dataset's name, not its path
    assert str(root / "runs") not in card and f"source: `{demo_dataset}" not in card
    assert not leaks(out)


class UploadRecorder:
    """Stands in for `huggingface_hub.HfApi`: records the repository it would create and every byte it would send."""

    def __init__(self) -> None:
        self.created: dict = {}
        self.uploaded: dict[str, bytes] = {}

    def create_repo(self, **kwargs):
        self.created = kwargs

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        self.uploaded = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/abc"})()


def test_push_is_public_only_when_asked(trained, tmp_path, monkeypatch):
    import huggingface_hub

    _, _, run_dir, _ = trained
    api = UploadRecorder()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: api)
    checkpoint = run_dir / layout.CHECKPOINTS / "last.ckpt"
    result = CliRunner().invoke(main, ["export", str(checkpoint), str(tmp_path / "e"), "--push", "o/r", "--public"])
    assert result.exit_code == 0, result.output
    assert api.created["private"] is False and "pushed (public)" in result.output


def test_an_export_holding_a_token_is_refused_in_one_line(trained, tmp_path):
    import torch

    _, _, run_dir, _ = trained
    checkpoint = torch.load(run_dir / layout.CHECKPOINTS / "last.ckpt", map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["class_names"] = ["smooth", SECRETS["setup line"], "edge-on"]
    crafted = tmp_path / "runs" / "leaky" / "checkpoints" / "last.ckpt"
    crafted.parent.mkdir(parents=True)
    torch.save(checkpoint, crafted)
    out = tmp_path / "export"
    result = CliRunner().invoke(main, ["export", str(crafted), str(out)])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "config.json holds a token-looking string" in lines[0], result.output
    assert SECRETS["setup line"] not in result.output
    assert not out.exists() and not any(p.name.startswith(".export") for p in tmp_path.iterdir())


FAKE_SLURM = {
    "sbatch": 'echo "Submitted batch job 4242"',  # what submitit parses; nothing is queued
    **{command: "exit 1" for command in ("scontrol", "sinfo", "squeue", "sacct", "scancel")},
}


@pytest.mark.parametrize("kind", ["run", "search"])
def test_a_slurm_submit_keeps_the_secrets_in_its_owner_only_sbatch_script(kind, tmp_path, demo_dataset, monkeypatch):
    """The files a SLURM submit writes, with stand-ins for SLURM's commands (no cluster is asked)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command, body in FAKE_SLURM.items():
        (bin_dir / command).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / command).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config = secret_config(tmp_path, demo_dataset)
    overrides = [*CLI_OVERRIDES, "resources.executor=slurm"]
    if kind == "run":
        plan = plan_runs(config, overrides)
        submit_plan(plan)
        base = plan.base_dir
    else:
        search_file = tmp_path / "search.yaml"
        storage = f"sqlite:///file:{tmp_path / 'study.db'}?mode=rwc&auth_token={SECRETS['storage URL']}&uri=true"
        search_file.write_text(
            yaml.safe_dump(
                {"trials": 2, "storage": storage, "parameters": {"model.learning_rate": {"uniform": [1e-4, 1e-3]}}}
            )
        )
        plan = plan_search(config, overrides, search_file, "slurm-search")
        submit_search(plan)
        base = plan.base_dir
    script = base / "submitit" / "4242_submission.sh"
    assert stat.S_IMODE(script.stat().st_mode) == 0o600
    held = set(leaks(script.parent)[script])
    assert {"setup line", "setup option"} <= held
    assert kind == "run" or "storage URL" in held  # handed to the tasks through their environment
    assert_only_kept_files_hold_secrets(base)
    assert [p.name for p in base.rglob("*.pkl")] and all(
        stat.S_IMODE(p.stat().st_mode) == 0o600 for p in base.rglob("*.pkl")
    )
