"""One way to write a file that no reader, crash or requeue ever sees half-written.

The data goes to a temporary file next to the target (same directory, so same filesystem), which is fsynced, then
`os.replace`d onto the target's name, and the directory is fsynced so that the rename itself survives a crash of the
node. A reader sees the old file or the new one, never a part. Used for checkpoints, run-directory JSON, shards and
their manifest, inference part files and tables, and the embedding cache. Standard library only.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from zoobot_hpc.core.disk_space import out_of_space, says_out_of_space


def fsync_file(path: Path) -> None:
    """Flush a written file's data to stable storage."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_directory(directory: Path) -> None:
    """Flush a directory's entries (a rename into it) to stable storage; a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is then as durable as they make it
    finally:
        os.close(fd)


def commit(tmp: Path, target: Path) -> None:
    """Make a completely written `tmp` the file `target`: fsync it, rename it, fsync the directory."""
    fsync_file(tmp)
    os.replace(tmp, target)
    fsync_directory(Path(target).parent)


@contextmanager
def atomic_path(target: str | os.PathLike[str], tmp_suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path next to `target` for any writer (h5py, torch.save, pandas); when the block ends without an
    error it becomes `target` (see `commit`), otherwise it is deleted and `target` is left as it was.

    `tmp_suffix` should be unique to the writer where several processes may write the same target at once.
    A write that runs out of room (ENOSPC, EDQUOT) raises `OutOfSpace`: one line naming the file and the space left.
    """
    target = Path(target)
    tmp = target.with_name(target.name + tmp_suffix)
    try:
        yield tmp
        commit(tmp, target)
    except OSError as error:
        if not says_out_of_space(error):
            raise
        written = tmp.stat().st_size if tmp.exists() else 0
        raise (out_of_space(error, target, "the file", written) or error) from None
    finally:
        tmp.unlink(missing_ok=True)


def writer_suffix() -> str:
    """A temporary-file suffix unique to this writer (host, process, thread), for targets several writers (ranks,
    two jobs on one run directory) may write at once."""
    return f".tmp.{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}"


OWNER_ONLY = 0o600  # a file that keeps secrets: the run's config.yaml, the sbatch script


def write_bytes(target: str | os.PathLike[str], data: bytes, mode: int | None = None) -> None:
    """Write `data` to `target` atomically and durably. Safe when several processes write the same small file at
    once (every rank writes the run's W&B id, `zoobot-hpc train` under srun its config): each has its own temp file,
    and the last rename wins whole.

    `mode` (e.g. `OWNER_ONLY`) is the new file's permission bits whatever the umask: the temporary file is created
    with them, so the data is never readable by others, and every rewrite keeps them (the rename brings them along).
    """
    with atomic_path(target, writer_suffix()) as tmp:
        if mode is None:
            tmp.write_bytes(data)
            return
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)


def write_text(target: str | os.PathLike[str], text: str, mode: int | None = None) -> None:
    """Write `text` (UTF-8) to `target` atomically and durably (with permission bits `mode`, see `write_bytes`)."""
    write_bytes(target, text.encode("utf-8"), mode)


def private_directory(path: str | os.PathLike[str]) -> Path:
    """Create `path` (and its parents) if needed and make it owner-only (0700), whatever the umask."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path
