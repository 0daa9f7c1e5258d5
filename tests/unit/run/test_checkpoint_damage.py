"""Checkpoints on disk: a damaged one is reported and skipped, the manifest goes in last, a kill while an old one is
deleted leaves no half checkpoint, one writer per folder, permissions follow the umask, strays are left alone."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from hizfo.errors import ConfigError
from hizfo.run.checkpoint import Checkpointer
from hizfo.run.checkpoint_files import CHECKPOINT_FILES
from tests.unit.run.test_checkpoint import (TOTAL_STEPS, Killed, KilledAfter, closing, damage, listing, train,  # noqa: F401
                             uninterrupted)                                                      # (closing: a fixture)
from tests.conftest import ROOT


# -- checksums: a damaged checkpoint is reported and never resumed from ------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("how,keep", [("flip", 1), ("truncate", 1), ("no_manifest", 1), ("flip", 2),
                                      ("entries_not_objects", 2), ("foreign_entry", 1), ("garbage_state", 2),
                                      ("garbage_method", 1)])
def test_a_damaged_checkpoint_is_reported_and_skipped_and_the_run_ends_as_an_uninterrupted_one(
        how, keep, tmp_path, closing, capsys):
    """keep=1: the only checkpoint is damaged, so the run starts afresh; keep=2: it resumes from the one before.
    Either way: one warning line naming the damaged file, and the same final parameters, losses and metrics as
    an uninterrupted run."""
    stop_at = 4
    reference, reference_sha, _ = uninterrupted("full_ft")
    killed = KilledAfter(tmp_path / "ckpt", "hash-a", every_steps=1, stop_at=stop_at, keep=keep)
    closing(killed)
    with pytest.raises(Killed):
        train("full_ft", killed)
    assert listing(tmp_path / "ckpt") == [f"step-{s:08d}" for s in range(stop_at - keep + 1, stop_at + 1)]
    bad = damage(tmp_path / "ckpt" / f"step-{stop_at:08d}", how)
    capsys.readouterr()

    again = Checkpointer(tmp_path / "ckpt", "hash-a", every_steps=1, keep=keep)
    closing(again)
    resumed, resumed_sha, _ = train("full_ft", again)

    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning: checkpoint:" in line]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"warning: checkpoint: {bad} "), warnings         # names the damaged file
    assert {"flip": "is corrupt", "truncate": "is truncated", "no_manifest": "has no manifest.json",
            "entries_not_objects": "is malformed", "foreign_entry": "is malformed",
            "garbage_state": "matches its manifest.json but cannot be read (JSONDecodeError",
            "garbage_method": "matches its manifest.json but cannot be read"}[how] in warnings[0]
    if keep == 1:
        assert "starts afresh" in warnings[0]
        assert again.restored_from is None and len(resumed.history) == TOTAL_STEPS
    else:
        assert f"resuming from the previous one, step-{stop_at - 1:08d}" in warnings[0]
        assert again.restored_from.name == f"step-{stop_at - 1:08d}"
        assert len(resumed.history) == TOTAL_STEPS - (stop_at - 1)
    assert resumed_sha == reference_sha
    assert resumed.losses == reference.losses and resumed.metrics == reference.metrics
    assert resumed.predictions == reference.predictions
    # the damaged checkpoint was replaced by the new run's; only the newest `keep` are left
    assert listing(tmp_path / "ckpt") == [f"step-{s:08d}" for s in range(TOTAL_STEPS - keep + 1, TOTAL_STEPS + 1)]


@pytest.mark.slow
def test_the_manifest_holds_each_files_size_and_sha256_and_is_written_last(tmp_path, closing, monkeypatch):
    ckpt = KilledAfter(tmp_path / "ckpt", "hash-a", every_steps=2, stop_at=2)
    closing(ckpt)
    with pytest.raises(Killed):
        train("full_ft", ckpt)
    step = ckpt.latest()
    manifest = json.loads((step / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["method.pt", "params.safetensors", "rng.pt", "state.json"]
    for name, entry in manifest["files"].items():
        data = (step / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    # the manifest goes in last: a save that dies while writing it leaves no step-4, only step-2
    from hizfo.run import checkpoint_files as module
    written: list[str] = []
    real_sha = module.sha256_file

    def recording(path, fsync=False):
        written.append(Path(path).name)
        return real_sha(path, fsync)

    def dies(folder, files):
        written.append("manifest.json")
        raise Killed

    monkeypatch.setattr(module, "sha256_file", recording)
    monkeypatch.setattr(module, "write_manifest", dies)
    again = Checkpointer(tmp_path / "ckpt", "hash-a", every_steps=2)
    closing(again)
    with pytest.raises(Killed):
        train("full_ft", again)
    assert written[-1] == "manifest.json" and set(written[:-1]) >= {"params.safetensors", "method.pt", "rng.pt"}
    assert listing(tmp_path / "ckpt") == ["step-00000002"]


@pytest.mark.slow
def test_a_kill_while_an_old_checkpoint_is_deleted_leaves_no_half_checkpoint_behind(tmp_path, closing, monkeypatch,
                                                                                   capsys):
    """Older checkpoints are renamed out of the step-* names before they are deleted: a kill half way through
    the deletion leaves a temp folder that the next restore clears, and the resume is silent and exact."""
    reference, reference_sha, _ = uninterrupted("full_ft")
    real_rmtree = shutil.rmtree

    def dies_half_way(path, *args, **kwargs):
        if Path(path).name.startswith(".tmp-old-"):
            (Path(path) / "method.pt").unlink()
            raise Killed
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", dies_half_way)
    ckpt = Checkpointer(tmp_path / "ckpt", "hash-a", every_steps=2)
    closing(ckpt)
    with pytest.raises(Killed):
        train("full_ft", ckpt)                          # dies while step-4's save drops step-2
    monkeypatch.undo()
    assert listing(tmp_path / "ckpt")[-1] == "step-00000004"
    assert [n for n in listing(tmp_path / "ckpt") if n.startswith("step-")] == ["step-00000004"]
    capsys.readouterr()

    again = Checkpointer(tmp_path / "ckpt", "hash-a", every_steps=2)
    closing(again)
    resumed, resumed_sha, _ = train("full_ft", again)
    assert "warning" not in capsys.readouterr().err
    assert again.restored_from.name == "step-00000004" and resumed_sha == reference_sha
    assert resumed.losses == reference.losses
    assert listing(tmp_path / "ckpt") == ["step-00000006"]


# -- one writer per folder ---------------------------------------------------------------------------------------

# another run's process holding the folder: the lock a Checkpointer takes (hizfo.run.checkpoint.LOCK_NAME), without
# importing torch, to keep the test short
HOLD = """
import sys
from pathlib import Path
from hizfo.run.locks import RunLock
with RunLock(Path(sys.argv[1]) / ".lock"):
    print("held", flush=True)
    sys.stdin.readline()
"""


@pytest.mark.subprocess
@pytest.mark.slow
def test_a_second_process_on_the_same_checkpoint_folder_is_refused_with_one_clear_line(tmp_path, closing):
    import subprocess
    import sys
    folder = tmp_path / "ckpt"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        second = Checkpointer(folder, "hash-a", every_steps=1)
        closing(second)
        with pytest.raises(ConfigError) as caught:
            train("full_ft", second, extra=("method.max_steps=2",))
        message = str(caught.value)
        assert message.startswith(f"checkpoint: {folder} is in use by another process (pid {holder.pid} on ")
        assert message.endswith("is the same run already going?") and "\n" not in message
        assert not list(folder.glob("step-*"))            # it wrote nothing into the other run's folder
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    # the holder has exited: the folder is free again
    third = Checkpointer(folder, "hash-a", every_steps=1)
    closing(third)
    train("full_ft", third, extra=("method.max_steps=2",))
    assert listing(folder) == ["step-00000002"]


# -- permissions follow the umask --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("umask,dirs,files", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_checkpoint_folders_and_files_honour_the_umask(umask, dirs, files, tmp_path, closing):
    folder = tmp_path / "checkpoints" / "model" / "run"
    old = os.umask(umask)
    try:
        ckpt = Checkpointer(folder, "hash-a", every_steps=2)
        closing(ckpt)
        train("full_ft", ckpt, extra=("method.max_steps=2",))
    finally:
        os.umask(old)
    step = folder / "step-00000002"
    for path in (tmp_path / "checkpoints", tmp_path / "checkpoints" / "model", folder, step):
        assert stat.S_IMODE(path.stat().st_mode) == dirs, path
    names = sorted(p.name for p in step.iterdir())
    assert names == ["manifest.json", "method.pt", "params.safetensors", "rng.pt", "state.json"]
    for path in [*step.iterdir(), folder / ".lock", folder / ".lock.owner"]:
        assert stat.S_IMODE(path.stat().st_mode) == files, path


@pytest.mark.slow
def test_what_is_not_a_step_folder_is_ignored_and_kept(tmp_path, closing, capsys):
    """``step-00000600.bak``, ``step-old``, a file named like a checkpoint and a link to one are not checkpoints:
    the run resumes from its real one, never deletes or follows them, and says nothing about them."""
    reference, reference_sha, _ = uninterrupted("full_ft")
    folder = tmp_path / "ckpt"
    killed = KilledAfter(folder, "hash-a", every_steps=1, stop_at=4)
    closing(killed)
    with pytest.raises(Killed):
        train("full_ft", killed)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(folder / "step-00000004", elsewhere)
    (folder / "step-00000600.bak").mkdir()
    (folder / "step-old").mkdir()
    (folder / "step-00000700").write_text("not a folder")
    (folder / "step-00000900").symlink_to(elsewhere, target_is_directory=True)
    strays = ["step-00000600.bak", "step-00000700", "step-00000900", "step-old"]
    assert [p.name for p in killed.checkpoints()] == ["step-00000004"]
    capsys.readouterr()

    again = Checkpointer(folder, "hash-a", every_steps=1)
    closing(again)
    resumed, resumed_sha, _ = train("full_ft", again)
    assert "warning" not in capsys.readouterr().err
    assert again.restored_from.name == "step-00000004" and resumed_sha == reference_sha
    assert listing(folder) == sorted(strays + [f"step-{TOTAL_STEPS:08d}"])
    assert sorted(p.name for p in elsewhere.iterdir()) == sorted(CHECKPOINT_FILES + ("manifest.json",))
