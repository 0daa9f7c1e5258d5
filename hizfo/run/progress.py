"""Progress bars that suit both a terminal and a log file.

On a terminal: tqdm as usual. In a log (stderr not a TTY: Slurm's ``.err``, ``nohup``, ``| tee``) tqdm would
rewrite its line with carriage returns at every update, so a log holds one ever-growing line; here it writes one
whole line every ``HIZFO_PROGRESS_EVERY`` updates (default 10), plus the first and the last.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Optional

from tqdm.auto import tqdm

EVERY_ENV = "HIZFO_PROGRESS_EVERY"
DEFAULT_EVERY = 10


def log_every() -> int:
    """``HIZFO_PROGRESS_EVERY`` as a positive integer (a bad value: the default)."""
    try:
        return max(1, int(os.environ.get(EVERY_ENV, DEFAULT_EVERY)))
    except ValueError:
        return DEFAULT_EVERY


class LogLines(tqdm):
    """tqdm that prints a newline-ended line every ``every`` updates instead of redrawing one line."""

    def __init__(self, *args: Any, every: Optional[int] = None, **kwargs: Any) -> None:
        self.every = every or log_every()
        self._last_written = -1
        kwargs.setdefault("mininterval", 0)
        kwargs["dynamic_ncols"] = False
        kwargs.setdefault("ncols", 100)
        super().__init__(*args, **kwargs)

    def display(self, msg: Optional[str] = None, pos: Optional[int] = None) -> bool:
        n = int(self.n)
        due = n == 0 or n - max(self._last_written, 0) >= self.every or (self.total is not None and n >= self.total)
        if self.disable or n == self._last_written or not due:
            return True
        self._last_written = n
        self.fp.write(self.__str__() + "\n")
        self.fp.flush()
        return True

    def close(self) -> None:
        if not self.disable and int(self.n) != self._last_written:
            self._last_written = int(self.n) - self.every      # force the last line
            self.display()
        self.disable = True        # tqdm's own close would redraw with a carriage return
        super().close()


def progress(total: Optional[int] = None, desc: str = "", unit: str = "it", initial: int = 0,
             leave: bool = True, file: Any = None, disable: Optional[bool] = None) -> tqdm:
    """A progress bar: tqdm on a terminal, ``LogLines`` in a log (``disable`` None: ``TQDM_DISABLE`` decides)."""
    stream = file if file is not None else sys.stderr
    interactive = hasattr(stream, "isatty") and stream.isatty()
    cls = tqdm if interactive else LogLines
    extra: dict[str, Any] = {"dynamic_ncols": True} if interactive else {}
    if disable is not None:
        extra["disable"] = disable
    return cls(total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=stream, **extra)
