"""Batch augmentation on the batch's own device (GPU or CPU), in pure torch.

Training applies Zoobot's default view (rotation, flips, zoom/crop, translation, optional
greyscale) as one affine resampling of the whole batch; evaluation is a deterministic
center-crop + resize. Each sample's random parameters are a pure function of
``(seed, epoch, sample index)``, drawn from a counter-based hash, so a run resumed in the
middle of an epoch reproduces them exactly regardless of workers, ranks or global RNG state.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from zoobot_hpc.core.augment_config import AugmentConfig

__all__ = ["AugmentConfig", "augment_batch", "random_affine", "uniform_draws"]

_MASK32 = 0xFFFFFFFF

# One independent random stream per parameter.
_STREAM_ROTATION, _STREAM_HFLIP, _STREAM_VFLIP, _STREAM_ZOOM, _STREAM_SHIFT_X, _STREAM_SHIFT_Y = range(6)


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """``(x * constant) mod 2**32`` for ``0 <= x < 2**32`` without int64 overflow."""
    low = x * (constant & 0xFFFF)
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (``lowbias32``) on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniform_draws(sample_indices: torch.Tensor, epoch: int, seed: int, streams: int) -> torch.Tensor:
    """Uniform floats in ``[0, 1)``, shape ``(B, streams)``, a pure function of (seed, epoch, index)."""
    index = sample_indices.to(torch.int64)
    # The (seed, epoch) key is a host-side int: building small tensors on a GPU would wait for its queue.
    key = _hash32(torch.tensor(seed & _MASK32))
    key = _hash32(key ^ ((seed >> 32) & _MASK32))
    key = int(_hash32(key ^ (epoch & _MASK32)))
    per_sample = _hash32((index & _MASK32) ^ key)
    per_sample = _hash32(per_sample ^ ((index >> 32) & _MASK32))
    stream = torch.arange(streams, device=index.device, dtype=torch.int64)
    bits = _hash32(per_sample[:, None] ^ _hash32(stream)[None, :])
    return (bits >> 8).to(torch.float32) / float(1 << 24)


def _rotation_cos_sin(u: torch.Tensor, rotation: str) -> tuple[torch.Tensor, torch.Tensor]:
    if rotation == "none":
        return torch.ones_like(u), torch.zeros_like(u)
    if rotation == "90":
        quarter_turns = (u * 4).floor().clamp(max=3)  # exact cos/sin of k * 90 degrees: 1, 0, -1, 0 / 0, 1, 0, -1
        even = torch.remainder(quarter_turns, 2) == 0
        zero = torch.zeros_like(u)
        return torch.where(even, 1 - quarter_turns, zero), torch.where(even, zero, 2 - quarter_turns)
    angle = u * (2 * math.pi)
    return torch.cos(angle), torch.sin(angle)


def random_affine(sample_indices: torch.Tensor, epoch: int, seed: int, config: AugmentConfig) -> torch.Tensor:
    """Per-sample ``(B, 2, 3)`` affine matrices mapping output to input coordinates (``F.affine_grid``)."""
    u = uniform_draws(sample_indices, epoch, seed, streams=6)
    cos, sin = _rotation_cos_sin(u[:, _STREAM_ROTATION], config.rotation)
    ones = torch.ones_like(cos)
    flip_x = torch.where(u[:, _STREAM_HFLIP] < 0.5, -ones, ones) if config.flip else ones
    flip_y = torch.where(u[:, _STREAM_VFLIP] < 0.5, -ones, ones) if config.flip else ones
    low, high = config.zoom_range
    inverse_zoom = 1.0 / (low + (high - low) * u[:, _STREAM_ZOOM])
    max_shift = 2.0 * config.translate  # a fraction of the size is twice that in [-1, 1] coordinates
    shift_x = (2.0 * u[:, _STREAM_SHIFT_X] - 1.0) * max_shift
    shift_y = (2.0 * u[:, _STREAM_SHIFT_Y] - 1.0) * max_shift
    theta = torch.stack(
        [
            torch.stack([cos * flip_x, -sin * flip_y, shift_x], dim=1),
            torch.stack([sin * flip_x, cos * flip_y, shift_y], dim=1),
        ],
        dim=1,
    )
    theta[:, :, :2] *= inverse_zoom[:, None, None]
    return theta


def _to_float_square(images_uint8_bhwc: torch.Tensor, greyscale: bool) -> torch.Tensor:
    """uint8 ``(B, H, W, C)`` -> float32 ``(B, C, L, L)`` in [0, 1], center-cropped to a square."""
    if images_uint8_bhwc.dtype != torch.uint8 or images_uint8_bhwc.ndim != 4:
        raise ValueError(
            "augment_batch expects images as uint8 (B, H, W, C), got "
            f"{images_uint8_bhwc.dtype} {tuple(images_uint8_bhwc.shape)}"
        )
    _, height, width, _ = images_uint8_bhwc.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = images_uint8_bhwc[:, top : top + side, left : left + side, :]
    images = square.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    if greyscale:
        images = images.mean(dim=1, keepdim=True)
    return images


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def augment_batch(
    images_uint8_bhwc: torch.Tensor,
    sample_indices: torch.Tensor,
    epoch: int,
    seed: int,
    config: AugmentConfig,
    training: bool,
) -> torch.Tensor:
    """Turn a uint8 ``(B, H, W, C)`` batch into float32 ``(B, C, S, S)`` in [0, 1] (channels_last).

    Runs on the device the batch is on. ``training=True`` applies the random view of ``config``
    (parameters from ``(seed, epoch, sample_indices)``); ``training=False`` center-crops to a
    square and resizes to ``config.output_size`` (antialiased). ``C`` is 1 with ``greyscale``.
    """
    images = _to_float_square(images_uint8_bhwc, config.greyscale)
    size = config.output_size
    if training:
        # Shrink (antialiased) to the largest size the zoom reads, so that resampling never aliases much.
        source_size = math.ceil(size * config.zoom_range[1])
        if images.shape[-1] > source_size:
            images = _resize(images, source_size)
        # Right-angle rotations and flips at the same size map pixel centers onto pixel centers: sampling
        # the nearest pixel then makes the view an exact permutation of the pixels.
        lossless = (
            config.rotation != "any"
            and config.zoom_range == (1.0, 1.0)
            and config.translate == 0
            and images.shape[-1] == size
        )
        theta = random_affine(sample_indices.to(images.device), epoch, seed, config)
        grid = F.affine_grid(theta, [images.shape[0], images.shape[1], size, size], align_corners=False)
        mode = "nearest" if lossless else "bilinear"
        images = F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)
    else:
        images = _resize(images, size)
    return images.clamp_(0.0, 1.0).contiguous(memory_format=torch.channels_last)
