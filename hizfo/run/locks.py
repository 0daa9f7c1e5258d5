"""One writer per path: an exclusive lock that a run holds for its lifetime (checkpoint folder, results record).

``RunLock`` wraps ``filelock.FileLock`` (``fcntl.flock`` on a lock file; the kernel drops it when the process
dies, so a killed run never leaves a stale lock behind) and adds what a duplicate launch needs to hear: a
``ConfigError`` naming the path and the process that holds it, instead of a crash half way through on files the
other process is writing. The holder's pid and host go in a small file beside the lock (``<lock>.owner``) rather
than in the lock file itself, so reading them never touches the locked file.

Neither file is reached through a symbolic link: filelock opens the lock with ``O_NOFOLLOW`` and so does
``RunLock`` for the owner note, so a link planted in the folder cannot redirect a write to its target. A planted
``.lock`` link ends in one line naming it; a planted ``.lock.owner`` link is removed (the lock holder owns the folder).
"""
from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from types import TracebackType
from typing import Optional

from filelock import FileLock, Timeout

from hizfo.errors import ConfigError


class RunLock:
    """An exclusive, non-blocking lock on ``path`` (created with its folder, honouring the umask).

        with RunLock(folder / ".lock", name=f"checkpoint: {folder}"):
            ...   # only this process writes under folder

    A second ``RunLock`` on the same path, in another process or this one, raises ``ConfigError``:
    ``<name> is in use by another process (pid N on HOST); is the same run already going?``.
    ``release`` is idempotent; the lock also goes when the object is collected or the process ends.
    """

    def __init__(self, path: str | Path, name: Optional[str] = None) -> None:
        self.path = Path(path)
        self.name = name or str(self.path)
        self.owner_path = self.path.with_name(self.path.name + ".owner")
        # thread_local=False: the run may release from another thread than the one that acquired
        self._lock = FileLock(str(self.path), timeout=0, thread_local=False)
        self._held = False

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._held

    def acquire(self) -> "RunLock":
        """Take the lock at once or raise ``ConfigError`` naming who holds it. A no-op when already held."""
        if self._held:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire(timeout=0)
        except Timeout:
            raise ConfigError(f"{self.name} is in use by another process ({self.holder()}); "
                              f"is the same run already going?") from None
        except OSError as exc:          # O_NOFOLLOW on a planted link (ELOOP), a read-only or full disk, ...
            why = ("it is a symbolic link, which is never followed; remove it"
                   if exc.errno == errno.ELOOP or self.path.is_symlink() else exc.strerror or str(exc))
            raise ConfigError(f"{self.name}: cannot take the lock {self.path}: {why}") from None
        self._held = True
        try:
            self._write_owner()
        except OSError:                 # only the message of a contender loses the pid
            pass
        return self

    def _write_owner(self) -> None:
        """``<pid> <host>`` into the owner note, never through a symbolic link (one planted there is removed)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        try:
            fd = os.open(self.owner_path, flags, 0o666)        # the umask applies, as to every output
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            self.owner_path.unlink()                            # the link itself, not its target
            fd = os.open(self.owner_path, flags | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()} {socket.gethostname()}\n")

    def release(self, unlink: bool = False) -> None:
        """Give the lock up (its owner note first, so no contender reads a stale pid while it is free).

        ``unlink``: also remove the lock file, while still holding it, for a folder that is about to be deleted;
        a contender that opened the old file finds it unlinked once it gets the lock and starts over on a new one.
        """
        if not self._held:
            return
        self._held = False
        for path in (self.owner_path, self.path) if unlink else (self.owner_path,):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
        try:
            self._lock.release(force=True)
        except OSError:                 # the file went away under a soft (no-flock) lock: nothing left to free
            pass

    def holder(self) -> str:
        """``pid N on HOST`` of the process that holds the lock, as it wrote it (``pid unknown`` if unreadable)."""
        try:
            fd = os.open(self.owner_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd) as handle:
                pid, host = handle.read(4096).split()[:2]
            return f"pid {int(pid)} on {host}"
        except (OSError, ValueError):
            return "pid unknown"

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:               # interpreter shutdown: the kernel drops the lock anyway
            pass
