"""The SQLite file a store opened: noticed when it is deleted, moved or replaced under a running gate, and
claimed by one gate process at a time."""
from __future__ import annotations

import fcntl
import os

from ._base import StoreError


class StoreFile:
    def __init__(self, path: str):
        self.path = path
        self._identity: tuple[int, int] | None = None   # (device, inode) of the file opened
        self._claimed: int | None = None                # the descriptor holding the gate's lock

    def remember(self) -> None:
        """The file now at the path is the one the store opened."""
        self._identity = _identity_of(self.path)

    def check(self) -> None:
        """StoreError when the file at the path is no longer the one opened (deleted, moved or replaced): the
        open connections would go on writing to a file no restart finds, and a restart would begin empty."""
        if self._identity is not None and _identity_of(self.path) != self._identity:
            raise StoreError(f"SQLite: {self.path} is not the file the gate opened any more (deleted, moved or "
                             "replaced): writes are refused; put the file back, or restart the gate on the right "
                             "one (`plangate serve` will not start on a missing store)")

    def claim(self) -> None:
        """One gate process per file: each keeps its own cache, which another process's writes would not
        invalidate (a closed subject answered allowed for the cache's lifetime). An exclusive lock on a file
        beside the database, holding the pid, until release(); the system drops it when the process ends,
        however it ends."""
        if self.path == ":memory:" or self._claimed is not None:
            return
        lock = f"{os.path.realpath(self.path)}-gate.lock"     # the file's, however its path is spelt
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(f"{self.path} is served by another gate process (pid {holder}, holding {lock}): one "
                             "SQLite file serves one gate process, whose cache no other process's writes reach; "
                             "stop that one first, or give every gate one PostgreSQL database "
                             "(PLANGATE_DATABASE=postgresql://...)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._claimed = fd

    def release(self) -> None:
        if self._claimed is not None:
            os.close(self._claimed)     # the lock goes with its descriptor; the file stays (no race on it)
            self._claimed = None


def _identity_of(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file at path; None for an in-memory database, (-1, -1) when there is none."""
    if path == ":memory:":
        return None
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return (-1, -1)     # no file: never the one opened
    return found.st_dev, found.st_ino
