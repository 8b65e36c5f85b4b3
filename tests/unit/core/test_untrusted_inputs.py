"""Nothing a shared directory holds runs as code, and every sbatch line means what it says (issue 22).

- a planted `submission.json` pointing at a crafted result pickle: `status` executes nothing and says why;
- a crafted checkpoint with `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`: `predict` and `export` refuse it, no side effect;
- `account: "astro\\n"`: `submit` refuses naming the key;
- random printable values that validate give an sbatch script that passes `bash -n` and keeps every directive.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shlex
import shutil
import string
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tests.support.jobs import write_test_config
from zoobot_hpc.backends.slurm import SlurmBackend
from zoobot_hpc.cli import main
from zoobot_hpc.core.config import ConfigError, build_config


class Planted:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The command line in its own process (as a user would run it)."""
    return subprocess.run(
        [sys.executable, "-m", "zoobot_hpc.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})},
    )


def test_status_never_unpickles_what_a_run_dir_points_at(tmp_path, demo_dataset):
    config = write_test_config(tmp_path / "input", demo_dataset)
    run_dir = tmp_path / "shared" / "run"
    elsewhere = tmp_path / "elsewhere"
    run_dir.mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copy(config, run_dir / "config.yaml")
    marker = tmp_path / "marker"
    with open(elsewhere / "4194301_0_result.pkl", "wb") as handle:
        pickle.dump(("error", Planted(marker)), handle)
    (run_dir / "submission.json").write_text(
        json.dumps({"executor": "local", "job_id": "4194301", "submitit_folder": str(elsewhere)})
    )
    result = cli("status", str(run_dir))
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), "status ran the planted pickle"
    assert "ENDED" in result.stdout and "result pickle is not read" in result.stdout, result.stdout


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint that looks like a zoobot-hpc one and runs `touch MARKER` when fully unpickled."""
    import torch

    torch.save({"zoobot_hpc_kind": "classifier", "hyper_parameters": {"payload": Planted(marker)}}, path)
    return path


@pytest.mark.parametrize("command", ["predict", "export"])
def test_a_crafted_checkpoint_is_refused_whatever_torch_is_told(command, tmp_path, demo_dataset):
    marker = tmp_path / "marker"
    write_test_config(tmp_path / "run", demo_dataset)  # the run's config.yaml, which predict reads
    (tmp_path / "run" / "checkpoints").mkdir()
    checkpoint = crafted_checkpoint(tmp_path / "run" / "checkpoints" / "crafted.ckpt", marker)
    args = [str(checkpoint), str(tmp_path / "out")]
    if command == "predict":
        args = [str(checkpoint), str(demo_dataset), "--here", "--out", str(tmp_path / "out.h5")]
    result = cli(command, *args, env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    assert result.returncode != 0
    assert "not a readable checkpoint" in result.stderr, result.stderr
    assert not marker.exists(), f"{command} ran the crafted checkpoint"
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.h5").exists()


def test_a_newline_in_an_sbatch_value_is_refused_naming_the_key(tmp_path, demo_dataset):
    config = write_test_config(tmp_path, demo_dataset, resources__account="astro\n", resources__executor="local")
    result = CliRunner().invoke(main, ["submit", str(config), "--dry-run"])
    assert result.exit_code != 0
    [line] = result.output.strip().splitlines()
    assert "resources.account" in line and "control character" in line, line
    assert not (tmp_path / "runs").exists()


BASE = {
    "data": {"dataset_dir": "/data/shards"},
    "model": {"kind": "classifier", "name": "convnext_nano", "num_classes": 3},
    "resources": {"executor": "slurm", "setup": ["echo ready"]},
}
NAME_CHARS = string.ascii_letters + string.digits + "_.+-,"
CONSTRAINT_CHARS = NAME_CHARS + "&|*[]()!:="


def _random_text(rng: random.Random, alphabet: str, low: int = 1, high: int = 12) -> str:
    """Mostly from `alphabet`, now and then any printable character (whitespace and control characters too)."""
    chars = []
    for _ in range(rng.randint(low, high)):
        pool = alphabet if rng.random() < 0.9 else string.printable + "\x7f\u2028\x85"
        chars.append(rng.choice(pool))
    return "".join(chars)


def _random_resources(rng: random.Random) -> dict:
    resources = dict(BASE["resources"])
    for key, alphabet in (("partition", NAME_CHARS), ("account", NAME_CHARS), ("qos", NAME_CHARS)):
        if rng.random() < 0.7:
            resources[key] = _random_text(rng, alphabet)
    if rng.random() < 0.5:
        resources["constraint"] = _random_text(rng, CONSTRAINT_CHARS)
    extra = {}
    for _ in range(rng.randint(0, 4)):
        name = rng.choice(string.ascii_lowercase) + _random_text(rng, string.ascii_lowercase + "-_", 1, 8)
        value = rng.choice([True, rng.randint(0, 10**6), _random_text(rng, string.printable.strip() + " ", 0, 20)])
        extra[f"x{name}"] = value  # never one of the options submitit sets itself
    resources["sbatch_extra"] = extra
    return resources


def directives(script: str) -> list[str]:
    """The `#SBATCH` lines sbatch reads: those before the first line that is neither a comment nor blank."""
    found = []
    for line in script.splitlines()[1:]:
        if line.startswith("#SBATCH"):
            found.append(line)
        elif line.strip() and not line.startswith("#"):
            break
    return found


def test_random_values_that_validate_give_a_script_that_parses_and_keeps_every_directive(tmp_path):
    rng = random.Random(22)
    valid = refused = 0
    for _ in range(300):
        raw = {**BASE, "resources": _random_resources(rng)}
        try:
            config = build_config(raw)
        except ConfigError as error:
            refused += 1
            assert str(error).count("\n") == 0 and "resources." in str(error)
            continue
        valid += 1
        script = SlurmBackend().job_script(config, tmp_path / "submitit", "job", 3)
        parsed = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
        assert parsed.returncode == 0, f"{parsed.stderr}\n{script}"
        read = directives(script)
        assert read == [line for line in script.splitlines() if line.startswith("#SBATCH")], script
        options = {}
        for line in read:
            option, _, value = line.removeprefix("#SBATCH ").partition("=")
            options[option] = shlex.split(value)[0] if value else True
        for required in ("--requeue", "--signal", "--time", "--array", "--nodes"):
            assert required in options, script
        res = config.resources
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(res, key) is not None:
                assert options[f"--{key}"] == getattr(res, key), script
        for name, value in res.sbatch_extra.items():
            assert options[f"--{name.replace('_', '-')}"] == (True if value is True else str(value)), script
    assert valid > 50 and refused > 20, (valid, refused)


def test_config_field_names_are_not_mistaken_for_secrets():
    from zoobot_hpc.core import config as sections
    from zoobot_hpc.core.augment_config import AugmentConfig
    from zoobot_hpc.core.redaction import looks_secret

    models = [AugmentConfig, sections.RunConfig, sections.CallbackSpec]
    models += [getattr(sections, n) for n in dir(sections) if n.endswith("Settings") and n != "ModelSettings"]
    names = {name for model in models for name in model.model_fields}
    assert len(names) > 60
    assert sorted(name for name in names if looks_secret(name)) == []


def test_dry_run_of_a_search_hides_a_storage_password(tmp_path, demo_dataset):
    config = write_test_config(tmp_path, demo_dataset, resources__executor="local")
    search = tmp_path / "search.yaml"
    search.write_text(
        yaml.safe_dump(
            {
                "trials": 2,
                "storage": "postgresql://astro:pg-Pa55word-41@db.example.org/optuna",
                "parameters": {"model.learning_rate": {"loguniform": [1.0e-4, 1.0e-3]}},
            }
        )
    )
    result = CliRunner().invoke(main, ["submit", str(config), "--search", str(search), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "pg-Pa55word-41" not in result.output
    assert "postgresql://astro:***@db.example.org/optuna" in result.output
    assert "storage holds a password" in result.output


def test_cancel_signals_only_a_submitit_controller_whatever_submission_json_says(tmp_path, demo_dataset):
    from zoobot_hpc.backends.local import process_start_ticks
    from zoobot_hpc.login.status import cancel_runs

    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run_dir = tmp_path / "shared" / "run"
        run_dir.mkdir(parents=True)
        shutil.copy(write_test_config(tmp_path / "input", demo_dataset), run_dir / "config.yaml")
        planted = {
            "executor": "local",
            "job_id": str(victim.pid),
            "submitit_folder": str(tmp_path),
            "process_start": process_start_ticks(victim.pid),
        }
        (run_dir / "submission.json").write_text(json.dumps(planted))
        assert cancel_runs(run_dir) == []
        assert victim.poll() is None, "cancel signalled a process that is not a local job"
    finally:
        victim.kill()
        victim.wait()
