"""`submit` warns in one line when the output filesystem holds less space or fewer inodes than the run needs;
`status` shows the space left."""

from __future__ import annotations

import subprocess

import pytest
from click.testing import CliRunner

from tests.support.jobs import write_test_config
from tests.unit.login.test_fail_fast import run_submit
from zoobot_hpc.cli import main


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MB tmpfs with 64 inodes: a real filesystem too small for a run (needs root, as the SLURM tests do)."""
    mount_point = tmp_path / "scratch"
    mount_point.mkdir()
    options = "size=1m,nr_inodes=64"
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)], check=False).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_submit_warns_of_an_output_dir_too_small_for_the_run(tmp_path, demo_dataset, tiny_disk):
    config = write_test_config(tmp_path, demo_dataset, resources__executor="local", output_dir=str(tiny_disk / "runs"))
    result = run_submit(config, "--dry-run")
    assert result.exit_code == 0, result.output
    [warning] = [line for line in result.output.splitlines() if line.startswith("warning: output_dir=")]
    assert str(tiny_disk) in warning and "MB free of the about" in warning and "free inodes" in warning, warning
    assert "M parameters" in warning, warning


def test_submit_does_not_warn_where_the_run_fits(tmp_path, demo_dataset):
    config = write_test_config(tmp_path, demo_dataset, resources__executor="local")
    result = run_submit(config, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "warning: output_dir=" not in result.output, result.output


def test_shard_warns_of_an_output_dir_too_small_for_the_shards(tmp_path, tiny_disk, caplog):
    from tests.unit.data.conftest import write_catalog_images

    catalog = tmp_path / "catalog.csv"
    write_catalog_images(tmp_path, 40).to_csv(catalog, index=False)
    out = tiny_disk / "shards"
    args = ["shard", str(catalog), "--out", str(out), "--label-col", "label", "--size", "128", "--no-progress"]
    with caplog.at_level("WARNING", logger="zoobot_hpc.data.build"):
        result = CliRunner().invoke(main, args)
    [warning] = [r.getMessage() for r in caplog.records if r.name == "zoobot_hpc.data.build"]
    assert str(out) in warning and "40 images of 128x128x3" in warning and "MB free of the about" in warning
    assert result.exit_code != 0 and "out of disk space" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_predict_warns_of_an_output_dir_too_small_for_its_parts(tmp_path, tiny_disk):
    import torch

    from zoobot_hpc.core.model_kinds import CHECKPOINT_KIND_KEY
    from zoobot_hpc.inference.request import InferencePlan, InferenceRequest, space_warnings

    checkpoint = tmp_path / "model.ckpt"
    torch.save({CHECKPOINT_KIND_KEY: "classifier", "hyper_parameters": {"num_classes": 3}}, checkpoint)
    request = InferenceRequest(checkpoint=checkpoint, dataset_dir=tmp_path, out=tiny_disk / "predictions.h5")
    plan = InferencePlan(
        "predict", "classifier", "test_convnext", str(checkpoint), "", str(tmp_path), "", ("test",), (100_000,),
        (32, 32, 3), None, None, 4096, 1, 8, 0,
    )  # fmt: skip
    [warning] = space_warnings(request, plan)
    assert warning.startswith(f"out={tiny_disk}: ") and "the predict output of 100000 galaxies" in warning, warning
    assert "MB free of the about 15.2 MB" in warning, warning
    assert not space_warnings(InferenceRequest(checkpoint, tmp_path, tmp_path / "predictions.h5"), plan)
