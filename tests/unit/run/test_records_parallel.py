"""Records written by many jobs at once: every record valid, no partial file ever visible, no temp file left."""
from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

import pytest

from hizfo.run.records import read_record, write_json_atomic

N_WRITERS = 8
ROUNDS = 25
BIG = "x" * 200_000          # a record far larger than one write() call: a torn write would be seen


def _payload(writer: int, round_index: int) -> dict:
    return {"status": "ok", "writer": writer, "round": round_index, "metrics": {"rouge1": writer + 0.5},
            "padding": BIG}


def _write(writer: int, own: str, shared: str, start: float) -> None:
    while time.time() < start:           # start together so the writes overlap
        time.sleep(0.001)
    for round_index in range(ROUNDS):
        write_json_atomic(Path(own), _payload(writer, round_index))
        write_json_atomic(Path(shared), _payload(writer, round_index))


def _read(shared: str, done: "mp.Event", out: "mp.Queue") -> None:
    """Read the shared path as fast as possible until the writers are done; count whole reads, report torn ones."""
    whole, torn, writers_seen = 0, [], set()
    while not done.is_set():
        try:
            text = Path(shared).read_text()
        except FileNotFoundError:
            continue
        try:
            record = json.loads(text)
        except ValueError:
            torn.append(len(text))
            continue
        if record.get("padding") != BIG:
            torn.append(len(text))
            continue
        whole += 1
        writers_seen.add(record["writer"])
    out.put((whole, torn, sorted(writers_seen)))


@pytest.mark.subprocess
@pytest.mark.slow
def test_eight_writers_at_once_leave_eight_valid_records_and_readers_never_see_a_partial_one(tmp_path):
    ctx = mp.get_context("fork")
    shared = tmp_path / "tiny-opt" / "toy" / "full_ft" / "default" / "seed0.json"
    own = [tmp_path / "tiny-opt" / "toy" / f"method{i}" / "default" / "seed0.json" for i in range(N_WRITERS)]
    start = time.time() + 0.5
    results: mp.Queue = ctx.Queue()
    done = ctx.Event()
    readers = [ctx.Process(target=_read, args=(str(shared), done, results)) for _ in range(2)]
    writers = [ctx.Process(target=_write, args=(i, str(own[i]), str(shared), start)) for i in range(N_WRITERS)]
    for proc in readers + writers:
        proc.start()
    for proc in writers:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    done.set()
    reads = [results.get(timeout=60) for _ in readers]
    for proc in readers:
        proc.join(timeout=60)

    for i, path in enumerate(own):
        record = read_record(path)
        assert record is not None and record["writer"] == i and record["round"] == ROUNDS - 1
    final = read_record(shared)
    assert final is not None and final["round"] == ROUNDS - 1
    assert [p.name for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith(".json")] == []
    assert [p.name for p in tmp_path.rglob(".*.tmp")] == []
    for whole, torn, writers_seen in reads:
        assert torn == [], f"a reader saw {len(torn)} partial records (sizes {torn[:5]})"
        assert whole > 0
    assert len(set().union(*(set(seen) for _, _, seen in reads))) > 1   # the readers did see the writers race
