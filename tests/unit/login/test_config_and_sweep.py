"""Config validation (one-line errors naming the key) and sweep expansion."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from zoobot_hpc.core.config import ConfigError, dump_config, load_config
from zoobot_hpc.login.submit import plan_runs
from zoobot_hpc.login.sweep import expand_points, parse_overrides, run_name, split_top_level

REPO = Path(__file__).resolve().parents[3]
DEMO = REPO / "configs" / "demo.yaml"


def write_config(tmp_path: Path, **changes) -> Path:
    raw = yaml.safe_load(DEMO.read_text())
    for section, values in changes.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_every_shipped_config_validates():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        config = load_config(path)
        assert config.model.learning_rate > 0, path


def test_dotted_overrides_apply_with_types():
    config = load_config(DEMO, ["model.learning_rate=3e-4", "trainer.max_epochs=2", "model.training_mode=head_only"])
    assert config.model.learning_rate == pytest.approx(3e-4)
    assert config.trainer.max_epochs == 2
    assert config.model.training_mode == "head_only"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.learning_rte=1e-3", "unknown key 'model.learning_rte'"),
        ("data.batch_size=lots", "data.batch_size"),
        ("model.training_mode=partial", "model.training_mode"),
        ("model.layer_decay=1.5", "model.layer_decay"),
        ("model.head_dropout_prob=1.0", "model.head_dropout_prob"),
        ("model.kind=segmenter", "model.kind"),
        ("resources.gpus_per_node=4", "tasks_per_node"),
        ("nonsense", "KEY=VALUE"),
    ],
)
def test_bad_config_is_one_line_error_naming_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(DEMO, [override])
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_typo_in_file_names_file_and_key(tmp_path):
    path = write_config(tmp_path, trainer={"max_epoch": 3})
    with pytest.raises(ConfigError, match=r"config.yaml: unknown key 'trainer.max_epoch'"):
        load_config(path)


def test_dump_round_trips(tmp_path):
    config = load_config(DEMO, ["model.learning_rate=2e-4"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


def test_sweep_expansion_product_and_names():
    assert split_top_level("a,[1,2],{x: 1, y: 2}") == ["a", "[1,2]", "{x: 1, y: 2}"]
    fixed, swept = parse_overrides(["model.learning_rate=1e-4,3e-4", "model.layer_decay=0.5,0.75", "trainer.seed=3"])
    assert fixed == {"trainer.seed": 3}
    points = expand_points(swept)
    assert len(points) == 4
    assert points[1] == {"model.learning_rate": 1e-4, "model.layer_decay": 0.75}
    assert run_name(points[1]) == "learning_rate=0.0001,layer_decay=0.75"
    extra = expand_points({"a": [1]}, include=[{"a": 2}, {"a": 1}])
    assert extra == [{"a": 1}, {"a": 2}]


def test_plan_from_grid_file_gives_distinct_run_dirs(tmp_path):
    path = write_config(tmp_path, output_dir=str(tmp_path / "runs"))
    plan = plan_runs(
        path, ["trainer.max_epochs=1"], grid_file=REPO / "configs" / "grids" / "lr_layer_decay.yaml", sweep_name="grid"
    )
    assert plan.sweep_name == "grid"
    assert len(plan.runs) == 4
    assert len({run.run_dir for run in plan.runs}) == 4
    assert all(run.run_dir.parent == tmp_path / "runs" / "grid" for run in plan.runs)
    assert {run.config.model.learning_rate for run in plan.runs} == {3e-4, 1e-3}
    assert all(run.config.trainer.max_epochs == 1 for run in plan.runs)
    assert all(run.config.name == run.name for run in plan.runs)


def test_bad_value_inside_a_sweep_names_the_run(tmp_path):
    with pytest.raises(ConfigError, match=r"layer_decay=2.*model.layer_decay"):
        plan_runs(DEMO, ["model.layer_decay=0.5,2"])
