"""The path a Zoobot user walks: a Hub dataset -> shards -> a named schema -> predictions in Zoobot's CSV columns."""

from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.support.inference_helpers import predict_here
from tests.support.trained_runs import IMAGE_SIZE, run_config
from zoobot_hpc.cli import main
from zoobot_hpc.inference.request import InferenceError, InferenceRequest, build_plan, inference_config
from zoobot_hpc.training.run import run_training


def zoobot_columns(label_cols: list[str]) -> list[str]:
    return ["id_str", *(f"{label}_pred" for label in label_cols)]


def test_tree_predictions_in_zoobots_columns(tree_checkpoint, survey_data, tmp_path):
    request = InferenceRequest(tree_checkpoint, survey_data, tmp_path / "tree.h5", export_format="zoobot-csv")
    out = predict_here(request)
    assert request.export_path == tmp_path / "tree.csv"
    with h5py.File(out, "r") as handle:
        ids, concentrations = list(handle["ids"].asstr()[()]), handle["concentrations"][()]
        label_cols = json.loads(handle.attrs["label_cols"])
    table = pd.read_csv(request.export_path)
    assert list(table.columns) == zoobot_columns(label_cols)
    assert table["id_str"].astype(str).tolist() == ids
    np.testing.assert_allclose(table.iloc[:, 1:].to_numpy(), concentrations, rtol=1e-6)


def test_mc_samples_are_json_lists_per_cell_as_zoobot_writes_them(regressor_checkpoint, survey_data, tmp_path):
    request = InferenceRequest(
        regressor_checkpoint, survey_data, tmp_path / "mc.h5", mc_samples=3, export_format="zoobot-csv"
    )
    with h5py.File(predict_here(request), "r") as handle:
        values = handle["values"][()]
    table = pd.read_csv(request.export_path)
    assert list(table.columns) == ["id_str", "axis_ratio_pred"]
    np.testing.assert_allclose(np.array(table["axis_ratio_pred"].apply(json.loads).tolist()), values, rtol=1e-6)

    embed = InferenceRequest(regressor_checkpoint, survey_data, tmp_path / "e.h5", "embed", export_format="zoobot-csv")
    with pytest.raises(InferenceError, match="use it with mode='predict'"):
        build_plan(embed, *inference_config(embed))


def ring_image(ringness: float, seed: int) -> bytes:
    """A 32 px galaxy whose colour says how many volunteers saw a ring."""
    generator = np.random.default_rng(seed)
    pixels = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3))
    pixels[..., 0], pixels[..., 2] = 0.3 + 0.6 * ringness, 0.9 - 0.6 * ringness
    pixels = np.clip(pixels + generator.normal(0, 0.05, pixels.shape), 0, 1)
    buffer = io.BytesIO()
    Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_hub_dataset_shards_trains_with_a_named_schema_and_predicts_zoobot_columns(tmp_path):
    datasets = pytest.importorskip("datasets")
    n = 48
    ringness = np.random.default_rng(0).uniform(0, 1, n)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "id_str": datasets.Value("string"),
            "ring_yes": datasets.Value("int64"),
            "ring_no": datasets.Value("int64"),
        }
    )
    rows = {
        "image": [{"bytes": ring_image(r, i), "path": f"{i}.png"} for i, r in enumerate(ringness)],
        "id_str": [f"gal{i}" for i in range(n)],
        "ring_yes": np.round(10 * ringness).astype(int).tolist(),
        "ring_no": np.round(10 * (1 - ringness)).astype(int).tolist(),
    }
    datasets.Dataset.from_dict(rows, features=features).to_parquet(tmp_path / "rings.parquet")

    shards = tmp_path / "shards"
    args = ["shard", str(tmp_path / "rings.parquet"), "--out", str(shards), "--image-col", "image"]
    args += ["--schema", "gz_rings", "--size", str(IMAGE_SIZE), "--no-progress"]  # label columns ring_yes, ring_no
    built = CliRunner().invoke(main, args)
    assert built.exit_code == 0, built.output

    tree = {"kind": "tree", "schema": "gz_rings", "question_answer_pairs": None, "dependencies": None}
    config = run_config(shards, tmp_path / "runs", "tree", model=tree, data={"batch_size": 8})
    outcome = run_training(config, tmp_path / "runs" / "rings", interactive=False)
    assert np.isfinite(outcome.metrics["validation/loss"])

    request = InferenceRequest(Path(outcome.best_checkpoint), shards, tmp_path / "rings.h5", export_format="zoobot-csv")
    predict_here(request)
    table = pd.read_csv(request.export_path)
    assert list(table.columns) == ["id_str", "ring_yes_pred", "ring_no_pred"]
    assert len(table) == n and (table[["ring_yes_pred", "ring_no_pred"]] > 1).all().all()
