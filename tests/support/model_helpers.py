"""Model test helpers: tiny encoders saved in Hugging Face layout, synthetic galaxies, CPU trainers."""

from pathlib import Path
from typing import Any

import lightning as L
import timm
import torch
from timm.models import save_for_hf
from torch.utils.data import DataLoader, Dataset

TINY_ENCODER = "test_convnext"
HUB_REPO = "zoobot-test/encoder-test_convnext"
HUB_REVISION = "0123456789abcdef0123456789abcdef01234567"
IMAGE_SIZE = 32


def save_encoder_in_hf_layout(folder: Path, name: str = TINY_ENCODER, seed: int = 0) -> torch.nn.Module:
    """Save a random-init timm model with timm's own `save_for_hf` (config.json + model.safetensors)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False)
    save_for_hf(model, str(folder), safe_serialization=True)
    return model


def galaxy_images(redness: torch.Tensor, seed: int, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Float images (N, 3, size, size) in [0, 1]: a Gaussian blob whose colour runs from blue (0) to red (1).

    Colour, not brightness, carries the signal: ConvNeXt's per-pixel LayerNorm hides overall brightness.
    """
    generator = torch.Generator().manual_seed(seed)
    n = redness.shape[0]
    coords = torch.arange(size, dtype=torch.float32) - size / 2
    centres = (torch.rand(n, 2, generator=generator) - 0.5) * size / 4
    widths = 3 + 3 * torch.rand(n, 1, 1, generator=generator)
    peaks = 0.5 + 0.4 * torch.rand(n, 1, 1, generator=generator)
    dy = coords.view(1, size, 1) - centres[:, 0].view(n, 1, 1)
    dx = coords.view(1, 1, size) - centres[:, 1].view(n, 1, 1)
    blob = peaks * torch.exp(-(dx**2 + dy**2) / (2 * widths**2))
    colour = torch.stack([0.4 + 0.6 * redness, torch.full_like(redness, 0.7), 1.0 - 0.6 * redness], dim=1)
    noise = 0.05 * torch.rand(n, 3, size, size, generator=generator)
    return (blob.unsqueeze(1) * colour.view(n, 3, 1, 1) + noise).clamp(0, 1)


class DictDataset(Dataset):
    """Rows of a dict of equal-length tensors, as dicts (what the datamodule's batches look like)."""

    def __init__(self, columns: dict[str, torch.Tensor]) -> None:
        self.columns = columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: values[index] for key, values in self.columns.items()}


def loader(columns: dict[str, torch.Tensor], batch_size: int = 16, shuffle: bool = False) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    return DataLoader(DictDataset(columns), batch_size=batch_size, shuffle=shuffle, generator=generator)


def cpu_trainer(**kwargs: Any) -> L.Trainer:
    """A quiet CPU trainer, as the tests use it."""
    defaults: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    return L.Trainer(**{**defaults, **kwargs})


class LrRecorder(L.Callback):
    """Records, before each optimiser step, the global step, epoch and the lr of every param group."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self.records.append(
            {
                "step": trainer.global_step,
                "epoch": trainer.current_epoch,
                "lrs": [group["lr"] for group in optimizer.param_groups],
                "lr_scales": [group["lr_scale"] for group in optimizer.param_groups],
            }
        )
