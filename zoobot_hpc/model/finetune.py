"""FinetuneableZoobot LightningModules: a timm encoder plus a dropout + linear head, trained with AdamW.

Batches are dicts: `image` float32 (B, C, H, W) in [0, 1] plus the model's `label_cols`; a batch from an
embedding cache holds `embedding` float32 (B, num_features) instead, and the encoder is skipped.
"""

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric
from torchmetrics.aggregation import CatMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError

from zoobot_hpc.core.label_schemas import resolve_schema
from zoobot_hpc.core.model_kinds import CHECKPOINT_KIND_KEY
from zoobot_hpc.model.encoders import (
    create_encoder,
    encoder_architecture,
    encoder_from_architecture,
    encoder_from_checkpoint,
)
from zoobot_hpc.model.param_groups import apply_lr_scale, finetuning_param_groups
from zoobot_hpc.model.schedulers import (
    create_scheduler,
    set_schedule_position,
    steps_on_epochs,
    updates_per_epoch,
    validate_scheduler_kwargs,
)
from zoobot_hpc.model.tree import (
    DirichletConcentrations,
    TreeSchema,
    tree_loss,
    tree_question_losses,
    vote_fraction_errors,
    vote_fractions,
)
from zoobot_hpc.model.validation_metrics import ColumnMeans, per_class_scores

STAGES = ("train", "validation", "test")
TRAINING_MODES = ("full", "head_only")


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's CPU RNG seeded to `seed`, leaving the global RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _check(valid: bool, message: str) -> None:
    if not valid:
        raise ValueError(message)


class FinetuneableZoobotAbstract(L.LightningModule):
    """Shared encoder, optimiser, schedule, logging and checkpoint behaviour of the finetuneable models.

    Args:
        name: timm encoder name: any timm name, `hf_hub:owner/repo` or `local-dir:/path`.
        encoder: an in-memory encoder instead of `name` (pooled output, `num_features`); not saved in hparams,
            so pass it again to `load_from_checkpoint`.
        zoobot_checkpoint_loc: a Lightning checkpoint whose `encoder.*` weights to start from.
        pretrained: load the named encoder's pretrained weights (ignored when restoring a checkpoint).
        timm_kwargs: extra `timm.create_model` keywords (e.g. drop_path_rate).
        greyscale: one input channel instead of three.
        learning_rate: AdamW lr of the head and the top encoder block.
        training_mode: 'full' (encoder and head) or 'head_only' (frozen encoder kept in eval mode).
        layer_decay: lr factor per encoder block below the top (timm's layer grouping).
        weight_decay: AdamW weight decay of the encoder's >1-D parameters (the head has none).
        head_dropout_prob: dropout probability before the head's linear layer.
        scheduler_kwargs: timm `create_scheduler_v2` keywords, e.g. {'sched': 'cosine', 'num_epochs': 50}.
        seed: seeds the random initialisation of the head (and of a non-pretrained encoder).
    """

    kind: ClassVar[str]  # one of MODEL_KINDS, recorded in every checkpoint

    def __init__(  # noqa: PLR0913 (Zoobot 2.9's FinetuneableZoobotAbstract keyword arguments)
        self,
        name: str | None = None,
        encoder: nn.Module | None = None,
        zoobot_checkpoint_loc: str | None = None,
        pretrained: bool = True,
        timm_kwargs: Mapping[str, Any] | None = None,
        greyscale: bool = False,
        learning_rate: float = 1e-4,
        training_mode: str = "full",
        layer_decay: float = 0.75,
        weight_decay: float = 0.05,
        head_dropout_prob: float = 0.5,
        scheduler_kwargs: Mapping[str, Any] | None = None,
        seed: int = 42,
        encoder_architecture: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        _check(
            training_mode in TRAINING_MODES,
            f"training_mode={training_mode!r} must be one of {TRAINING_MODES}",
        )
        _check(_is_real(learning_rate) and learning_rate > 0, f"learning_rate={learning_rate!r} must be > 0")
        _check(_is_real(layer_decay) and 0 <= layer_decay <= 1, f"layer_decay={layer_decay!r} must be in [0, 1]")
        _check(_is_real(weight_decay) and weight_decay >= 0, f"weight_decay={weight_decay!r} must be >= 0")
        _check(
            _is_real(head_dropout_prob) and 0 <= head_dropout_prob < 1,
            f"head_dropout_prob={head_dropout_prob!r} must be in [0, 1)",
        )
        _check(isinstance(seed, int) and not isinstance(seed, bool), f"seed={seed!r} must be an int")
        _check(
            sum(source is not None for source in (name or zoobot_checkpoint_loc, encoder)) == 1,
            "give exactly one encoder source (name and/or zoobot_checkpoint_loc, or encoder); got "
            f"name={name!r}, zoobot_checkpoint_loc={zoobot_checkpoint_loc!r}, "
            f"encoder={type(encoder).__name__ if encoder is not None else None}",
        )
        self.save_hyperparameters(ignore=["encoder"])
        # Optimiser steps per epoch of a per-update schedule, set by the training code before `fit` (it knows the
        # train loader's length at the run's world size); None: the Trainer is asked (see _updates_per_epoch).
        self.updates_per_epoch: int | None = None
        self.hparams.scheduler_kwargs = validate_scheduler_kwargs(scheduler_kwargs)
        self.hparams.timm_kwargs = None if timm_kwargs is None else dict(timm_kwargs)
        self.metrics = nn.ModuleDict()
        # What the last validation pass computed beyond scalars (a confusion matrix, predicted and true values),
        # over the whole split and on every rank, for the training code's W&B figures.
        self.validation_figures: dict[str, torch.Tensor] = {}
        self.last_validation_outputs: torch.Tensor | None = None

        if encoder is not None:
            self.encoder = create_encoder(encoder)
        elif zoobot_checkpoint_loc is not None:
            self.encoder, self.hparams.name, self.hparams.timm_kwargs = encoder_from_checkpoint(
                zoobot_checkpoint_loc, name, timm_kwargs, greyscale
            )
        else:
            with seeded(seed):
                if encoder_architecture is not None and not pretrained:
                    self.encoder = encoder_from_architecture(encoder_architecture)
                else:
                    self.encoder = create_encoder(name, pretrained, timm_kwargs, greyscale)
        if self.head_only:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    @property
    def head_only(self) -> bool:
        """Whether only the head trains (the encoder is frozen and kept in eval mode)."""
        return self.hparams.training_mode == "head_only"

    @property
    def in_channels(self) -> int:
        """Channels of the images the encoder takes."""
        return 1 if self.hparams.greyscale else 3

    @property
    def label_cols(self) -> list[str]:
        """The batch keys holding this model's labels."""
        raise NotImplementedError

    def linear_head(self, out_features: int, activation: nn.Module | None = None) -> nn.Sequential:
        """Zoobot's head: dropout, one linear layer, optional activation; seeded by `seed`."""
        with seeded(self.hparams.seed):
            layers = [
                nn.Dropout(self.hparams.head_dropout_prob),
                nn.Linear(self.encoder.num_features, out_features),
            ]
        return nn.Sequential(*layers, *([activation] if activation is not None else []))

    def add_stage_metric(self, metric_name: str, make_metric: Callable[[], Metric]) -> None:
        """Register one `make_metric()` per stage, logged as f"{stage}/{metric_name}"."""
        for stage in STAGES:
            self.metrics[f"{stage}_{metric_name}"] = make_metric()

    def log_stage_metric(self, stage: str, metric_name: str, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Update the stage's metric with a batch; log it per epoch (torchmetrics syncs it across ranks)."""
        metric = self.metrics[f"{stage}_{metric_name}"]
        metric.update(preds, target)
        self.log(f"{stage}/{metric_name}", metric, on_step=False, on_epoch=True)

    def reset_stage_metrics(self, stage: str) -> None:
        """Fresh metric states for a stage, created in the running loop's grad mode.

        States reset under `trainer.validate`'s inference mode would otherwise break in-place updates in the
        validation loop of a later `fit` (which runs under no_grad).
        """
        for key, metric in self.metrics.items():
            if key.startswith(f"{stage}_"):
                metric.reset()

    def on_train_epoch_start(self) -> None:
        self.reset_stage_metrics("train")

    def on_validation_epoch_start(self) -> None:
        self.reset_stage_metrics("validation")

    def on_test_epoch_start(self) -> None:
        self.reset_stage_metrics("test")

    def on_validation_epoch_end(self) -> None:
        """Log the task's per-class or per-question metrics of the whole validation pass (synced across ranks)."""
        self.validation_figures = {}
        for key, value in self.validation_report().items():
            if math.isfinite(value):
                self.log(key, value, on_step=False, on_epoch=True)

    def validation_report(self) -> dict[str, float]:
        """The task's per-class / per-question validation metrics of the pass, by key; may fill
        `validation_figures`."""
        return {}

    def train(self, mode: bool = True) -> "FinetuneableZoobotAbstract":
        """Set train/eval mode; in head_only mode the encoder stays in eval mode."""
        super().train(mode)
        if self.head_only:
            self.encoder.eval()
        return self

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder's pooled features (B, num_features) of float images in [0, 1]."""
        if self.head_only:
            with torch.no_grad():
                return self.encoder(images)
        return self.encoder(images)

    def head_outputs(self, embedding: torch.Tensor) -> torch.Tensor:
        """Head outputs (logits, values or concentrations) for encoder embeddings (B, num_features), in float32
        whatever the autocast precision, so that losses and metrics are not rounded to bf16."""
        return self.head(embedding).float()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Head outputs for float images (B, C, H, W) in [0, 1]."""
        return self.head_outputs(self.embed(images))

    def batch_outputs(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Head outputs of a batch: from its cached `embedding` when present, else from its `image`."""
        if "embedding" in batch:
            return self.head_outputs(batch["embedding"])
        return self(batch["image"])

    def compute_loss(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        """The scalar training loss of a batch."""
        raise NotImplementedError

    def log_metrics(self, outputs: torch.Tensor, batch: Mapping[str, Any], stage: str) -> None:
        """Update and log the task's metrics for a batch (the loss is logged separately)."""

    def predictions(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named predictions from head outputs."""
        raise NotImplementedError

    def per_galaxy_loss(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        """The loss of each galaxy of a batch (B,), unweighted."""
        raise NotImplementedError

    def _shared_step(self, batch: Mapping[str, Any], stage: str) -> torch.Tensor:
        outputs = self.batch_outputs(batch)
        if stage == "validation":
            self.last_validation_outputs = outputs.detach()  # for the training code's galaxy table
        loss = self.compute_loss(outputs, batch)
        batch_size = outputs.shape[0]
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=batch_size)
        self.log_metrics(outputs.detach(), batch, stage)
        return loss

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "validation")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "test")

    def predict_step(
        self, batch: Mapping[str, Any], batch_idx: int = 0, dataloader_idx: int = 0
    ) -> dict[str, torch.Tensor]:
        return self.predictions(self.batch_outputs(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        """AdamW over layer-decayed groups; with `scheduler_kwargs`, timm's scheduler stepped by Lightning."""
        hparams = self.hparams
        groups = finetuning_param_groups(
            self.encoder,
            self.head,
            learning_rate=hparams.learning_rate,
            weight_decay=hparams.weight_decay,
            layer_decay=hparams.layer_decay,
            train_encoder=not self.head_only,
        )
        optimizer = torch.optim.AdamW(groups, lr=hparams.learning_rate)
        scheduler_kwargs = hparams.scheduler_kwargs
        scheduler = None
        if scheduler_kwargs is not None:
            on_epochs = steps_on_epochs(scheduler_kwargs)
            updates_per_epoch = (
                None if on_epochs or scheduler_kwargs.get("updates_per_epoch") else self._updates_per_epoch()
            )
            scheduler = create_scheduler(optimizer, scheduler_kwargs, updates_per_epoch)
        if scheduler is None:
            apply_lr_scale(optimizer)
            return optimizer
        interval = "epoch" if scheduler.t_in_epochs else "step"
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    def _updates_per_epoch(self) -> int:
        """Optimiser steps per epoch: `updates_per_epoch` when the training code set it, else from the Trainer.

        Asking the Trainer (`estimated_stepping_batches`) builds its train loader before a checkpoint is restored,
        and Lightning then never loads the loader's (sampler's) state: a mid-epoch resume would replay the epoch
        from its first batch. The package's training code therefore passes the count in; the Trainer is asked only
        by code that fits the module with its own Trainer.
        """
        if self.updates_per_epoch is not None:
            return self.updates_per_epoch
        trainer = self.trainer
        _ = trainer.estimated_stepping_batches  # loads the train dataloader, which sets num_training_batches
        return updates_per_epoch(trainer.num_training_batches, None, trainer.accumulate_grad_batches)

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """Advance timm's scheduler: to the next epoch (per-epoch schedules) or to `global_step` updates."""
        set_schedule_position(scheduler, epoch=self.current_epoch + 1, num_updates=self.global_step)

    def on_train_start(self) -> None:
        """On resume, put the schedule at the restored epoch / update, as timm's train.py does.

        The lrs then follow the schedule whatever the checkpoint's optimiser held; a fresh run keeps its start.
        """
        if self.global_step == 0:
            return
        for config in self.trainer.lr_scheduler_configs:
            set_schedule_position(config.scheduler, epoch=self.current_epoch, num_updates=self.global_step)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Weights live in the checkpoint: restoring rebuilds the encoder without pretrained weights, from the
        timm architecture and arguments stored here (no `hf_hub:` or `local-dir:` config is read again). The
        model's kind is stored too, so that inference reads it instead of guessing it."""
        checkpoint[CHECKPOINT_KIND_KEY] = self.kind
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"].update(
                pretrained=False, zoobot_checkpoint_loc=None, encoder_architecture=encoder_architecture(self.encoder)
            )


class FinetuneableZoobotClassifier(FinetuneableZoobotAbstract):
    """Classifier with cross-entropy loss; logs loss and accuracy.

    Args:
        num_classes: number of classes (>= 2); labels are int64 class indices in `batch[label_col]`.
        label_smoothing: cross-entropy label smoothing in [0, 1).
        class_weights: optional per-class loss weights (num_classes non-negative numbers).
        class_names: optional names of the classes, in index order.
        label_col: the batch key of the labels.
        **kwargs: the arguments of `FinetuneableZoobotAbstract`.
    """

    kind: ClassVar[str] = "classifier"

    def __init__(
        self,
        num_classes: int,
        label_smoothing: float = 0.0,
        class_weights: Sequence[float] | None = None,
        class_names: Sequence[str] | None = None,
        label_col: str = "label",
        **kwargs: Any,
    ) -> None:
        _check(
            isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes >= 2,
            f"num_classes={num_classes!r} must be an int >= 2",
        )
        _check(
            _is_real(label_smoothing) and 0 <= label_smoothing < 1,
            f"label_smoothing={label_smoothing!r} must be in [0, 1)",
        )
        _check(
            class_weights is None
            or (len(class_weights) == num_classes and all(_is_real(w) and w >= 0 for w in class_weights)),
            f"class_weights={class_weights!r} must be {num_classes} non-negative numbers",
        )
        _check(
            class_names is None or len(class_names) == num_classes,
            f"class_names={class_names!r} must name {num_classes} classes",
        )
        _check(isinstance(label_col, str) and bool(label_col), f"label_col={label_col!r} must be a non-empty str")
        super().__init__(**kwargs)
        self.hparams.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.hparams.class_names = None if class_names is None else list(class_names)
        weights = None if class_weights is None else torch.tensor(self.hparams.class_weights)
        self.register_buffer("class_weights", weights, persistent=False)
        self.head = self.linear_head(num_classes)
        self.add_stage_metric("accuracy", lambda: MulticlassAccuracy(num_classes, average="micro"))
        self.metrics["validation_confusion"] = MulticlassConfusionMatrix(num_classes)

    @property
    def label_cols(self) -> list[str]:
        return [self.hparams.label_col]

    @property
    def class_labels(self) -> list[str]:
        """The classes' names (their indices where the config names none)."""
        return self.hparams.class_names or [str(index) for index in range(self.hparams.num_classes)]

    def validation_report(self) -> dict[str, float]:
        confusion = self.metrics["validation_confusion"].compute()
        self.validation_figures["confusion_matrix"] = confusion
        report = {}
        for score, values in per_class_scores(confusion).items():
            report.update(
                {f"validation/{score}/{name}": float(v) for name, v in zip(self.class_labels, values, strict=True)}
            )
        return report

    def compute_loss(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return F.cross_entropy(
            outputs,
            batch[self.hparams.label_col].long(),
            weight=self.class_weights,
            label_smoothing=self.hparams.label_smoothing,
        )

    def per_galaxy_loss(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return F.cross_entropy(outputs, batch[self.hparams.label_col].long(), reduction="none")

    def log_metrics(self, outputs: torch.Tensor, batch: Mapping[str, Any], stage: str) -> None:
        predicted, target = outputs.argmax(dim=1), batch[self.hparams.label_col].long()
        self.log_stage_metric(stage, "accuracy", predicted, target)
        if stage == "validation":
            self.metrics["validation_confusion"].update(predicted, target)

    def predictions(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"probabilities": outputs.softmax(dim=1)}


class FinetuneableZoobotRegressor(FinetuneableZoobotAbstract):
    """Regressor of one float label; logs loss and RMSE.

    Args:
        loss: 'mse' or 'mae'.
        unit_interval: squash predictions into (0, 1) with a sigmoid.
        label_col: the batch key of the float32 labels.
        **kwargs: the arguments of `FinetuneableZoobotAbstract`.
    """

    kind: ClassVar[str] = "regressor"
    LOSSES: ClassVar[dict[str, Callable[..., torch.Tensor]]] = {"mse": F.mse_loss, "mae": F.l1_loss}

    def __init__(self, loss: str = "mse", unit_interval: bool = False, label_col: str = "label", **kwargs: Any) -> None:
        _check(loss in self.LOSSES, f"loss={loss!r} must be one of {sorted(self.LOSSES)}")
        _check(isinstance(label_col, str) and bool(label_col), f"label_col={label_col!r} must be a non-empty str")
        super().__init__(**kwargs)
        self.head = self.linear_head(1, nn.Sigmoid() if unit_interval else None)
        self.add_stage_metric("rmse", lambda: MeanSquaredError(squared=False))
        self.add_stage_metric("mae", MeanAbsoluteError)
        self.metrics["validation_predicted"] = CatMetric()
        self.metrics["validation_true"] = CatMetric()

    @property
    def label_cols(self) -> list[str]:
        return [self.hparams.label_col]

    def head_outputs(self, embedding: torch.Tensor) -> torch.Tensor:
        """Predicted values (B,)."""
        return super().head_outputs(embedding).squeeze(-1)

    def compute_loss(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.LOSSES[self.hparams.loss](outputs, batch[self.hparams.label_col].to(outputs.dtype))

    def per_galaxy_loss(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        target = batch[self.hparams.label_col].to(outputs.dtype)
        return self.LOSSES[self.hparams.loss](outputs, target, reduction="none")

    def log_metrics(self, outputs: torch.Tensor, batch: Mapping[str, Any], stage: str) -> None:
        target = batch[self.hparams.label_col].to(outputs.dtype)
        self.log_stage_metric(stage, "rmse", outputs, target)
        self.log_stage_metric(stage, "mae", outputs, target)
        if stage == "validation":
            self.metrics["validation_predicted"].update(outputs)
            self.metrics["validation_true"].update(target)

    def validation_report(self) -> dict[str, float]:
        if self.metrics["validation_true"].update_count:
            self.validation_figures["predicted"] = self.metrics["validation_predicted"].compute()
            self.validation_figures["true"] = self.metrics["validation_true"].compute()
        return {}

    def predictions(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"values": outputs}


class FinetuneableZoobotTree(FinetuneableZoobotAbstract):
    """Decision-tree model (Zoobot's schema): Dirichlet concentrations per answer, Dirichlet-multinomial loss.

    Args:
        question_answer_pairs: question -> its answers, ours (`"smooth"`, column `question_smooth`) or Zoobot's
            (`"_smooth"`, column `question + answer`).
        dependencies: question -> the answer column it follows from, or None for a top-level question.
        schema: a named Galaxy Zoo tree (`gz2`, `decals_dr5`, `desi`, ...) instead of the two above.
        **kwargs: the arguments of `FinetuneableZoobotAbstract`.
    """

    kind: ClassVar[str] = "tree"

    def __init__(
        self,
        question_answer_pairs: Mapping[str, Sequence[str]] | None = None,
        dependencies: Mapping[str, str | None] | None = None,
        schema: str | None = None,
        **kwargs: Any,
    ) -> None:
        tree = TreeSchema(*resolve_schema(schema, question_answer_pairs, dependencies))
        super().__init__(**kwargs)
        self.hparams.question_answer_pairs = tree.question_answer_pairs
        self.hparams.dependencies = tree.dependencies
        self.schema = tree
        self.head = self.linear_head(len(tree.label_cols), DirichletConcentrations())
        self.metrics["validation_question_loss"] = ColumnMeans(len(tree.questions))
        self.metrics["validation_fraction_mae"] = ColumnMeans(len(tree.questions))

    @property
    def label_cols(self) -> list[str]:
        return self.schema.label_cols

    def per_galaxy_loss(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return tree_loss(self.vote_counts(batch), outputs, self.schema)

    def log_metrics(self, outputs: torch.Tensor, batch: Mapping[str, Any], stage: str) -> None:
        """Validation: each question's loss (over all galaxies) and vote-fraction MAE (where it was asked)."""
        if stage != "validation":
            return
        counts = self.vote_counts(batch)
        self.metrics["validation_question_loss"].update(tree_question_losses(counts, outputs, self.schema))
        asked = torch.stack([counts[:, answers].sum(dim=1) > 0 for answers in self.schema.question_slices], dim=1)
        errors = vote_fraction_errors(counts, vote_fractions(outputs, self.schema), self.schema)
        self.metrics["validation_fraction_mae"].update(errors, asked)

    def validation_report(self) -> dict[str, float]:
        """`validation/loss/<question>` (their sum is `validation/loss`) and `validation/vote_fraction_mae/<q>`."""
        report = {}
        for prefix, key in (("loss", "validation_question_loss"), ("vote_fraction_mae", "validation_fraction_mae")):
            values = self.metrics[key].compute().reshape(-1)  # torchmetrics squeezes a one-question tree's
            report.update(
                {f"validation/{prefix}/{q}": float(v) for q, v in zip(self.schema.questions, values, strict=True)}
            )
        return report

    def vote_counts(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The batch's vote counts (B, A) in `label_cols` order; a question never asked (NaN) counts 0 votes."""
        counts = torch.stack([batch[column] for column in self.label_cols], dim=1).float()
        return torch.nan_to_num(counts, nan=0.0)

    def compute_loss(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return tree_loss(self.vote_counts(batch), outputs, self.schema).mean()

    def predictions(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"concentrations": outputs, "vote_fractions": vote_fractions(outputs, self.schema)}


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


MODEL_CLASSES: dict[str, type[FinetuneableZoobotAbstract]] = {
    cls.kind: cls for cls in (FinetuneableZoobotClassifier, FinetuneableZoobotRegressor, FinetuneableZoobotTree)
}
