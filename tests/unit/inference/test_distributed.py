"""A prediction job of 2 DDP ranks (submitit's local executor), interrupted and requeued, equals one process; also
when one rank had written all its parts before the stop (its requeued start has nothing left to predict)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from tests.support.inference_helpers import manifest_ids, predict_here
from tests.support.jobs import signal_local_tasks, wait_for
from zoobot_hpc.inference.job import submit_inference
from zoobot_hpc.inference.request import InferenceRequest, inference_config

SLOW_RANK_0 = "[{class_path: tests.support.inference_probes.SlowPredictBatches, init_args: {seconds: 0.6, rank: 0}}]"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_ranks_interrupted_after_some_parts_finish_on_requeue_like_one_process(
    classifier_checkpoint, survey_data, tmp_path
):
    request = InferenceRequest(classifier_checkpoint, survey_data, tmp_path / "ddp" / "preds.h5", chunk_size=5)
    overrides = ["resources.tasks_per_node=2", "data.num_workers=0", f"trainer.callbacks={SLOW_RANK_0}"]
    config, trained = inference_config(request, overrides=overrides)
    job, plan = submit_inference(request, config, trained, executor="local")
    assert plan.world_size == 2 and plan.num_chunks == 6

    done = lambda rank: len(list(request.parts_dir.glob(f"rank{rank}-chunk*.h5")))  # noqa: E731
    wait_for(lambda: done(1) == plan.num_chunks and done(0) >= 1, 180, "rank 1's 6 parts and one of rank 0's")
    assert signal_local_tasks(int(job.job_id))
    results = job.results()
    assert results[0] == str(request.out)

    log = job.paths.stdout.read_text()
    assert "preemption signal (SIGUSR2): stopping rank 0" in log
    assert "part files already written" in log.split("preemption signal")[-1]
    assert not request.parts_dir.exists()

    baseline = predict_here(InferenceRequest(classifier_checkpoint, survey_data, tmp_path / "one" / "preds.h5"))
    with h5py.File(request.out, "r") as ddp, h5py.File(baseline, "r") as one:
        ids = list(ddp["ids"].asstr()[()])
        assert ids == list(one["ids"].asstr()[()]) == manifest_ids(survey_data)[0]
        np.testing.assert_allclose(ddp["probabilities"][()], one["probabilities"][()], atol=1e-5)
        assert ddp.attrs["world_size"] == "2"
