"""timm schedules run under Lightning: the lrs the optimiser used are timm's schedule times lr_scale."""

import lightning as L
import pytest
import torch
from timm.scheduler import create_scheduler_v2

from tests.support.model_helpers import LrRecorder, cpu_trainer, galaxy_images, loader
from zoobot_hpc.model import FinetuneableZoobotRegressor
from zoobot_hpc.model.schedulers import updates_per_epoch, validate_scheduler_kwargs

LR = 1e-3
BATCHES_PER_EPOCH = 4
EPOCHS = 4
SCHEDULE = {"sched": "cosine", "num_epochs": EPOCHS, "warmup_epochs": 1, "warmup_lr": 1e-5, "min_lr": 1e-5}


def regression_data(n: int = 4 * BATCHES_PER_EPOCH, seed: int = 0) -> dict[str, torch.Tensor]:
    redness = torch.rand(n, generator=torch.Generator().manual_seed(seed))
    return {"image": galaxy_images(redness, seed=seed), "label": redness}


def regressor(scheduler_kwargs) -> FinetuneableZoobotRegressor:
    return FinetuneableZoobotRegressor(
        name="test_convnext", pretrained=False, learning_rate=LR, scheduler_kwargs=scheduler_kwargs
    )


def timm_reference_lr(scheduler_kwargs: dict, epoch: int, step: int) -> float:
    """The base lr timm's own scheduler gives at this epoch / update, on a one-group optimiser."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    scheduler, _ = create_scheduler_v2(optimizer, **scheduler_kwargs, updates_per_epoch=BATCHES_PER_EPOCH)
    if scheduler.t_in_epochs:
        scheduler.step(epoch)
    else:
        scheduler.step_update(step)
    return optimizer.param_groups[0]["lr"]


def fit(model, max_epochs: int, callbacks: list[L.Callback], ckpt_path=None) -> None:
    trainer = cpu_trainer(max_epochs=max_epochs, callbacks=callbacks, limit_val_batches=0)
    trainer.fit(model, train_dataloaders=loader(regression_data(), batch_size=4), ckpt_path=ckpt_path)


@pytest.mark.parametrize("step_on_epochs", [True, False], ids=["per_epoch", "per_update"])
def test_fit_uses_timms_schedule_times_each_groups_scale(step_on_epochs):
    scheduler_kwargs = {**SCHEDULE, "step_on_epochs": step_on_epochs}
    recorder = LrRecorder()
    fit(regressor(scheduler_kwargs), EPOCHS, [recorder])
    assert len(recorder.records) == EPOCHS * BATCHES_PER_EPOCH
    base_lrs = set()
    for record in recorder.records:
        expected = timm_reference_lr(scheduler_kwargs, record["epoch"], record["step"])
        base_lrs.add(round(expected, 12))
        for lr, scale in zip(record["lrs"], record["lr_scales"], strict=True):
            assert lr == pytest.approx(expected * scale, rel=1e-9), record
    if step_on_epochs:
        assert len(base_lrs) == EPOCHS
    else:
        assert len(base_lrs) > EPOCHS  # it changes within epochs
    assert len({scale for scale in recorder.records[0]["lr_scales"]}) > 3


class StopAndSaveAt(L.Callback):
    """Save a checkpoint after optimiser step `step` (mid-epoch) and stop, as a preemption would."""

    def __init__(self, step: int, path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


@pytest.mark.parametrize("step_on_epochs", [True, False], ids=["per_epoch", "per_update"])
def test_resumed_run_continues_the_schedule(step_on_epochs, tmp_path):
    scheduler_kwargs = {**SCHEDULE, "step_on_epochs": step_on_epochs}
    uninterrupted = LrRecorder()
    fit(regressor(scheduler_kwargs), EPOCHS, [uninterrupted])
    path = tmp_path / "interrupted.ckpt"
    fit(regressor(scheduler_kwargs), EPOCHS, [StopAndSaveAt(6, path)])
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["lr_schedulers"][0]["t_in_epochs"] == step_on_epochs
    resumed = LrRecorder()
    fit(regressor(scheduler_kwargs), EPOCHS, [resumed], ckpt_path=path)
    expected = {r["step"]: r["lrs"] for r in uninterrupted.records}
    assert [r["step"] for r in resumed.records] == list(range(6, EPOCHS * BATCHES_PER_EPOCH))
    for record in resumed.records:
        assert record["lrs"] == pytest.approx(expected[record["step"]], rel=1e-12)


def test_updates_per_epoch_comes_from_the_trainer_and_accumulation():
    recorder = LrRecorder()
    scheduler_kwargs = {**SCHEDULE, "step_on_epochs": False}
    trainer = cpu_trainer(max_epochs=2, callbacks=[recorder], limit_val_batches=0, accumulate_grad_batches=2)
    trainer.fit(regressor(scheduler_kwargs), train_dataloaders=loader(regression_data(), batch_size=4))
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.t_initial == EPOCHS * BATCHES_PER_EPOCH // 2
    assert [r["step"] for r in recorder.records] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "cosine", "max_epochs": 10}, r"unknown keys \['max_epochs', 'name'\]"),
        ({"sched": "plateau"}, "sched='plateau' is not supported"),
        ({"sched": "no_such_schedule"}, "no_such_schedule"),
        ({"sched": "wsd", "num_epochs": 10, "decay_epochs": 20}, "rejected by timm"),
        ("cosine", "must be a dict"),
    ],
)
def test_bad_scheduler_kwargs_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        validate_scheduler_kwargs(kwargs)
    with pytest.raises(ValueError, match=message):
        regressor(kwargs)


def test_scheduler_none_keeps_the_layer_decay_without_a_schedule():
    optimizer = regressor({"sched": "none"}).configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    assert all(g["lr"] == pytest.approx(LR * g["lr_scale"]) for g in optimizer.param_groups)


def test_updates_per_epoch_passed_in_sizes_the_schedule():
    model = regressor({**SCHEDULE, "step_on_epochs": False})
    model.updates_per_epoch = 7
    trainer = cpu_trainer(max_epochs=2, limit_val_batches=0)
    trainer.fit(model, train_dataloaders=loader(regression_data(), batch_size=4))
    assert trainer.lr_scheduler_configs[0].scheduler.t_initial == EPOCHS * 7


@pytest.mark.parametrize(
    ("batches", "limit", "accumulation", "expected"),
    [(10, None, 1, 10), (10, 3, 2, 2), (10, 0.5, 1, 5), (9, 1.0, 2, 5), (1, None, 4, 1)],
)
def test_updates_per_epoch_counts_limited_and_accumulated_batches(batches, limit, accumulation, expected):
    assert updates_per_epoch(batches, limit, accumulation) == expected


def test_updates_per_epoch_needs_a_loader_length():
    with pytest.raises(ValueError, match="has no length"):
        updates_per_epoch(float("inf"), None, 1)
