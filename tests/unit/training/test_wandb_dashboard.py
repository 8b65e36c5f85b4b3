"""What a run's W&B page holds, read back from its offline `.wandb` files: named layer-decay learning rates, the
per-task validation metrics and charts, the best value with its epoch, and per-segment records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.support.trained_runs import run_config, train_data  # noqa: F401 (a fixture)
from tests.support.wandb_records import logged_tables, offline_run_files, read_offline_run
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.model import MODEL_CLASSES
from zoobot_hpc.model.encoders import create_encoder
from zoobot_hpc.model.param_groups import finetuning_param_groups
from zoobot_hpc.training.run import build_datamodule, run_training

OFFLINE = {"mode": "offline", "project": "dashboard-test"}


def trained(dataset: Path, root: Path, kind: str, **trainer) -> Path:
    run_dir = root / kind
    config = run_config(dataset, root, kind, tracking=OFFLINE, trainer={"max_epochs": 2, **trainer})
    run_training(config, run_dir, interactive=False)
    return run_dir


@pytest.fixture(scope="module")
def runs(train_data, tmp_path_factory) -> dict[str, Path]:  # noqa: F811
    root = tmp_path_factory.mktemp("dashboard")
    return {kind: trained(train_data, root, kind) for kind in ("classifier", "tree", "regressor")}


def only_run(run_dir: Path):
    [path] = offline_run_files(run_dir)
    return read_offline_run(path), path.parent


@pytest.mark.parametrize(
    "name", ["test_convnext", "convnext_pico", "convnext_nano", "efficientnet_b0", "maxvit_tiny_rw_224"]
)
def test_layer_decay_groups_are_named_after_their_encoder_part_in_depth_order(name):
    groups = finetuning_param_groups(
        create_encoder(name, pretrained=False), torch.nn.Linear(2, 2), 1e-3, 0.0, 0.8, True
    )
    layers = {}
    for group in sorted(groups, key=lambda g: -g["depth"]):
        assert layers.setdefault(group["name"], group["lr_scale"]) == group["lr_scale"], "one lr per named layer"
    names, scales = list(layers), list(layers.values())
    assert names[0] == "head" and names[-1] == "stem", names
    assert all(n.startswith("stage-") for n in names[2:-1]), names
    assert scales == sorted(scales, reverse=True) and scales[-1] < scales[1]
    assert len(set(names)) == len({g["depth"] for g in groups})


def test_named_learning_rates_are_the_optimizers_rates_in_depth_order(runs):
    run, _ = only_run(runs["classifier"])
    checkpoint = torch.load(runs["classifier"] / layout.CHECKPOINTS / "last.ckpt", weights_only=True)
    groups = sorted(checkpoint["optimizer_states"][0]["param_groups"], key=lambda g: -g["depth"])
    depth_order = list(dict.fromkeys(group["name"] for group in groups))
    assert run.config["lr_layers"] == depth_order
    assert depth_order[0] == "head" and depth_order[-1] == "stem" and len(depth_order) > 5
    assert not any(key.startswith("lr-") for row in run.history for key in row)
    logged = [row for row in run.history if "lr/head" in row]
    assert logged and all({f"lr/{name}" for name in depth_order} <= row.keys() for row in logged)
    for group in groups:  # no scheduler: every step's rate is the optimiser's, exactly
        assert {row[f"lr/{group['name']}"] for row in logged} == {group["lr"]}


def test_tree_run_logs_each_questions_loss_summing_to_the_total_and_its_vote_fraction_error(runs):
    run, _ = only_run(runs["tree"])
    config = run_config(Path("."), Path("."), "tree")
    questions = list(MODEL_CLASSES["tree"](**config.model.model_dump(exclude={"kind"})).schema.questions)
    passes = [row for row in run.history if "validation/loss" in row]
    assert len(passes) == 2
    for row in passes:
        per_question = [row[f"validation/loss/{q}"] for q in questions]
        assert sum(per_question) == pytest.approx(row["validation/loss"], rel=1e-5)
        errors = [
            row[f"validation/vote_fraction_mae/{q}"] for q in questions if f"validation/vote_fraction_mae/{q}" in row
        ]
        assert errors and all(0 <= e <= 1 for e in errors)


def test_classifier_confusion_matrix_is_that_of_a_direct_forward_pass(runs, train_data):  # noqa: F811
    run_dir = runs["classifier"]
    run, folder = only_run(run_dir)
    [last_pass] = [row for row in run.history if "validation/confusion_matrix_table/path" in row][-1:]
    table = json.loads((folder / "files" / last_pass["validation/confusion_matrix_table/path"]).read_text())
    names = ["smooth", "spiral", "edge-on"]
    logged = torch.zeros(3, 3, dtype=torch.int64)
    for actual, predicted, count in table["data"]:
        logged[names.index(actual), names.index(predicted)] = int(count)

    model = (
        MODEL_CLASSES["classifier"]
        .load_from_checkpoint(run_dir / layout.CHECKPOINTS / "last.ckpt", map_location="cpu", weights_only=True)
        .eval()
    )
    datamodule = build_datamodule(run_config(train_data, run_dir.parent, "classifier"), model)
    datamodule.setup("validate")
    direct = torch.zeros(3, 3, dtype=torch.int64)
    with torch.no_grad():
        for batch in map(lambda b: datamodule.on_after_batch_transfer(b, 0), datamodule.val_dataloader()):
            predicted = model(batch["image"]).argmax(dim=1)
            for true, guess in zip(batch["label"].long().tolist(), predicted.tolist(), strict=True):
                direct[true, guess] += 1
    assert torch.equal(logged, direct), (logged, direct)
    assert logged.sum() > 0
    for name in names:
        assert {f"validation/{score}/{name}" for score in ("precision", "recall", "f1")} <= last_pass.keys()


def test_regressor_logs_rmse_mae_and_a_predicted_vs_true_plot_of_the_whole_split(runs, train_data):  # noqa: F811
    run, folder = only_run(runs["regressor"])
    config = run_config(train_data, runs["regressor"].parent, "regressor")
    datamodule = build_datamodule(config, MODEL_CLASSES["regressor"](**config.model.model_dump(exclude={"kind"})))
    datamodule.setup("validate")
    true_values = torch.cat([batch["axis_ratio"] for batch in datamodule.val_dataloader()])
    [last_pass] = [row for row in run.history if "validation/predicted_vs_true_table/path" in row][-1:]
    assert {"validation/rmse", "validation/mae"} <= last_pass.keys()
    table = json.loads((folder / "files" / last_pass["validation/predicted_vs_true_table/path"]).read_text())
    assert table["columns"] == ["true", "predicted"]
    assert [row[0] for row in table["data"]] == pytest.approx(true_values.tolist())


def test_summary_holds_the_best_value_with_its_epoch_and_the_segment_totals(runs):
    run, _ = only_run(runs["classifier"])
    losses = run.metric("validation/loss")
    best = min(losses)
    assert run.summary["best/validation/loss"] == pytest.approx(best)
    assert run.summary["best/epoch"] == losses.index(best) + 1
    [segment] = run.config["segments"]
    [recorded] = layout.read_segments(runs["classifier"])
    assert segment["job"] == recorded["job"] and segment["stopped_because"] == "finished"
    assert run.summary["gpu_hours/used"] == pytest.approx(segment["device_hours"]) and segment["device_hours"] > 0
    assert run.summary["gpu_hours/lost"] == 0


def test_a_restart_that_redoes_work_logs_after_every_step_already_logged(train_data, tmp_path):  # noqa: F811
    run_dir = trained(train_data, tmp_path, "classifier", max_epochs=1)
    for checkpoint in (run_dir / layout.CHECKPOINTS).glob("*.ckpt"):
        checkpoint.unlink()  # as if the node was lost before any save: the next start trains from step 0 again
    trained(train_data, tmp_path, "classifier", max_epochs=1)
    first, second = (read_offline_run(path) for path in offline_run_files(run_dir))
    first_steps, second_steps = first.metric("_step"), second.metric("_step")
    assert second.metric("trainer/global_step")[0] <= max(first.metric("trainer/global_step"))
    assert min(second_steps) > max(first_steps)
    assert second_steps == sorted(set(second_steps))
    assert [s["stopped_because"] for s in second.config["segments"]] == [
        "lost node, hang or kill (no save)",
        "finished",
    ]


@pytest.mark.parametrize("kind", ["classifier", "tree", "regressor"])
def test_galaxy_table_shows_the_same_sample_every_pass_and_the_worst_predicted(runs, kind):
    tables = logged_tables(runs[kind])
    assert len(tables) == 2, "one table per validation pass"
    for table in tables:
        assert table["columns"] == ["kind", "index", "id", "thumbnail", "truth", "prediction", "loss"]
    samples = [[row[1] for row in table["data"] if row[0] == "sample"] for table in tables]
    assert samples[0] and samples[0] == samples[1] == sorted(samples[0])
    sample_ids = [[row[2] for row in table["data"] if row[0] == "sample"] for table in tables]
    assert sample_ids[0] == sample_ids[1] and all(isinstance(i, str) and i for i in sample_ids[0])
    assert len(set(sample_ids[0])) == len(sample_ids[0]), "catalogue ids of distinct galaxies"
    worst = [row for row in tables[-1]["data"] if row[0] == "worst"]
    losses = [row[6] for row in worst]
    assert worst and losses == sorted(losses, reverse=True)
    assert losses[0] >= max(row[6] for row in tables[-1]["data"])
    staged = [Image.open(path) for path in (runs[kind] / "wandb" / "artifacts" / "staging").iterdir() if is_image(path)]
    rows = sum(len(table["data"]) for table in tables)
    assert len(staged) >= len({row[1] for table in tables for row in table["data"]}), (len(staged), rows)
    assert all(max(image.size) <= 64 for image in staged), "thumbnails, kept in the run dir for `sync`"


def is_image(path: Path) -> bool:
    try:
        with Image.open(path):
            return True
    except OSError:
        return False


def test_galaxy_table_is_off_with_one_key(train_data, tmp_path):  # noqa: F811
    run_dir = tmp_path / "no-table"
    config = run_config(train_data, tmp_path, "classifier", tracking={**OFFLINE, "galaxy_table": 0})
    run_training(config, run_dir, interactive=False)
    assert logged_tables(run_dir) == []
    assert read_offline_run(offline_run_files(run_dir)[0]).metric("validation/loss")


def test_swept_and_searched_values_are_top_level_config_keys_grouped_by_sweep(train_data, tmp_path):  # noqa: F811
    run_dir = tmp_path / "lr-point"
    run_dir.mkdir()
    layout.write_json(run_dir / layout.SUBMISSION, {"sweep": "lr-sweep", "point": {"model.learning_rate": 0.002}})
    config = run_config(train_data, tmp_path, "classifier", tracking=OFFLINE, model={"learning_rate": 0.002})
    run_training(config, run_dir, interactive=False, group="lr-sweep", tracked_params={"model.layer_decay": 0.75})
    run = read_offline_run(offline_run_files(run_dir)[0])
    assert run.group == "lr-sweep"
    assert run.config["model.learning_rate"] == 0.002 and run.config["model.layer_decay"] == 0.75
