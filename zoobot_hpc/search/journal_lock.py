"""The search journal's lock and reader: a lock that only its owner releases, and a torn line named in one line.

Optuna's `JournalFileOpenLock` breaks a lock held longer than its grace period without asking whose it is, and
its release removes whatever lock file is there: a holder that stalls past the grace period (a slow NFS write, a
stopped process) loses the lock, then removes the next holder's, and a third writer enters. Here the lock file
holds its owner's token (host, pid, a random id); it is released only by its owner, and broken only when its
holder is provably gone (a process of this host that no longer exists) or its lease has expired (`lease_s`,
longer than an NFS client's timeout). Standard library and Optuna only.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend

from zoobot_hpc.core.config import ConfigError

LOCK_SUFFIX = ".lock"
DEFAULT_LEASE_S = 300.0  # longer than a hard NFS mount's default timeout and retries (60 s x 3, then it reports)

log = logging.getLogger(__name__)


def _read_owner(path: Path) -> dict[str, Any] | None:
    """The owner recorded in a lock file; {} while it is still being written; None when there is none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        owner = json.loads(text)
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _process_gone(owner: dict[str, Any]) -> bool:
    """True when the owner is a process of this host that no longer exists."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class OwnedJournalLock:
    """An O_EXCL lock file (NFSv3 and later) that records its owner's token; Optuna's journal lock interface
    (`acquire`, `release`)."""

    def __init__(self, journal_path: str | os.PathLike, lease_s: float = DEFAULT_LEASE_S) -> None:
        self.path = Path(str(journal_path) + LOCK_SUFFIX)
        self.lease_s = lease_s
        self._token: str | None = None

    def acquire(self) -> bool:
        delay = 0.001
        while True:
            token = uuid.uuid4().hex
            record = {"token": token, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._break_if_abandoned()
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            try:
                os.write(fd, json.dumps(record).encode())
            finally:
                os.close(fd)
            self._token = token
            return True

    def release(self) -> None:
        token, self._token = self._token, None
        owner = _read_owner(self.path)
        if token is None or owner is None or owner.get("token") != token:
            log.warning("%s was broken while this process held it: leaving the next holder's lock alone", self.path)
            return
        self._remove_if(token)

    def _break_if_abandoned(self) -> None:
        """Remove the lock file when its holder is gone or its lease expired (checked again after the rename)."""
        owner = _read_owner(self.path)
        if owner is None:
            return
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return
        gone = bool(owner) and _process_gone(owner)
        if not gone and age < self.lease_s:
            return
        if self._remove_if(owner.get("token")):
            why = "its holder is gone" if gone else f"its lease expired ({age:.0f} s > {self.lease_s:.0f} s)"
            log.warning("%s broken: %s (holder %s)", self.path, why, {k: owner.get(k) for k in ("host", "pid")})

    def _remove_if(self, token: str | None) -> bool:
        """Remove the lock file if it still holds `token`: rename it aside, check, and put back a lock that
        another process took in between. True when removed."""
        aside = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex}.released")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        taken = _read_owner(aside)
        if taken is not None and taken.get("token") != token:
            try:
                os.link(aside, self.path)
            except OSError as error:
                if error.errno != errno.EEXIST:
                    raise
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True


def torn_line(path: Path) -> int | None:
    """The number of the first line of a journal that is not a whole JSON record (the last one may be torn while
    it is written), or None."""
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    for number, line in enumerate(lines[:-1], start=1):
        try:
            json.loads(line)
        except ValueError:
            return number
    return None


class CheckedJournalBackend(JournalFileBackend):
    """Optuna's journal file backend whose reader names a torn line in one line: the file, the line, the fix."""

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        try:
            yield from super().read_logs(log_number_from)
        except ValueError:  # json.JSONDecodeError, and Optuna's "Invalid log format" (a line without its newline)
            path = Path(self._file_path)
            number = torn_line(path)
            if number is None:
                raise
            raise ConfigError(
                f"{path} line {number} is not a whole record (a torn write): back the file up, then delete that "
                f"line (sed -i '{number}d' {path}); the operation it held is lost"
            ) from None
