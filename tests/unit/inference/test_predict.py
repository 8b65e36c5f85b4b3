"""Predictions and embeddings over every shard: order, values, provenance, tables, MC dropout, bad input."""

from __future__ import annotations

import functools
import json
import signal
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from tests.support.inference_helpers import eval_view, manifest_ids, predict_here
from tests.support.trained_runs import IMAGE_SIZE
from zoobot_hpc.cli import main
from zoobot_hpc.core.model_kinds import CHECKPOINT_KIND_KEY
from zoobot_hpc.data.demo import DEMO_TREE_SCHEMA, write_demo_dataset
from zoobot_hpc.data.shard_format import (
    FORMAT_VERSION,
    Manifest,
    file_sha256,
    read_manifest,
    write_manifest,
    write_shard,
)
from zoobot_hpc.inference import job as inference_job
from zoobot_hpc.inference.request import (
    InferenceError,
    InferenceRequest,
    build_plan,
    inference_config,
    prepare_inference,
    read_model_header,
    read_plan,
    wait_for_plan,
)
from zoobot_hpc.model import FinetuneableZoobotClassifier, FinetuneableZoobotRegressor


def test_one_process_writes_probabilities_in_manifest_order_with_provenance_and_a_csv(
    classifier_checkpoint, survey_data, tmp_path
):
    request = InferenceRequest(
        classifier_checkpoint, survey_data, tmp_path / "preds.h5", task="classifier", export_format="csv", chunk_size=25
    )
    out = predict_here(request)

    ids, splits = manifest_ids(survey_data)
    with h5py.File(out, "r") as handle:
        assert list(handle["ids"].asstr()[()]) == ids
        assert list(handle["split"].asstr()[()]) == splits
        # ids and splits are fixed-width UTF-8 (no per-row heap objects): as wide as the longest value
        for key, values in (("ids", ids), ("split", splits)):
            assert h5py.check_string_dtype(handle[key].dtype).length == max(len(v.encode()) for v in values)
        probabilities = handle["probabilities"][()]
        attrs = dict(handle.attrs)
    assert probabilities.shape == (len(ids), 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert attrs["checkpoint_sha256"] == file_sha256(classifier_checkpoint)
    assert attrs["encoder"] == "test_convnext"
    assert json.loads(attrs["class_names"]) == ["smooth", "spiral", "edge-on"]
    assert json.loads(attrs["config"])["model"]["kind"] == "classifier"

    model = FinetuneableZoobotClassifier.load_from_checkpoint(classifier_checkpoint, map_location="cpu").eval()
    with torch.no_grad():
        expected = model.predictions(model(eval_view(survey_data, "train", [0, 1, 2, 3], IMAGE_SIZE)))
    np.testing.assert_allclose(probabilities[:4], expected["probabilities"].numpy(), atol=1e-5)

    table = pd.read_csv(request.export_path)
    assert table["id"].tolist() == ids
    columns = ["probabilities_smooth", "probabilities_spiral", "probabilities_edge-on"]
    np.testing.assert_allclose(table[columns].to_numpy(), probabilities, atol=1e-6)
    assert not request.parts_dir.exists() and not request.work_dir.exists(), "OUT.work/ left after success"


def test_tree_predictions_hold_concentrations_and_vote_fractions_per_answer(tree_checkpoint, survey_data, tmp_path):
    request = InferenceRequest(tree_checkpoint, survey_data, tmp_path / "tree.h5", export_format="parquet")
    out = predict_here(request)

    answers = [f"{q}_{a}" for q, values in DEMO_TREE_SCHEMA["question_answer_pairs"].items() for a in values]
    with h5py.File(out, "r") as handle:
        concentrations = handle["concentrations"][()]
        fractions = handle["vote_fractions"][()]
        assert json.loads(handle["vote_fractions"].attrs["columns"]) == answers
        assert (
            json.loads(handle.attrs["tree_schema"])["question_answer_pairs"]
            == DEMO_TREE_SCHEMA["question_answer_pairs"]
        )
    assert concentrations.shape == fractions.shape == (60, len(answers))
    assert (concentrations > 0).all()
    for first in range(0, len(answers), 2):  # every demo question has two answers
        np.testing.assert_allclose(fractions[:, first] + fractions[:, first + 1], 1.0, atol=1e-5)
    table = pd.read_parquet(request.export_path)
    np.testing.assert_allclose(table[[f"vote_fractions_{a}" for a in answers]].to_numpy(), fractions, atol=1e-6)


def test_mc_dropout_stores_distinct_samples_per_galaxy_and_a_rerun_reproduces_them(
    regressor_checkpoint, survey_data, tmp_path
):
    request = InferenceRequest(
        regressor_checkpoint, survey_data, tmp_path / "mc.h5", mc_samples=4, export_format="csv", chunk_size=16
    )
    with h5py.File(predict_here(request), "r") as handle:
        first = handle["values"][()]
    assert first.shape == (60, 4)
    assert np.all((first > 0) & (first < 1))
    assert np.all(first.std(axis=1) > 0), "dropout must be on: the samples of a galaxy differ"

    again = InferenceRequest(**{**request.__dict__, "overwrite": True})
    with h5py.File(predict_here(again), "r") as handle:
        np.testing.assert_array_equal(handle["values"][()], first)
    assert [c for c in pd.read_csv(request.export_path).columns if c.startswith("values")] == [
        f"values_sample{k}" for k in range(4)
    ]

    model = FinetuneableZoobotRegressor.load_from_checkpoint(regressor_checkpoint, map_location="cpu").eval()
    with torch.no_grad():
        deterministic = model(eval_view(survey_data, "train", list(range(8)), IMAGE_SIZE)).numpy()
    assert np.abs(first[:8].mean(axis=1) - deterministic).max() < 0.25


def test_embed_command_writes_the_encoders_pooled_embeddings(classifier_checkpoint, survey_data, tmp_path):
    out = tmp_path / "embeddings.h5"
    result = CliRunner().invoke(
        main,
        [
            *("embed", str(classifier_checkpoint), str(survey_data), "--out", str(out), "--here"),
            *("--format", "parquet", "--split", "val", "--split", "test", "data.num_workers=0"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output

    manifest = read_manifest(survey_data)
    count = manifest.split_count("val") + manifest.split_count("test")
    model = FinetuneableZoobotClassifier.load_from_checkpoint(classifier_checkpoint, map_location="cpu").eval()
    with h5py.File(out, "r") as handle:
        embeddings = handle["embeddings"][()]
        assert list(handle["split"].asstr()[:1]) == ["val"]
    assert embeddings.shape == (count, model.encoder.num_features)
    with torch.no_grad():
        expected = model.embed(eval_view(survey_data, "val", [0, 1, 2], IMAGE_SIZE)).numpy()
    np.testing.assert_allclose(embeddings[:3], expected, atol=1e-5)
    assert pd.read_parquet(out.with_suffix(".parquet")).shape == (count, 2 + model.encoder.num_features)


def _one_channel_dataset(path: Path) -> Path:
    path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(4, IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.uint8)
    info = write_shard(path / "test-00000.h5", images, [f"g{i}" for i in range(4)], {}, "test")
    manifest = Manifest(FORMAT_VERSION, (IMAGE_SIZE, IMAGE_SIZE, 1), {}, (), {"test": (info,)}, "id", "test", "now")
    write_manifest(path, manifest)
    return path


def test_bad_inputs_fail_in_one_line_before_anything_is_written(classifier_checkpoint, survey_data, tmp_path):
    def fails(message: str, **fields) -> None:
        request = InferenceRequest(**{"checkpoint": classifier_checkpoint, "dataset_dir": survey_data, **fields})
        with pytest.raises(InferenceError, match=message) as caught:
            predict_here(request)
        assert "\n" not in str(caught.value)
        assert not request.out.exists() and not request.work_dir.exists()

    fails("is a classifier model, not the tree asked for", out=tmp_path / "a.h5", task="tree")
    bigger = tmp_path / "bigger"
    write_demo_dataset(bigger, n_galaxies=8, image_size=48, seed=3)
    fails(
        r"images are 48x48x3 \(HxWxC\) but the model was trained on 32x32x3", out=tmp_path / "b.h5", dataset_dir=bigger
    )
    grey = _one_channel_dataset(tmp_path / "grey")
    fails(r"images are 32x32x1 \(HxWxC\) but the model was trained on 32x32x3", out=tmp_path / "c.h5", dataset_dir=grey)

    existing = tmp_path / "existing.h5"
    existing.write_text("an earlier result")
    result = CliRunner().invoke(main, ["predict", str(classifier_checkpoint), str(survey_data), "--out", str(existing)])
    assert result.exit_code == 1
    assert result.output == f"Error: out={existing} exists; pass --overwrite to replace it\n"
    assert existing.read_text() == "an earlier result"
    table = tmp_path / "d.csv"
    table.write_text("an earlier table")
    result = CliRunner().invoke(
        main,
        ["predict", str(classifier_checkpoint), str(survey_data), "--out", str(tmp_path / "d.h5"), "--format", "csv"],
    )
    assert result.output == f"Error: out={table} exists; pass --overwrite to replace it\n"
    assert table.read_text() == "an earlier table"


def test_other_ranks_wait_for_rank_zeros_plan_and_keep_its_parts(classifier_checkpoint, survey_data, tmp_path):
    request = InferenceRequest(classifier_checkpoint, survey_data, tmp_path / "preds.h5", chunk_size=5)
    config, trained = inference_config(request, overrides=("data.num_workers=0",))
    plan = build_plan(request, config, trained)
    with pytest.raises(InferenceError, match=r"plan\.json: rank 0 did not write") as error:
        wait_for_plan(request, plan, timeout_s=0.3)
    assert "\n" not in str(error.value)

    def rank_zero() -> None:
        time.sleep(0.5)
        prepare_inference(request, config, trained)
        (request.parts_dir / "rank0-part.h5").write_bytes(b"written by rank 0")

    writer = threading.Thread(target=rank_zero)
    writer.start()
    wait_for_plan(request, plan, timeout_s=30)
    writer.join()
    assert read_plan(request.work_dir) == plan
    assert (request.parts_dir / "rank0-part.h5").read_bytes() == b"written by rank 0"


def test_a_rank_other_than_zero_never_replaces_the_plan_or_its_parts(
    classifier_checkpoint, survey_data, tmp_path, monkeypatch
):
    earlier = InferenceRequest(classifier_checkpoint, survey_data, tmp_path / "preds.h5", chunk_size=7)
    config, trained = inference_config(earlier, overrides=("data.num_workers=0",))
    earlier_plan = prepare_inference(earlier, config, trained)
    part = earlier.parts_dir / "part-from-rank-0.h5"
    part.write_bytes(b"being written by rank 0")

    request = InferenceRequest(classifier_checkpoint, survey_data, tmp_path / "preds.h5", chunk_size=5)
    monkeypatch.setenv("SLURM_JOB_ID", "1")  # rank 1 of a job step (srun sets both)
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setattr(inference_job, "wait_for_plan", functools.partial(wait_for_plan, timeout_s=0.5))
    monkeypatch.setattr(inference_job, "configure_job_logging", lambda: None)
    usr2_handler = signal.getsignal(signal.SIGUSR2)
    try:
        with pytest.raises(InferenceError, match="rank 0 did not write"):
            inference_job.run_request_here(request, overrides=("data.num_workers=0",))
    finally:
        signal.signal(signal.SIGUSR2, usr2_handler)
    assert read_plan(request.work_dir) == earlier_plan
    assert part.read_bytes() == b"being written by rank 0"


def test_checkpoints_record_their_kind_and_older_ones_without_it_still_load(
    classifier_checkpoint, tree_checkpoint, tmp_path
):
    for checkpoint, kind in ((classifier_checkpoint, "classifier"), (tree_checkpoint, "tree")):
        stored = torch.load(checkpoint, map_location="cpu", weights_only=True)
        assert stored[CHECKPOINT_KIND_KEY] == kind
        assert read_model_header(checkpoint)[0] == kind
        del stored[CHECKPOINT_KIND_KEY]
        older = tmp_path / f"before-kinds-{kind}.ckpt"
        torch.save(stored, older)
        assert read_model_header(older)[0] == kind
