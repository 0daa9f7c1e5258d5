"""hizfo.run.locks.RunLock: one holder per path across processes, a clear line for the second, released at exit."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from hizfo.errors import ConfigError
from hizfo.run.locks import RunLock
from tests.conftest import ROOT

# holds the lock until a line arrives on stdin (or forever, to be killed); "raise" makes it fail while holding
HOLDER = """
import sys
from hizfo.run.locks import RunLock
with RunLock(sys.argv[1], name="results: the record") as lock:
    print("held", flush=True)
    if sys.stdin.readline().strip() == "raise":
        raise RuntimeError("the run failed")
"""
TRY = """
import sys
from hizfo.errors import ConfigError
from hizfo.run.locks import RunLock
try:
    RunLock(sys.argv[1]).acquire()
except ConfigError as exc:
    print(exc)
    sys.exit(3)
print("acquired")
"""


def holder(path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held", proc.stderr.read()
    return proc


def try_from_another_process(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", TRY, str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.subprocess
def test_a_second_lock_from_another_process_fails_with_the_holders_pid(tmp_path):
    path = tmp_path / "sub" / "run.lock"
    proc = holder(path)
    try:
        with pytest.raises(ConfigError) as caught:
            RunLock(path, name="results: the record").acquire()
        assert str(caught.value).startswith(f"results: the record is in use by another process (pid {proc.pid} on ")
        assert str(caught.value).endswith("; is the same run already going?")
        other = try_from_another_process(path)
        assert other.returncode == 3 and f"(pid {proc.pid} on " in other.stdout, other.stdout + other.stderr
    finally:
        proc.communicate("\n", timeout=60)
    assert proc.returncode == 0
    assert try_from_another_process(path).stdout.strip() == "acquired"    # released when the holder ended


@pytest.mark.subprocess
@pytest.mark.parametrize("end", ["exception", "sigkill"])
def test_the_lock_is_released_when_the_holder_fails_or_is_killed(tmp_path, end):
    path = tmp_path / "run.lock"
    proc = holder(path)
    assert try_from_another_process(path).returncode == 3
    if end == "exception":
        _, err = proc.communicate("raise\n", timeout=60)
        assert proc.returncode == 1 and "RuntimeError: the run failed" in err
    else:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
    done = try_from_another_process(path)
    assert done.returncode == 0 and done.stdout.strip() == "acquired", done.stdout + done.stderr


@pytest.mark.subprocess
def test_in_process_the_context_manager_releases_on_exception_and_a_second_holder_is_refused(tmp_path):
    path = tmp_path / "run.lock"
    with pytest.raises(RuntimeError):
        with RunLock(path) as lock:
            assert lock.held
            with pytest.raises(ConfigError, match=f"pid {os.getpid()} on "):
                RunLock(path).acquire()                     # the same process, another holder: refused too
            raise RuntimeError("boom")
    assert not lock.held
    assert try_from_another_process(path).stdout.strip() == "acquired"
    again = RunLock(path)
    again.acquire()
    again.acquire()                                         # idempotent
    again.release()
    again.release()
    assert not again.held


@pytest.mark.subprocess
def test_release_with_unlink_removes_the_lock_file_and_its_owner_note(tmp_path):
    path = tmp_path / "folder" / ".lock"
    lock = RunLock(path).acquire()
    assert path.exists() and (tmp_path / "folder" / ".lock.owner").read_text().split()[0] == str(os.getpid())
    lock.release(unlink=True)
    assert sorted(p.name for p in (tmp_path / "folder").iterdir()) == []
    assert try_from_another_process(path).stdout.strip() == "acquired"


def test_a_lock_file_planted_as_a_symbolic_link_is_refused_in_one_line_and_its_target_kept(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / ".lock").symlink_to(target)
    with pytest.raises(ConfigError) as caught:
        RunLock(folder / ".lock", name="checkpoint: X").acquire()
    assert str(caught.value) == (f"checkpoint: X: cannot take the lock {folder / '.lock'}: it is a symbolic link, "
                                 f"which is never followed; remove it")
    assert target.read_text() == "keep me\n" and not (folder / ".lock.owner").exists()
    (folder / ".lock").unlink()
    (folder / ".lock").symlink_to(tmp_path / "nowhere")                 # dangling: not created through either
    with pytest.raises(ConfigError, match="symbolic link"):
        RunLock(folder / ".lock").acquire()
    assert not (tmp_path / "nowhere").exists()


def test_the_owner_note_is_never_written_through_a_symbolic_link(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    owner = folder / ".lock.owner"
    owner.symlink_to(target)
    lock = RunLock(folder / ".lock").acquire()
    assert target.read_text() == "keep me\n"                              # the link was replaced, not followed
    assert not owner.is_symlink() and owner.read_text().split()[0] == str(os.getpid())
    assert lock.holder().startswith(f"pid {os.getpid()} on ")
    lock.release(unlink=True)
    owner.symlink_to(target)                                              # a contender reads no link either
    assert RunLock(folder / ".lock").holder() == "pid unknown"
