"""FITS cutouts (`.fits`, `.fit`, `.fits.gz`, `.fits.fz`) read with astropy as float (H, W, C) planes."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fits.fz", ".fz")


def is_fits(path: str | Path) -> bool:
    """Whether `path` names a FITS file (by its suffix)."""
    return str(path).lower().endswith(FITS_SUFFIXES)


def _astropy_fits():
    try:
        from astropy.io import fits
    except ImportError:
        raise ImportError("reading FITS images needs astropy: pip install 'zoobot-hpc[fits]'") from None
    return fits


def read_fits_planes(path: str | Path | BinaryIO, bands: tuple[int, ...] | None = None) -> np.ndarray:
    """The image planes of a FITS file as float32 (H, W, C), rows flipped so that the first row is the top of
    the image as FITS viewers show it (FITS stores the bottom row first).

    Planes are taken over every HDU holding image data, in order (primary, image and tile-compressed HDUs; a
    3-D HDU gives its planes one by one); `bands` picks and orders them (None: all).
    """
    fits = _astropy_fits()
    planes: list[np.ndarray] = []
    with fits.open(path, memmap=False) as hdus:
        for hdu in hdus:
            if not getattr(hdu, "is_image", False) or hdu.data is None:
                continue
            data = np.asarray(hdu.data, dtype=np.float32)
            if data.ndim == 2:
                planes.append(data)
            elif data.ndim == 3:
                planes.extend(data)
            else:
                raise ValueError(f"{path}: HDU {hdu.name!r} has {data.ndim}-D data; expected 2-D or 3-D images")
    if not planes:
        raise ValueError(f"{path}: no image data in any HDU")
    shapes = {plane.shape for plane in planes}
    if len(shapes) > 1:
        raise ValueError(f"{path}: image planes differ in shape {sorted(shapes)}")
    if bands is not None:
        unknown = [band for band in bands if band >= len(planes)]
        if unknown:
            raise ValueError(f"{path}: bands {unknown} not present (it has {len(planes)} image planes)")
        planes = [planes[band] for band in bands]
    return np.stack(planes, axis=-1)[::-1]
