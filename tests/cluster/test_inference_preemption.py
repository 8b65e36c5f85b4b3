"""A prediction job of 2 nodes x 2 tasks preempted by SLURM's SIGTERM (a `high` job needs one of its nodes):
requeued by SLURM, it finishes with the output of an uninterrupted run."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from tests.support.inference_helpers import manifest_ids, predict_here
from tests.support.jobs import wait_for
from zoobot_hpc.inference.job import submit_inference
from zoobot_hpc.inference.request import InferenceRequest, inference_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def _preemption_partitions(slurm_cluster):
    slurm_cluster.require_preemption()


SLOW_BATCHES = "[{class_path: tests.support.inference_probes.SlowPredictBatches, init_args: {seconds: 0.6}}]"


@pytest.mark.timeout(300)
def test_predict_preempted_by_sigterm_is_requeued_by_slurm_and_writes_the_uninterrupted_output(
    classifier_checkpoint, survey_data, tmp_path, slurm_cluster
):
    request = InferenceRequest(classifier_checkpoint, survey_data, tmp_path / "preempted" / "preds.h5", chunk_size=5)
    overrides = [
        "resources.executor=slurm",
        "resources.partition=low",
        "resources.nodes=2",
        "resources.tasks_per_node=2",
        "resources.sbatch_extra={exclude: n3}",
        "data.num_workers=1",
        f"trainer.callbacks={SLOW_BATCHES}",
    ]
    config, trained = inference_config(request, overrides=overrides)
    job, _ = submit_inference(request, config, trained, executor="slurm")
    wait_for(lambda: len(list(request.parts_dir.glob("*.h5"))) >= 2, 240, "2 of the 12 part files")
    node_list = slurm_cluster.run("squeue", "-h", "-o", "%N", "-j", job.job_id).stdout.strip()
    first_node = slurm_cluster.run("scontrol", "show", "hostnames", node_list).stdout.split()[0]
    slurm_cluster.preempt_low_jobs_on(first_node)
    slurm_cluster.wait_for_state(job.job_id, ["COMPLETED"], timeout=240)

    runs = slurm_cluster.settled_accounting(job.job_id)
    assert [r["State"] for r in runs] == ["PREEMPTED", "COMPLETED"], runs
    log = job.paths.stdout.read_text()
    assert "preemption signal (SIGTERM): stopping rank 0" in log
    assert "waiting for the scheduler to end the job" in log
    assert "part files already written" in log.split("waiting for SLURM")[-1]
    assert not request.parts_dir.exists()

    baseline = predict_here(InferenceRequest(classifier_checkpoint, survey_data, tmp_path / "one" / "preds.h5"))
    with h5py.File(request.out, "r") as preempted, h5py.File(baseline, "r") as one:
        ids = list(preempted["ids"].asstr()[()])
        assert ids == list(one["ids"].asstr()[()]) == manifest_ids(survey_data)[0]
        np.testing.assert_allclose(preempted["probabilities"][()], one["probabilities"][()], atol=1e-5)
