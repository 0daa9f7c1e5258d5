"""No ok run is lost to a full disk: when the ok record cannot be written, the run says so in one line, keeps the
checkpoint its training ended with, and the relaunch (space freed) resumes at the last step, trains nothing, and
writes the ok record an uninterrupted run writes. The disk is made 'full' for the record file only (ENOSPC from
the record's write), in process, through hizfo.run.session: what a real full disk does to that write."""
from __future__ import annotations

import errno
import json

import pytest

from hizfo.run import records
from hizfo.run.session import RecordNotWritten, RunInputs, compose, run

pytestmark = pytest.mark.slow
SMALL = ["method=full_ft", "method.max_steps=5", "checkpoint_every=2", "logger=none", "num_threads=1",
         "task.options.n_eval=4", "task.generation.max_new_tokens=3", "eval_before_training=false"]


def one_run(results, extra: tuple[str, ...] = ()) -> dict:
    overrides = [*SMALL, f"results_dir={results}", *extra]
    return run(compose(overrides), RunInputs(overrides=tuple(overrides)))


@pytest.mark.parametrize("full_at", ["record", "predictions"])
def test_a_full_disk_at_the_ok_record_keeps_the_trained_run_for_the_relaunch(tmp_path, monkeypatch, capsys, full_at):
    """The disk fills at the ok record's own write, or at the predictions file written just before it."""
    from hizfo.run import session
    reference = one_run(tmp_path / "reference" / "runs")
    write, write_predictions = records.RunRecord.write, session.write_jsonl_atomic

    def full_disk(self, path):
        if self.status == "ok":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return write(self, path)

    def full_disk_predictions(path, rows):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    if full_at == "record":
        monkeypatch.setattr(records.RunRecord, "write", full_disk)
    else:
        monkeypatch.setattr(session, "write_jsonl_atomic", full_disk_predictions)
    results = tmp_path / "full" / "runs"
    with pytest.raises(RecordNotWritten):
        one_run(results)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("failed: ")]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "step-00000005" in lines[0], lines
    assert "without retraining" in lines[0]
    assert not list(results.rglob("seed0.json"))
    (kept,) = (tmp_path / "full" / "checkpoints").rglob("step-*")
    assert kept.name == "step-00000005"                 # the end of training, beyond the every-2 cadence

    monkeypatch.setattr(records.RunRecord, "write", write)
    monkeypatch.setattr(session, "write_jsonl_atomic", write_predictions)
    again = one_run(results)
    out = capsys.readouterr()
    assert "resumed from " in out.out + out.err and "at step 5" in out.out + out.err
    assert again["status"] == "ok"
    assert again["costs"]["n_backward"] == reference["costs"]["n_backward"]    # no step trained twice
    for key in ("final_params_sha256", "metrics", "curve", "config_hash"):
        assert again[key] == reference[key], key
    assert json.loads(next(results.rglob("seed0.json")).read_text())["status"] == "ok"
    assert not list((tmp_path / "full" / "checkpoints").rglob("step-*"))     # discarded once recorded
