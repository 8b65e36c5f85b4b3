"""Synthetic galaxy dataset (smooth ellipticals, spirals, edge-on disks) with Galaxy-Zoo-like vote counts.

Every galaxy is a pure function of `(seed, index)`, so the dataset is identical however many workers draw it.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from zoobot_hpc.data.build import hash_split
from zoobot_hpc.data.shard_format import (
    DEFAULT_SHARD_SIZE_BYTES,
    FORMAT_VERSION,
    MANIFEST_NAME,
    SPLITS,
    Manifest,
    ShardInfo,
    ShardWriter,
    images_per_shard,
    shard_file_name,
    write_manifest,
)

DEMO_TREE_SCHEMA = {
    "question_answer_pairs": {
        "smooth-or-featured": ["smooth", "featured-or-disk"],
        "disk-edge-on": ["yes", "no"],
        "has-spiral-arms": ["yes", "no"],
    },
    "dependencies": {
        "smooth-or-featured": None,
        "disk-edge-on": "smooth-or-featured_featured-or-disk",
        "has-spiral-arms": "disk-edge-on_no",
    },
}
CLASS_NAMES = ("smooth", "spiral", "edge-on")
VOTE_COLUMNS = tuple(
    f"{question}_{answer}"
    for question, answers in DEMO_TREE_SCHEMA["question_answer_pairs"].items()
    for answer in answers
)
LABEL_COLUMNS = ("label", "axis_ratio", *VOTE_COLUMNS)
DEMO_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
_LABEL_DTYPES = {name: "int64" if name == "label" else "float32" for name in LABEL_COLUMNS}

_CLASS_PROBABILITIES = (0.4, 0.4, 0.2)
# Beta(a, b) of the fraction answering "smooth", "edge-on: yes", "spiral arms: yes", per true class.
_VOTE_BETAS = {
    "smooth": ((8, 2), (2, 6), (2, 6)),
    "spiral": ((2, 8), (1.5, 10), (8, 2)),
    "edge-on": ((2, 6), (8, 2), (3, 5)),
}
_RED, _BLUE, _TAN = np.array([1.0, 0.78, 0.55]), np.array([0.62, 0.78, 1.0]), np.array([0.95, 0.8, 0.65])


@dataclass(frozen=True)
class _Frame:
    """Pixel coordinates rotated into the galaxy's frame (major axis along u)."""

    u: np.ndarray
    v: np.ndarray


def _frame(rng: np.random.Generator, size: int) -> _Frame:
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    centre = size / 2 + rng.uniform(-0.06, 0.06, size=2) * size
    angle = rng.uniform(0, np.pi)
    dx, dy = x - centre[0], y - centre[1]
    return _Frame(u=dx * np.cos(angle) + dy * np.sin(angle), v=-dx * np.sin(angle) + dy * np.cos(angle))


def _sersic(radius: np.ndarray, effective_radius: float, index: float) -> np.ndarray:
    b_n = 2 * index - 1 / 3
    return np.exp(-b_n * ((radius / effective_radius) ** (1 / index) - 1))


def _colour(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    return np.clip(base + rng.normal(0, 0.08, size=3), 0.3, 1.0)


def _smooth(rng: np.random.Generator, frame: _Frame, size: int) -> tuple[np.ndarray, float]:
    axis_ratio = rng.uniform(0.5, 1.0)
    radius = np.hypot(frame.u, frame.v / axis_ratio)
    light = _sersic(radius, rng.uniform(0.1, 0.2) * size, rng.uniform(2.0, 4.0))
    return light[..., None] * _colour(rng, _RED), axis_ratio


def _spiral(rng: np.random.Generator, frame: _Frame, size: int) -> tuple[np.ndarray, float]:
    axis_ratio = rng.uniform(0.45, 1.0)
    scale = rng.uniform(0.1, 0.16) * size
    u, v = frame.u, frame.v / axis_ratio
    radius = np.hypot(u, v) + 1e-6
    pitch = np.deg2rad(rng.uniform(12, 25))
    handedness = rng.choice((-1, 1))
    winding = handedness * np.log(radius / scale) / np.tan(pitch)
    phase = 2 * (np.arctan2(v, u) - winding) + rng.uniform(0, 2 * np.pi)
    arms = (0.5 * (1 + np.cos(phase))) ** 3
    disk = np.exp(-radius / scale) * (0.25 + 2.0 * arms) * 3
    bulge = 1.5 * _sersic(radius, 0.3 * scale, 2.0)
    return disk[..., None] * _colour(rng, _BLUE) + bulge[..., None] * _colour(rng, _RED), axis_ratio


def _edge_on(rng: np.random.Generator, frame: _Frame, size: int) -> tuple[np.ndarray, float]:
    axis_ratio = rng.uniform(0.08, 0.22)
    scale = rng.uniform(0.13, 0.2) * size
    thickness = axis_ratio * scale * 2
    disk = 3 * np.exp(-np.abs(frame.u) / scale) / np.cosh(frame.v / thickness) ** 2
    if rng.random() < 0.5:
        disk *= 1 - 0.6 * np.exp(-((frame.v / (0.3 * thickness)) ** 2))
    bulge = 0.8 * _sersic(np.hypot(frame.u, frame.v / 0.6), 0.25 * scale, 1.5)
    return (disk + bulge)[..., None] * _colour(rng, _TAN), axis_ratio


_RENDER_BLOCK = 64
_RENDERERS = (_smooth, _spiral, _edge_on)


def _stretch_and_noise(rng: np.random.Generator, light: np.ndarray) -> np.ndarray:
    light = light * rng.uniform(0.6, 1.2) / max(light.max(), 1e-6)
    image = np.arcsinh(light / 0.05) / np.arcsinh(1 / 0.05)
    image += 0.04 + rng.normal(0, rng.uniform(0.02, 0.06), size=image.shape)
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def _votes(rng: np.random.Generator, class_name: str) -> dict[str, float]:
    smooth_beta, edge_beta, spiral_beta = _VOTE_BETAS[class_name]
    volunteers = int(rng.integers(35, 46))
    smooth = rng.binomial(volunteers, rng.beta(*smooth_beta))
    featured = volunteers - smooth
    edge_on = rng.binomial(featured, rng.beta(*edge_beta))
    not_edge_on = featured - edge_on
    spiral = rng.binomial(not_edge_on, rng.beta(*spiral_beta))
    counts = (smooth, featured, edge_on, not_edge_on, spiral, not_edge_on - spiral)
    return dict(zip(VOTE_COLUMNS, map(float, counts), strict=True))


def make_galaxy(seed: int, index: int, image_size: int) -> tuple[np.ndarray, dict[str, float]]:
    """One synthetic galaxy: uint8 RGB image (S, S, 3) and its labels, a pure function of (seed, index)."""
    rng = np.random.default_rng([seed, index])
    label = int(rng.choice(len(CLASS_NAMES), p=_CLASS_PROBABILITIES))
    light, axis_ratio = _RENDERERS[label](rng, _frame(rng, image_size), image_size)
    image = _stretch_and_noise(rng, light)
    return image, {"label": label, "axis_ratio": axis_ratio, **_votes(rng, CLASS_NAMES[label])}


def _demo_id(index: int) -> str:
    return f"demo-{index:06d}"


def _write_demo_shard(task: tuple[Path, str, np.ndarray, int, int]) -> ShardInfo:
    """Render and write one shard a block of galaxies at a time (a worker holds a block, not a shard)."""
    path, split, indices, seed, image_size = task
    labels = {name: np.empty(len(indices), dtype=dtype) for name, dtype in _LABEL_DTYPES.items()}
    with ShardWriter(path, (image_size, image_size, 3), split) as writer:
        for start in range(0, len(indices), _RENDER_BLOCK):
            block = indices[start : start + _RENDER_BLOCK]
            galaxies = [make_galaxy(seed, int(index), image_size) for index in block]
            for name in labels:
                labels[name][start : start + len(block)] = [values[name] for _, values in galaxies]
            writer.append(np.stack([image for image, _ in galaxies]), [_demo_id(int(i)) for i in block])
        return writer.finish(labels)


def write_demo_dataset(
    out_dir: str | os.PathLike,
    n_galaxies: int = 1200,
    image_size: int = 64,
    seed: int = 0,
    num_workers: int = 1,
    shard_size_bytes: int = DEFAULT_SHARD_SIZE_BYTES,
) -> Manifest:
    """Write a synthetic galaxy shard dataset (train/val/test by id hash) and return its manifest.

    Labels: `label` (0 smooth, 1 spiral, 2 edge-on), `axis_ratio` in [0, 1], and vote counts for
    DEMO_TREE_SCHEMA (0 where a question was not asked).
    """
    if n_galaxies < 1:
        raise ValueError(f"n_galaxies must be at least 1, got {n_galaxies}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    splits = hash_split([_demo_id(i) for i in range(n_galaxies)], DEMO_SPLIT_FRACTIONS)
    per_shard = images_per_shard((image_size, image_size, 3), shard_size_bytes)
    tasks = []
    for split in dict.fromkeys(splits):
        indices = np.flatnonzero(splits == split)
        for shard_index, start in enumerate(range(0, len(indices), per_shard)):
            chunk = indices[start : start + per_shard]
            tasks.append((out_dir / shard_file_name(split, shard_index), split, chunk, seed, image_size))
    if num_workers > 1:
        with ProcessPoolExecutor(max_workers=num_workers) as pool:
            infos = list(pool.map(_write_demo_shard, tasks))
    else:
        infos = [_write_demo_shard(task) for task in tasks]
    shard_splits: dict[str, list[ShardInfo]] = {}
    for (_, split, *_rest), info in zip(tasks, infos, strict=True):
        shard_splits.setdefault(split, []).append(info)
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        image_shape=(image_size, image_size, 3),
        label_columns=dict(_LABEL_DTYPES),
        allow_nan=(),
        splits={split: tuple(shard_splits[split]) for split in SPLITS if split in shard_splits},
        id_column="id_str",
        source=f"synthetic demo galaxies (seed={seed}, n={n_galaxies}, size={image_size})",
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    write_manifest(out_dir, manifest)
    return manifest
