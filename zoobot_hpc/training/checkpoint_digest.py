"""Each checkpoint's digest, recorded atomically beside it, and the check that a checkpoint still is what was saved.

`CHECKPOINT.digest.json` holds the sha256 and size of the checkpoint file as written, the global step it stores
and the checksum of the dataset manifest it was trained on. torch checks no CRC of its tensor records, so a file
damaged in its middle (bad blocks, a second writer, a tool run by mistake) can load with a weight silently changed;
its digest cannot match. The digest is written after its checkpoint is renamed into place: a crash between the two
leaves a checkpoint whose digest does not match, which a resume passes over for the next valid one.
Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoobot_hpc.core import atomic

DIGEST_SUFFIX = ".digest.json"
_BLOCK_BYTES = 8 << 20

log = logging.getLogger(__name__)


def digest_path(checkpoint: Path) -> Path:
    """Where the digest of `checkpoint` is recorded."""
    return Path(checkpoint).with_name(Path(checkpoint).name + DIGEST_SUFFIX)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in blocks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@dataclass(frozen=True)
class CheckpointDigest:
    """What a checkpoint file was when it was saved."""

    sha256: str
    bytes: int
    global_step: int
    dataset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "bytes": self.bytes, "global_step": self.global_step, "dataset": self.dataset}


def digest_of(path: Path, global_step: int, dataset: str | None) -> CheckpointDigest:
    """The digest of a completely written checkpoint file."""
    return CheckpointDigest(file_sha256(path), Path(path).stat().st_size, int(global_step), dataset)


def write_digest(checkpoint: Path, digest: CheckpointDigest) -> None:
    """Record `digest` beside `checkpoint`, atomically."""
    atomic.write_text(digest_path(checkpoint), json.dumps(digest.to_dict()))


def read_digest(checkpoint: Path) -> CheckpointDigest | None:
    """The digest recorded beside `checkpoint`, or None when there is none or it does not parse."""
    try:
        raw = json.loads(digest_path(checkpoint).read_text())
        return CheckpointDigest(str(raw["sha256"]), int(raw["bytes"]), int(raw["global_step"]), raw.get("dataset"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def copy_digest(source: Path, target: Path) -> None:
    """Make `target`'s digest the one of `source` (after `target` was made a link to, or copy of, `source`)."""
    digest = read_digest(source)
    if digest is None:
        digest_path(target).unlink(missing_ok=True)
    else:
        write_digest(target, digest)


def remove_digest(checkpoint: Path) -> None:
    """Remove the digest of a removed checkpoint."""
    digest_path(checkpoint).unlink(missing_ok=True)


def digest_problem(checkpoint: Path) -> str | None:
    """Why `checkpoint` is not the file its digest describes (no digest, another size, another sha256), or None."""
    digest = read_digest(checkpoint)
    if digest is None:
        return "no digest recorded beside it"
    try:
        size = Path(checkpoint).stat().st_size
        if size != digest.bytes:
            return f"{size} bytes, {digest.bytes} when saved"
        if file_sha256(checkpoint) != digest.sha256:
            return "its sha256 differs from the one recorded when it was saved"
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    return None
