"""A folder in use: one `sit train` per run folder, one `sit sample` per sample folder.

The lock is ``fcntl.flock`` on ``FOLDER/.lock``. The kernel drops it when the process that holds it
ends, however it ends (``kill -9`` too), so a lock left by a killed process is simply free for the
next one: nothing has to guess from a pid whether its holder still lives. The file records the
holder (pid, host, start time, job) for the message that refuses a second process, and is removed
when the holder releases it. Under torchrun only rank 0 takes the lock; the other ranks of the same
job write only what rank 0 tells them to.

Locks of processes on other hosts of a network file system hold as far as its ``flock`` does
(Linux NFS clients map it to a POSIX lock on the server).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from sitcli.errors import InputError

LOCK = ".lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: folders are not locked
    fcntl = None


class FolderLock:
    """``with FolderLock(folder, "sit train"):`` holds ``folder`` (created when missing, removed again on
    release if the lock was all it held); a second holder is refused with an ``InputError`` naming the first."""

    def __init__(self, folder: str | Path, job: str):
        self.folder, self.job = Path(folder), job
        self.path = self.folder / LOCK
        self.fd: int | None = None
        self.created = False
        self.previous: dict | None = None  # the record left by a holder that ended without releasing

    def acquire(self) -> "FolderLock":
        if fcntl is None:
            return self
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"{self.folder} is a file, not a folder; pick another --out")
        self.created = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            return self._lock()
        except OSError as err:  # a read-only or full disk, a parent that is a file
            self._remove_folder()
            raise InputError(
                f"cannot lock {self.folder} ({err.strerror or err}); pick a folder you can write to"
            ) from None

    def _lock(self) -> "FolderLock":
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(_read(fd))
                os.close(fd)
                self._remove_folder()
                raise InputError(
                    f"{self.folder} is in use by {holder}; wait for it to finish (or stop it), or pick another folder"
                ) from None
            try:  # a holder that released meanwhile removed the file we opened: lock the new one
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.previous = _read(fd) or None
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "job": self.job,
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        except OSError:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def note(self) -> str | None:
        """A line about the lock taken over from a holder that ended without releasing it (None if none)."""
        if not self.previous:
            return None
        return f"note: {self.folder} was locked by {_describe(self.previous)}, which is no longer running; taken over"

    def release(self) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # before unlocking, so a waiting opener sees the file is gone
        os.close(self.fd)
        self.fd = None
        self._remove_folder()

    def _remove_folder(self) -> None:
        if self.created:
            try:
                self.folder.rmdir()  # only when empty: the lock was all this process put there
            except OSError:
                pass

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    return (
        f"{holder.get('job', 'sit')} (pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')})"
    )


def lock_on_rank0(folder: str | Path, job: str) -> FolderLock | None:
    """Rank 0 locks ``folder`` (the other ranks hold None); when it cannot, every rank raises its message,
    so that no rank waits for one that gave up."""
    from sitcli import distributed  # torch: not needed by a bare FolderLock

    lock, refused = None, None
    if distributed.is_main():
        try:
            lock = FolderLock(folder, job).acquire()
        except InputError as err:
            refused = str(err)
    refused = distributed.all_gather_objects(refused)[0]
    if refused is not None:
        raise InputError(refused)
    if lock is not None and lock.note():
        print(lock.note())
    return lock
