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

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
SMALL = ["method=full_ft", "method.max_steps=5", "logger=none", "num_threads=1",
         "task.options.n_eval=4", "task.generation.max_new_tokens=3", "eval_before_training=false"]
ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def one_run(results, extra: tuple[str, ...] = ()) -> dict:
    overrides = [*SMALL, f"results_dir={results}", *extra]
    return run(compose(overrides), RunInputs(overrides=tuple(overrides)))


def count_steps(monkeypatch) -> list[int]:
    """Every training step taken from now on, by its step number (a relaunch that retrains takes some)."""
    from hizfo.run.loop import Training
    taken: list[int] = []
    step = Training._step

    def counted(self, batch, bar):
        taken.append(self.state.step + 1)
        return step(self, batch, bar)

    monkeypatch.setattr(Training, "_step", counted)
    return taken


@pytest.mark.parametrize("cadence", ["checkpoint_every=2", "checkpoint_every=0"])
@pytest.mark.parametrize("full_at", ["record", "predictions"])
def test_a_full_disk_at_the_ok_record_keeps_the_trained_run_for_the_relaunch(tmp_path, monkeypatch, capsys, full_at,
                                                                             cadence):
    """The disk fills at the ok record's own write, or at the predictions file written just before it; with a
    checkpoint cadence or none (the default, checkpoint_every=0: the end-of-training checkpoint is written all the
    same, and removed once the record is)."""
    from hizfo.run import session
    reference = one_run(tmp_path / "reference" / "runs", (cadence,))
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
        one_run(results, (cadence,))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("failed: ")]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "step-00000005" in lines[0], lines
    assert "without retraining" in lines[0]
    assert not list(results.rglob("seed0.json"))
    (kept,) = (tmp_path / "full" / "checkpoints").rglob("step-*")
    assert kept.name == "step-00000005"                 # the end of training, beyond the every-2 cadence or none
    assert not list(results.rglob("*.predictions.jsonl"))    # none without its record

    monkeypatch.setattr(records.RunRecord, "write", write)
    monkeypatch.setattr(session, "write_jsonl_atomic", write_predictions)
    taken = count_steps(monkeypatch)
    again = one_run(results, (cadence,))
    out = capsys.readouterr()
    assert "resumed from " in out.out + out.err and "at step 5" in out.out + out.err
    assert again["status"] == "ok"
    assert taken == [] and again["costs"]["segments"] == 2       # the relaunch trained no step
    assert again["costs"]["n_backward"] == reference["costs"]["n_backward"]
    assert len(list(results.rglob("*.predictions.jsonl"))) == 1
    for key in ("final_params_sha256", "metrics", "curve", "config_hash"):
        assert again[key] == reference[key], key
    assert json.loads(next(results.rglob("seed0.json")).read_text())["status"] == "ok"
    assert not list((tmp_path / "full" / "checkpoints").rglob("step-*"))     # discarded once recorded


@pytest.mark.parametrize("checkpoints", ["kept", "refused"])
def test_a_disk_that_refuses_every_record_ends_in_one_line_naming_what_was_kept(tmp_path, monkeypatch, capsys,
                                                                                checkpoints):
    """The end-of-training checkpoint, the ok record, the predictions and the failed record all refused (the
    periodic checkpoints written or refused too): no traceback, one line saying no record was written and which
    checkpoint the relaunch resumes from (or that none was kept), exit status 1."""
    from hizfo.run import checkpoint as checkpoint_module, cli, session
    write_checkpoint = checkpoint_module.write_checkpoint

    def refused(*args, **kwargs):
        raise ENOSPC

    def periodic_only(folder, method, state, meters, zo_seeds, config_hash, reason):
        if reason == "end of training" or checkpoints == "refused":
            raise ENOSPC
        return write_checkpoint(folder, method, state, meters, zo_seeds, config_hash, reason)

    monkeypatch.setattr(records.RunRecord, "write", refused)
    monkeypatch.setattr(session, "write_jsonl_atomic", refused)
    monkeypatch.setattr(checkpoint_module, "write_checkpoint", periodic_only)
    results = tmp_path / "runs"
    assert cli._call(lambda: one_run(results, ("checkpoint_every=2",))) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("failed: ")]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "no record could be written" in lines[0]
    if checkpoints == "kept":
        assert "step-00000004 was kept" in lines[0] and "resume" in lines[0], lines
        assert [p.name for p in (tmp_path / "checkpoints").rglob("step-*")] == ["step-00000004"]
    else:
        assert "no checkpoint was kept" in lines[0], lines
    assert not list(results.rglob("*.json*"))


def test_a_full_disk_nobody_reported_is_one_line_and_anything_else_its_traceback(capsys):
    """cli.py's last word on an unreported failure: ENOSPC anywhere in its chain is one line, no traceback."""
    from hizfo.run.cli import report_unreported
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/full/x.json")
        except OSError:
            raise RuntimeError("while saving")
    except RuntimeError as exc:
        report_unreported(exc)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("failed: the disk is full (OSError: [Errno 28]"), err
    try:
        raise OSError(errno.EACCES, "Permission denied")
    except OSError as exc:
        report_unreported(exc)
    assert "Traceback" in capsys.readouterr().err


def test_the_kept_end_of_training_checkpoint_is_not_the_runs_peak_memory(tmp_path, monkeypatch):
    """A default run (checkpoint_every=0) keeps its end-of-training checkpoint only against a full disk: its writing
    (serialisation buffers) must not enter the run's measured peak, which methods are compared on. Here the save
    also touches 400 MB; the record's peak stays where a run without it is (CPU: VmHWM read before, cleared after)."""
    import torch
    from hizfo.run.checkpoint import Checkpointer
    plain = one_run(tmp_path / "plain", ("seed=1",))
    if plain["costs"]["memory_kind"] != "cpu_peak_rss":
        pytest.skip("the high-water mark cannot be cleared here (no /proc/self/clear_refs): the peak is the process's")
    save = Checkpointer.save

    def heavy_save(self, *args, **kwargs):
        spike = torch.ones(100_000_000)                         # 400 MB, every page written
        try:
            return save(self, *args, **kwargs)
        finally:
            del spike

    monkeypatch.setattr(Checkpointer, "save", heavy_save)
    heavy = one_run(tmp_path / "heavy", ("seed=1",))
    assert heavy["status"] == "ok" and heavy["final_params_sha256"] == plain["final_params_sha256"]
    grown = heavy["costs"]["peak_memory_gb"] - plain["costs"]["peak_memory_gb"]
    assert grown < 0.2, (plain["costs"], heavy["costs"])        # the save's 0.37 GiB is not in it
