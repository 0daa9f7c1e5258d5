"""The first failure of a run on several processes, whichever rank it happened on, in rank 0's failed record.

Only rank 0 writes records. When another rank raises (its own bug, a bad batch, an out-of-memory), rank 0 learns of
it only as a lost peer in its next collective ("Connection closed by peer", an NCCL timeout), and its failed record
would name that symptom, not the cause. So a failing rank other than 0 leaves a note in the run's checkpoint folder
(shared by every rank, as the checkpoints are) before it exits: its rank, the time and the error (or the signal
that stopped it after training). Rank 0, failing after it, puts the notes of ranks that failed before it first in
the record. A rank killed outright (SIGKILL, the
OOM killer, a lost node) leaves no note: the record then names the lost peer, and the launcher's report names the
rank. Rank 0 clears old notes when it takes the run's lock, and removes the notes it has used.
"""
from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hizfo.errors import one_line
from hizfo.run.records import write_json_atomic

_NOTE = "rank-{rank}.failed"
_NOTE_GLOB = "rank-*.failed"


@dataclass(frozen=True)
class RankFailure:
    """One rank's failure: when (seconds since the epoch), what (one line) and where (its traceback)."""
    rank: int
    time: float
    error: str
    traceback: str


def note_failure(folder: Path, rank: int, exc: BaseException) -> None:
    """Rank ``rank``'s exception (being handled), written where rank 0 will look."""
    note_stop(folder, rank, one_line(exc), traceback.format_exc())


def note_stop(folder: Path, rank: int, error: str, trace: str = "") -> None:
    """Why rank ``rank`` stops (best effort: a failing disk adds nothing)."""
    note = {"rank": rank, "time": time.time(), "error": error, "traceback": trace}
    if not folder.is_dir():                          # rank 0 removed it (the run ended): nothing to tell, no debris
        return
    try:
        write_json_atomic(folder / _NOTE.format(rank=rank), note)
    except OSError:
        pass


CLOCK_SLACK_S = 2.0      # nodes' clocks may differ a little: a note up to this much "after" rank 0's failure counts


def earlier_failures(folder: Path, before: float) -> list[RankFailure]:
    """The notes of ranks that failed before ``before`` (within CLOCK_SLACK_S), oldest first; those are removed.
    Never raises: rank 0 is writing its failed record."""
    found = []
    try:
        paths = sorted(folder.glob(_NOTE_GLOB)) if folder.is_dir() else []
    except OSError:
        paths = []
    for path in paths:
        try:
            note = json.loads(path.read_text())
            failure = RankFailure(int(note["rank"]), float(note["time"]), str(note["error"]),
                                  str(note.get("traceback", "")))
            if failure.time <= before + CLOCK_SLACK_S:
                found.append(failure)
                path.unlink(missing_ok=True)
        except (OSError, ValueError, KeyError, TypeError):
            pass                                       # half a note (its rank died writing it): nothing to say
    return sorted(found, key=lambda f: f.time)


def clear_notes(folder: Path) -> None:
    """Forget the notes an earlier attempt of the run left (rank 0, once it holds the run's lock), and the temp
    files of notes whose rank died writing them."""
    for path in [*folder.glob(_NOTE_GLOB), *folder.glob(f".{_NOTE_GLOB}*")] if folder.is_dir() else []:
        path.unlink(missing_ok=True)


def first_cause(own: str, earlier: list[RankFailure]) -> Optional[str]:
    """The record's error when another rank failed first: that rank's error, then rank 0's own; else None."""
    if not earlier:
        return None
    first = earlier[0]
    return f"rank {first.rank} failed first: {first.error}; then rank 0: {own}"
