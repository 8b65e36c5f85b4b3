"""Out of disk space (a full scratch, a quota): the one line a write that ran out of room ends with.

torch reports a full disk while saving as `RuntimeError: [enforce fail at inline_container.cc:…] . unexpected pos`,
h5py and plain writes as `OSError` ENOSPC / EDQUOT: after a failed write we look at the free space instead.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

OUT_OF_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class OutOfSpace(OSError):
    """A write failed because its filesystem (or quota) is full; the previous file of that name is kept."""

    def __str__(self) -> str:
        return str(self.strerror)


def free_bytes(path: str | Path) -> int:
    """Free bytes on the filesystem holding `path` (or its nearest existing parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def out_of_space(error: BaseException, path: str | Path, what: str, needed_bytes: int) -> OutOfSpace | None:
    """The OutOfSpace to raise instead of `error` when writing `what` to `path` failed for want of room (the error
    says so, or fewer than `needed_bytes` are free), else None."""
    said_so = isinstance(error, OSError) and error.errno in OUT_OF_SPACE_ERRNOS
    free = free_bytes(path)
    if not (said_so or free < needed_bytes):
        return None
    return OutOfSpace(
        errno.ENOSPC,
        f"out of disk space writing {what} {path} (about {needed_bytes / 1e6:.1f} MB, {free / 1e6:.1f} MB free there): "
        "the previous one is kept; free some space (or quota), then run the same command to resume",
    )
