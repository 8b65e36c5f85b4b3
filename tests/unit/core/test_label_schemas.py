"""Zoobot's schemas verbatim and by name; the tree loss against an independent Dirichlet-multinomial."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from zoobot_hpc.core.config import ConfigError, build_config, dump_config
from zoobot_hpc.core.label_schemas import ALIASES, PRESETS, preset_schema
from zoobot_hpc.model.tree import TreeSchema, tree_loss

# Evaluated from galaxy-datasets' label_metadata.py (see its "_source"): the published trees, not our presets.
PUBLISHED = {
    name: tree
    for name, tree in json.loads(
        (Path(__file__).parents[1] / "model" / "data" / "galaxy_datasets_label_metadata.json").read_text()
    ).items()
    if not name.startswith("_")
}

# As in zoobot.shared.label_metadata: Zoobot's answers start with "_" and the column is question + answer
ZOOBOT_DR5_PAIRS = {
    "smooth-or-featured-dr5": ["_smooth", "_featured-or-disk", "_artifact"],
    "disk-edge-on-dr5": ["_yes", "_no"],
}
ZOOBOT_SHARED_DEPENDENCIES = {  # shared by several trees: entries for questions not asked are ignored
    "smooth-or-featured-dr5": None,
    "disk-edge-on-dr5": "smooth-or-featured-dr5_featured-or-disk",
    "smooth-or-featured-dr8": None,
}


def test_zoobot_format_schema_gives_zoobots_label_columns():
    schema = TreeSchema(ZOOBOT_DR5_PAIRS, ZOOBOT_SHARED_DEPENDENCIES)
    assert schema.label_cols == [
        "smooth-or-featured-dr5_smooth",
        "smooth-or-featured-dr5_featured-or-disk",
        "smooth-or-featured-dr5_artifact",
        "disk-edge-on-dr5_yes",
        "disk-edge-on-dr5_no",
    ]
    assert "smooth-or-featured-dr8" not in schema.dependencies


def test_every_published_tree_is_a_preset_with_its_label_columns_and_dependencies():
    assert set(PUBLISHED) == set(PRESETS)
    for name, published in PUBLISHED.items():
        schema = TreeSchema(*preset_schema(name))
        assert schema.label_cols == published["label_cols"], name
        assert schema.dependencies == published["dependencies"], name


@pytest.mark.parametrize(("alias", "columns"), [("gz2", 30), ("decals_dr5", 34), ("decals_dr8", 34), ("desi", 34)])
def test_named_schema_in_a_config_round_trips(alias, columns):
    raw = {"data": {"dataset_dir": "d"}, "model": {"kind": "tree", "name": "resnet18", "schema": alias}}
    config = build_config(raw)
    assert len(TreeSchema(config.model.question_answer_pairs, config.model.dependencies).label_cols) == columns
    import yaml

    assert build_config(yaml.safe_load(dump_config(config))).model == config.model
    assert set(ALIASES.values()) <= set(PRESETS)


def test_unknown_or_contradicting_schema_is_one_line_error():
    raw = {"data": {"dataset_dir": "d"}, "model": {"kind": "tree", "name": "resnet18", "schema": "gz3"}}
    with pytest.raises(ConfigError, match=r"model: schema='gz3' is not a known Galaxy Zoo tree; choose one of \["):
        build_config(raw)
    raw["model"].update(schema="gz2", question_answer_pairs=ZOOBOT_DR5_PAIRS, dependencies=ZOOBOT_SHARED_DEPENDENCIES)
    with pytest.raises(ConfigError, match="disagree"):
        build_config(raw)


def test_tree_loss_equals_independent_dirichlet_multinomial():
    from scipy.stats import dirichlet_multinomial

    schema = TreeSchema.named("decals_dr5")
    generator = np.random.default_rng(0)
    concentrations = generator.uniform(1.0, 100.0, size=(4, len(schema.label_cols)))
    counts = generator.integers(0, 12, size=concentrations.shape).astype(float)
    counts[0, schema.question_slices[3]] = 0  # a question nobody was asked
    expected = np.zeros(len(counts))
    for row in range(len(counts)):
        for answers in schema.question_slices:
            votes = counts[row, answers]
            if votes.sum():
                expected[row] -= dirichlet_multinomial.logpmf(votes, concentrations[row, answers], int(votes.sum()))
    loss = tree_loss(torch.tensor(counts), torch.tensor(concentrations), schema)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-10)
