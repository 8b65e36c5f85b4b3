"""augment_batch: a pure function of (seed, epoch, sample index); exact where the view is lossless."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from zoobot_hpc.data.augment import AugmentConfig, augment_batch, uniform_draws

SIZE = 24


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randint(0, 256, (8, 40, 40, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def as_float(images: torch.Tensor) -> torch.Tensor:
    return images.permute(0, 3, 1, 2).float() / 255


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("greyscale", [False, True])
def test_output_shape_dtype_range_and_layout(images: torch.Tensor, training: bool, greyscale: bool) -> None:
    config = AugmentConfig(output_size=SIZE, greyscale=greyscale)
    out = augment_batch(images, torch.arange(8), epoch=0, seed=1, config=config, training=training)
    assert out.shape == (8, 1 if greyscale else 3, SIZE, SIZE)
    assert out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.std() > 0.05


def test_training_view_is_a_pure_function_of_seed_epoch_and_index(images: torch.Tensor) -> None:
    config = AugmentConfig(output_size=SIZE)
    indices = torch.tensor([5, 900, 3, 12, 77, 1_000_000, 42, 8])
    out = augment_batch(images, indices, epoch=3, seed=9, config=config, training=True)
    assert torch.equal(out, augment_batch(images, indices, epoch=3, seed=9, config=config, training=True))
    # Each sample's view does not depend on which batch or position it is in (resume, workers, ranks).
    order = torch.tensor([6, 2, 7])
    subset = augment_batch(images[order], indices[order], epoch=3, seed=9, config=config, training=True)
    assert torch.equal(subset, out[order])
    # ...and the global RNG plays no part.
    torch.manual_seed(1234)
    assert torch.equal(out, augment_batch(images, indices, epoch=3, seed=9, config=config, training=True))

    other_epoch = augment_batch(images, indices, epoch=4, seed=9, config=config, training=True)
    other_seed = augment_batch(images, indices, epoch=3, seed=10, config=config, training=True)
    for other in (other_epoch, other_seed):
        assert all(not torch.equal(out[k], other[k]) for k in range(8))


def test_same_image_gets_different_views_at_different_indices(images: torch.Tensor) -> None:
    repeated = images[:1].expand(8, -1, -1, -1).contiguous()
    out = augment_batch(repeated, torch.arange(8), epoch=0, seed=0, config=AugmentConfig(), training=True)
    assert len({tuple(view.flatten()[::997].tolist()) for view in out}) == 8


def test_eval_is_deterministic_center_crop_and_resize(images: torch.Tensor) -> None:
    config = AugmentConfig(output_size=SIZE)
    margin = torch.full((8, 40, 5, 3), 255, dtype=torch.uint8)
    wide = torch.cat([margin, images, margin], dim=2)  # (8, 40, 50, 3): the square crop is `images`
    out = augment_batch(wide, torch.arange(8), epoch=0, seed=0, config=config, training=False)
    again = augment_batch(wide, torch.arange(8) + 50, epoch=7, seed=3, config=config, training=False)
    assert torch.equal(out, again)
    expected = F.interpolate(as_float(images), size=(SIZE, SIZE), mode="bilinear", antialias=True)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_greyscale_is_the_channel_mean(images: torch.Tensor) -> None:
    config = AugmentConfig(output_size=40, greyscale=True)
    out = augment_batch(images, torch.arange(8), epoch=0, seed=0, config=config, training=False)
    torch.testing.assert_close(out, as_float(images).mean(dim=1, keepdim=True))


def test_right_angle_rotations_and_flips_are_exact(images: torch.Tensor) -> None:
    config = AugmentConfig(output_size=40, rotation="90", flip=True, zoom_range=(1.0, 1.0), translate=0.0)
    batch = images[:1].expand(64, -1, -1, -1).contiguous()
    out = augment_batch(batch, torch.arange(64), epoch=2, seed=5, config=config, training=True)
    source = as_float(images[:1])[0]
    dihedral = [torch.rot90(view, k, dims=(1, 2)) for view in (source, source.flip(2)) for k in range(4)]
    matches = [next(j for j, view in enumerate(dihedral) if torch.equal(view, out[i])) for i in range(64)]
    assert set(matches) == set(range(8))


def test_no_rotation_flip_zoom_or_shift_is_the_identity(images: torch.Tensor) -> None:
    config = AugmentConfig(output_size=40, rotation="none", flip=False, zoom_range=(1.0, 1.0), translate=0.0)
    out = augment_batch(images, torch.arange(8), epoch=0, seed=0, config=config, training=True)
    assert torch.equal(out, as_float(images))


def test_zoom_magnifies_the_center() -> None:
    image = torch.zeros(1, 64, 64, 3, dtype=torch.uint8)
    image[:, 24:40, 24:40] = 255  # a centred 16-pixel square
    config = AugmentConfig(output_size=64, rotation="none", flip=False, zoom_range=(2.0, 2.0), translate=0.0)
    out = augment_batch(image, torch.arange(1), epoch=0, seed=0, config=config, training=True)
    bright_rows = (out[0, 0].max(dim=1).values > 0.5).sum().item()
    assert 30 <= bright_rows <= 34


def test_shift_stays_within_translate() -> None:
    image = torch.zeros(256, 33, 33, 1, dtype=torch.uint8).expand(-1, -1, -1, 3).contiguous()
    image[:, 16, 16] = 255
    config = AugmentConfig(output_size=33, rotation="none", flip=False, zoom_range=(1.0, 1.0), translate=0.1)
    out = augment_batch(image, torch.arange(256), epoch=0, seed=0, config=config, training=True)
    rows = out[:, 0].sum(dim=2).argmax(dim=1) - 16
    cols = out[:, 0].sum(dim=1).argmax(dim=1) - 16
    assert rows.abs().max() <= 4 and cols.abs().max() <= 4
    assert rows.abs().max() >= 3 and len(set(cols.tolist())) > 5


def test_draws_are_uniform_and_well_mixed() -> None:
    draws = uniform_draws(torch.arange(20_000), epoch=0, seed=2**40 + 3, streams=6)
    assert draws.shape == (20_000, 6)
    assert draws.min() >= 0.0 and draws.max() < 1.0
    torch.testing.assert_close(draws.mean(dim=0), torch.full((6,), 0.5), atol=0.01, rtol=0)
    correlation = torch.corrcoef(draws.T)
    assert (correlation - torch.eye(6)).abs().max() < 0.03
    neighbours = torch.corrcoef(torch.stack([draws[:-1, 0], draws[1:, 0]]))[0, 1]
    assert neighbours.abs() < 0.03


def test_bad_input_is_refused(images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="uint8"):
        augment_batch(as_float(images), torch.arange(8), 0, 0, AugmentConfig(), training=True)
    with pytest.raises(ValidationError, match="zoom_range"):
        AugmentConfig(zoom_range=(1.4, 1.2))
    with pytest.raises(ValidationError, match="rotation"):
        AugmentConfig(rotation="45")
