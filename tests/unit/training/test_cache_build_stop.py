"""A stop signal while the embedding cache is being built (head_only, `data.embedding_cache`): acted on within
seconds, the rows already embedded kept in the run's partial file, and the rerun continues the build and ends with
the cache and the weights of an uninterrupted run."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

from click.testing import CliRunner

from tests.support.jobs import REPO, assert_same_weights, final_weights, segments, wait_for, write_test_config
from tests.unit.training.test_embedding_cache import assert_same_contents
from zoobot_hpc.cli import main
from zoobot_hpc.data.demo import write_demo_dataset

STOP_RECORDED_WITHIN_S = 2.0  # signal -> every rank stopped and the stop recorded (one batch of the build)
EXITED_WITHIN_S = 10.0  # signal -> process ended; a bare `import zoobot_hpc.training.run` takes ~3 s to exit on 2 cores


def _config(tmp_path, dataset, name):
    """head_only on cached embeddings; 4 views at 128 px of 320 galaxies: a build of a few seconds."""
    return write_test_config(
        tmp_path / name,
        dataset,
        name=name,
        model__training_mode="head_only",
        data__embedding_cache=True,
        data__embedding_cache_views=4,
        data__batch_size=16,
        data__num_workers=0,
        data__augment__output_size=128,
        tracking__mode="disabled",
    )


def _cache_files(dataset):
    return sorted((dataset / "embedding_cache").glob("*")) if (dataset / "embedding_cache").exists() else []


def _stop_during_the_build(config, log_path, dataset, signum) -> float:
    """Run `zoobot-hpc train` in a process, signal it while it builds the cache; seconds from signal to exit."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "zoobot_hpc.cli", "train", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_for(lambda: _cache_files(dataset), 240, "the cache build to start (its file)", 0.05)
        time.sleep(0.5)
        assert process.poll() is None and not any(p.suffix == ".h5" for p in _cache_files(dataset)), "build too fast"
        process.send_signal(signum)
        signalled = time.monotonic()
        returncode = process.wait(timeout=30)
        stopped_after = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
    assert returncode == 0, log_path.read_text()
    return stopped_after


def test_sigterm_during_the_cache_build_stops_within_seconds_and_the_rerun_continues_it(tmp_path):
    dataset, reference_dataset = tmp_path / "data", tmp_path / "reference-data"
    write_demo_dataset(dataset, n_galaxies=320, image_size=32, seed=1)
    shutil.copytree(dataset, reference_dataset)  # the same manifest (it records when it was written): the same key
    reference_config = _config(tmp_path, reference_dataset, "reference")
    config = _config(tmp_path, dataset, "stopped")
    run_dir = tmp_path / "stopped" / "runs" / "stopped"

    log_path = tmp_path / "stopped.log"
    stopped_after = _stop_during_the_build(config, log_path, dataset, signal.SIGTERM)
    log_text = log_path.read_text()
    record = segments(run_dir)[-1]
    print(
        f"SIGTERM in the cache build: stop recorded {record['stop_and_save_s']} s, process ended {stopped_after:.2f} s"
    )
    assert record["stop"] == "SIGTERM" and record["stop_and_save_s"] < STOP_RECORDED_WITHIN_S, record
    assert stopped_after < EXITED_WITHIN_S, log_text
    assert "embedding cache: build stopped on a signal" in log_text
    assert "preemption signal (SIGTERM): nothing to save before training" in log_text
    [partial] = _cache_files(dataset)
    assert ".partial." in partial.name

    resumed = CliRunner().invoke(main, ["train", str(config)])
    assert resumed.exit_code == 0, resumed.output
    resuming = re.search(r"embedding cache: resuming \S+ \((\d+)/\d+ rows already done\)", resumed.output)
    assert resuming and int(resuming[1]) > 0, "the rows embedded before the signal are kept"
    [cache] = _cache_files(dataset)
    assert cache.suffix == ".h5"

    reference = CliRunner().invoke(main, ["train", str(reference_config)])
    assert reference.exit_code == 0, reference.output
    [reference_cache] = _cache_files(reference_dataset)
    assert cache.name == reference_cache.name
    assert_same_contents(cache, reference_cache)
    assert_same_weights(final_weights(run_dir), final_weights(tmp_path / "reference" / "runs" / "reference"))
