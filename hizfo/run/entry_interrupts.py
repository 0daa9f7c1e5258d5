"""Ctrl-C where no run handles it, as ``python run.py`` meets it: during the start-up (the imports of torch,
transformers and Hydra, about 14 s on a small CPU box), and after the run finished (its record is written; W&B's
and Python's clean-up are left). Each ends in one line and exit status 130, instead of a traceback of whatever was
importing or cleaning up (or, at exit, no line at all). Ctrl-C during the run itself: hizfo/run/signals.py."""
from __future__ import annotations

import atexit
import json
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Callable, Optional

INTERRUPT_EXIT = 130          # the shell's status for a process ended by SIGINT (128 + 2)
STARTING = "interrupted (Ctrl-C) while starting up: nothing ran, no record written"
FINISHED = "interrupted (Ctrl-C) after the run had finished: what it wrote is kept; exiting without the rest " \
           "of the clean-up"


def _say_and_exit(line: str) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):                  # a closed or broken stream: the line below still goes out
            pass
    os.write(2, (line + "\n").encode())
    os._exit(INTERRUPT_EXIT)                           # the imports or the clean-up have nothing to finish


def _on_start_up(signum: int, frame: Optional[FrameType]) -> None:
    _say_and_exit(STARTING)


def _after_finish(signum: int, frame: Optional[FrameType]) -> None:
    _say_and_exit(FINISHED)


def _take(handler: Callable[[int, Optional[FrameType]], None]) -> None:
    if signal.getsignal(signal.SIGINT) in (signal.default_int_handler, _on_start_up, _after_finish):
        signal.signal(signal.SIGINT, handler)          # Ctrl-C ignored (nohup, a script's background job): stays


def guard_start_up() -> None:
    """Until ``end_start_up``: a Ctrl-C is one line and exit 130 (not a traceback from inside an import)."""
    _take(_on_start_up)
    atexit.register(_ignore_in_finalization)           # registered first, so it runs after every other hook


def _ignore_in_finalization() -> None:
    """After the last exit hook Python can run no handler, and it puts back the default one (the process ends
    by SIGINT, with no line): a finished run ignores a Ctrl-C there and exits with its own status."""
    if signal.getsignal(signal.SIGINT) is _after_finish:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def end_start_up() -> None:
    """Ctrl-C raises KeyboardInterrupt again (the run's own handling: hizfo/run/cli.py, hizfo/run/signals.py)."""
    _take(signal.default_int_handler)


def guard_after_finish() -> None:
    """The run finished: a Ctrl-C from now on says so in one line and exits 130."""
    _take(_after_finish)


def finished_interrupt(exc: KeyboardInterrupt, record: Optional[str], started: float) -> KeyboardInterrupt:
    """A Ctrl-C that ended a run after it wrote its ok record (W&B's finish was under way): an interrupt that says
    so, instead of "no checkpoint written"; any other interrupt as it was."""
    try:
        path = Path(str(record))
        written = path.stat().st_mtime >= started - 1 and json.loads(path.read_text()).get("status") == "ok"
    except (OSError, ValueError, TypeError, AttributeError):    # no record, or not a record's JSON
        return exc
    if not written:
        return exc
    from hizfo.run.signals import Interrupted
    return Interrupted(f"after the run had finished; its record is written: {record}")
