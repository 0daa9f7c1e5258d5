"""The notes a failing rank leaves for rank 0 (hizfo/run/rank_failures.py): only ranks that failed before rank 0 are
the cause, oldest first; a half-written note is skipped; rank 0 removes what it read and clears old notes."""
from __future__ import annotations

import json

from hizfo.run.rank_failures import clear_notes, earlier_failures, first_cause, note_failure


def test_the_notes_of_ranks_that_failed_after_rank_0_are_not_the_cause(tmp_path):
    for rank, message in [(2, "second"), (1, "first")]:
        try:
            raise RuntimeError(message)
        except RuntimeError as exc:
            note_failure(tmp_path, rank, exc)
    (tmp_path / "rank-3.failed").write_text('{"rank": 3, "ti')            # its rank died writing it
    first = min(json.loads((tmp_path / f"rank-{r}.failed").read_text())["time"] for r in (1, 2))
    assert earlier_failures(tmp_path, before=first - 3) == []                 # all later than rank 0's own
    assert {p.name for p in tmp_path.iterdir()} == {"rank-1.failed", "rank-2.failed", "rank-3.failed"}  # kept
    note_failure(tmp_path, 2, RuntimeError("x"))
    (tmp_path / ".rank-4.failed.x1y2.tmp").write_text("{")                  # its rank died writing it
    clear_notes(tmp_path)
    assert not list(tmp_path.iterdir())
    for rank in (2, 1):
        try:
            raise RuntimeError(f"rank {rank}'s")
        except RuntimeError as exc:
            note_failure(tmp_path, rank, exc)
    found = earlier_failures(tmp_path, before=float("inf"))
    assert [f.rank for f in found] == [2, 1] and not list(tmp_path.iterdir())
    assert first_cause("RuntimeError: lost", found) == "rank 2 failed first: RuntimeError: rank 2's; then rank 0: " \
                                                       "RuntimeError: lost"
    assert first_cause("RuntimeError: lost", []) is None


def test_no_note_recreates_a_folder_rank_0_has_removed(tmp_path):
    gone = tmp_path / "checkpoints" / "run"
    try:
        raise RuntimeError("late")
    except RuntimeError as exc:
        note_failure(gone, 1, exc)
    assert not (tmp_path / "checkpoints").exists()
