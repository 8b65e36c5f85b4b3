"""Out of disk space (a full scratch, a quota): the one line a write that ran out of room ends with.

torch reports a full disk while saving as `RuntimeError: [enforce fail at inline_container.cc:…] . unexpected pos`,
h5py and plain writes as `OSError` ENOSPC / EDQUOT: after a failed write we look at the free space instead.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

OUT_OF_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class OutOfSpace(OSError):
    """A write failed because its filesystem (or quota) is full; the previous file of that name is kept."""

    def __str__(self) -> str:
        return str(self.strerror)


def _existing(path: str | Path) -> Path:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: str | Path) -> int:
    """Free bytes on the filesystem holding `path` (or its nearest existing parent)."""
    return shutil.disk_usage(_existing(path)).free


def free_inodes(path: str | Path) -> int | None:
    """Free inodes (files) on the filesystem holding `path`; None where it has no fixed number of them."""
    stats = os.statvfs(_existing(path))
    return int(stats.f_favail) if stats.f_files else None


def human_bytes(count: float) -> str:
    """`1.2 GB`, `340.5 MB`: a size in the unit that reads best."""
    return f"{count / 1e9:.1f} GB" if count >= 1e9 else f"{count / 1e6:.1f} MB"


def space_warning(path: str | Path, needed_bytes: int, needed_inodes: int, what: str) -> str | None:
    """One line when the filesystem holding `path` has less free space or fewer free inodes than `what` needs."""
    free, inodes = free_bytes(path), free_inodes(path)
    short = []
    if free < needed_bytes:
        short.append(f"{human_bytes(free)} free of the about {human_bytes(needed_bytes)}")
    if inodes is not None and inodes < needed_inodes:
        short.append(f"{inodes} free inodes of the about {needed_inodes}")
    if not short:
        return None
    return f"{path}: {' and '.join(short)} that {what} needs; free some space (or quota) first"


def format_free(path: str | Path) -> str:
    """The free space of the filesystem holding `path`, for `status` (`12.3 GB free`)."""
    try:
        return f"{human_bytes(free_bytes(path))} free"
    except OSError:
        return "free space unknown"


_SAID_FULL = ("No space left on device", "Disk quota exceeded", "errno = 28", "errno = 122")


def says_out_of_space(error: BaseException) -> bool:
    """The error is a write's ENOSPC / EDQUOT (by its errno, or in the words h5py passes HDF5's on in)."""
    if isinstance(error, OutOfSpace):
        return True
    if isinstance(error, OSError) and error.errno in OUT_OF_SPACE_ERRNOS:
        return True
    return isinstance(error, OSError | RuntimeError) and any(words in str(error) for words in _SAID_FULL)


def out_of_space(error: BaseException, path: str | Path, what: str, needed_bytes: int) -> OutOfSpace | None:
    """The OutOfSpace to raise instead of `error` when writing `what` to `path` failed for want of room (the error
    says so, or fewer than `needed_bytes` are free), else None."""
    if isinstance(error, OutOfSpace) and needed_bytes <= 0:
        return error
    said_so = says_out_of_space(error)
    free = free_bytes(path)
    if not (said_so or free < needed_bytes):
        return None
    return OutOfSpace(
        errno.ENOSPC,
        f"out of disk space writing {what} {path} (about {needed_bytes / 1e6:.1f} MB, {free / 1e6:.1f} MB free there): "
        "the previous one is kept; free some space (or quota), then run the same command to resume",
    )
