"""Scaling of images that are not 8-bit (FITS cutouts, 16-bit PNG, float TIFF, .npy) to uint8 by a chosen stretch.

Pixels are first mapped linearly from the [low, high] percentiles of the image's finite pixels (all channels
together, so colours keep their ratios) to [0, 1] and clipped; `asinh` then applies
`asinh(x / softening) / asinh(1 / softening)`, which lifts faint outskirts while keeping bright cores apart.
Non-finite pixels (NaN, inf: masked or missing data) do not count towards the percentiles and become 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

STRETCHES = ("asinh", "percentile")


@dataclass(frozen=True)
class ImageScaling:
    """How pixels that are not uint8 become uint8, and which FITS planes make the channels.

    Args:
        stretch: 'asinh' or 'percentile' (linear between the percentiles).
        low_percentile, high_percentile: the pixel values mapped to 0 and 255 (before the asinh).
        asinh_softening: where the asinh turns from linear to logarithmic, as a fraction of the range.
        bands: FITS image planes (over all image HDUs in order, the planes of a 3-D HDU one by one) to use as the
            channels, e.g. (2, 1, 0) for i, r, g as RGB; None: every plane.
    """

    stretch: str = "asinh"
    low_percentile: float = 0.5
    high_percentile: float = 99.5
    asinh_softening: float = 0.1
    bands: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.stretch not in STRETCHES:
            raise ValueError(f"stretch={self.stretch!r} must be one of {STRETCHES}")
        if not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise ValueError(
                f"percentiles ({self.low_percentile}, {self.high_percentile}) must satisfy 0 <= low < high <= 100"
            )
        if self.asinh_softening <= 0:
            raise ValueError(f"asinh_softening={self.asinh_softening} must be positive")
        if self.bands is not None and (not self.bands or min(self.bands) < 0):
            raise ValueError(f"bands={self.bands} must be non-negative plane indices")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as recorded in the manifest."""
        raw = asdict(self)
        raw["bands"] = None if self.bands is None else list(self.bands)
        return raw

    def to_uint8(self, pixels: np.ndarray) -> np.ndarray:
        """`pixels` (any real dtype, any shape) stretched to uint8 of the same shape."""
        values = np.asarray(pixels, dtype=np.float64)
        finite = np.isfinite(values)
        if not finite.any():
            raise ValueError("every pixel is NaN or infinite")
        low, high = np.percentile(values[finite], [self.low_percentile, self.high_percentile])
        if high <= low:
            high = low + 1.0
        scaled = np.clip((np.where(finite, values, low) - low) / (high - low), 0.0, 1.0)
        if self.stretch == "asinh":
            scaled = np.arcsinh(scaled / self.asinh_softening) / np.arcsinh(1.0 / self.asinh_softening)
        return np.round(scaled * 255.0).astype(np.uint8)
