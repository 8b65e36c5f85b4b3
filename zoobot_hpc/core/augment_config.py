"""The training view's parameters: plain data, importable without torch (the config and the login node use it)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class AugmentConfig(BaseModel):
    """Parameters of the training view; the defaults follow Zoobot's default view.

    ``rotation``: ``'none'``, ``'90'`` (a random multiple of 90 degrees: lossless) or ``'any'``
    (uniform angle). ``zoom_range``: magnification range (>1 zooms in, as torchvision's
    ``RandomAffine(scale=...)``). ``translate``: maximal shift as a fraction of the image size.
    ``greyscale``: average the channels into one.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    output_size: int = Field(224, gt=0)
    rotation: Literal["none", "90", "any"] = "any"
    flip: bool = True
    zoom_range: tuple[float, float] = (1.2, 1.4)
    translate: float = Field(0.1, ge=0.0, le=1.0)
    greyscale: bool = False

    @field_validator("zoom_range")
    @classmethod
    def _check_zoom_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high:
            raise ValueError(f"zoom_range must satisfy 0 < low <= high, got {value}")
        return value
