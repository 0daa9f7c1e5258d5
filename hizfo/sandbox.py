"""A sandbox for model-generated code (HumanEval, issue 5): each program in its own fresh, limited process.

Layers, outermost first (docs/tasks.md says what each one does and does not contain):

* **namespaces** (used when the evaluator runs as root and ``unshare``/``setpriv`` work): the program runs in
  new mount, network and PID namespaces, as a fresh unprivileged uid, on a private size-capped tmpfs mounted
  over ``/tmp`` (and bound over the other world-writable directories). It cannot see or signal the evaluator,
  reach the network, or write to any host file; when the namespace's first process ends, every process in it
  is killed by the kernel.
* **process** (everywhere): a fresh ``python -I -B`` in a new session with a clean environment and a fresh
  temporary working directory; resource limits on CPU time, address space, file size, open files and (for a
  non-root user) processes; a wall-clock timeout that kills the whole process group; stdout/stderr go to files
  capped by ``RLIMIT_FSIZE``; a forked supervisor sits between the program and the evaluator, so
  ``os.kill(os.getppid(), 9)`` hits the supervisor, not the evaluator.
* **guard** (inside the program's interpreter, optional): a Python audit hook, installed before the program
  runs, that refuses writes outside the working directory, signals, process creation, sockets, ``ctypes``
  and rlimit changes. It stops accidents, not a determined attacker who tampers with the interpreter.

A program passes only if it exits with status 0 *and* the runner printed a per-run random token after the
program's code returned, so ``sys.exit(0)`` or ``os._exit(0)`` before the tests ran counts as a failure.
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


@dataclass(frozen=True)
class SandboxLimits:
    """What one program may use. ``timeout`` counts from when the program starts, after interpreter start-up."""
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


def require_opt_in(allow_code_execution: bool, task_name: str) -> None:
    """Refuse to go on unless the user opted in to running model-generated code."""
    if not allow_code_execution:
        raise ConfigError(f"task {task_name} scores a model by running the code it generates; this runs only if "
                          f"you opt in: pass task.allow_code_execution=true (the code runs in hizfo.sandbox, "
                          f"see docs/tasks.md for what it contains)")


# The trusted runner: the first code in the sandboxed interpreter. It reads its job from stdin, sets the limits,
# forks a supervisor, installs the guard and runs the program. Kept small and dependency-free (stdlib only).
RUNNER = r'''
import os, resource, signal, sys


def limit(kind, value):
    soft, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(kind, (value, value))


def processes_of(uid):
    running = 0
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if pid.isdigit():
            try:
                with open("/proc/%s/status" % pid) as fh:
                    fields = dict(line.split(":", 1) for line in fh if ":" in line)
            except OSError:
                continue
            if fields.get("Uid", "").split()[:1] == [str(uid)]:
                running += int(fields.get("Threads", "1"))
    return running


def supervise(child):
    # the program's parent, so that killing "its parent" never reaches the evaluator
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:
            os._exit(1)
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


def make_guard(root):
    blocked = frozenset((
        "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.kill", "os.killpg",
        "os.startfile", "subprocess.Popen", "pty.spawn", "socket.connect", "socket.bind", "socket.sendto",
        "socket.sendmsg", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function",
        "resource.setrlimit", "resource.prlimit", "os.setxattr", "os.removexattr", "os.chflags", "os.lchflags",
        "os.chown", "os.lchown", "sys.remote_exec"))
    path_args = {
        "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,), "os.lchmod": (0,),
        "os.rename": (0, 1), "os.link": (0, 1), "os.symlink": (1,), "os.truncate": (0,), "os.utime": (0,),
        "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.copytree": (1,), "shutil.move": (0, 1),
        "os.mkfifo": (0,), "os.mknod": (0,)}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    realpath, fsdecode, sep = os.path.realpath, os.fsdecode, os.sep
    prefix = root + sep
    itself = []

    def guard(event, args):
        if event in blocked:
            raise PermissionError("sandbox: %s is not allowed" % event)
        if event == "object.__setattr__" and args and args[0] is itself[0]:
            raise PermissionError("sandbox: the guard cannot be changed")
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and bool(flags & write_flags))
            paths = (path,) if writing else ()
        else:
            paths = tuple(args[i] for i in path_args.get(event, ()) if i < len(args))
        for path in paths:
            if path is None or isinstance(path, int):
                continue
            real = realpath(fsdecode(path))
            if not (real + sep).startswith(prefix):
                raise PermissionError("sandbox: writing outside the working directory (%s) is not allowed" % real)

    itself.append(guard)
    return guard


class SandboxTimeout(BaseException):
    pass


def on_alarm(signum, frame):
    raise SandboxTimeout()


def main():
    import json
    job = json.loads(sys.stdin.buffer.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    token, code, timeout, guarded = job.pop("token"), job.pop("code"), float(job["timeout"]), job["guard"]
    limits = job["limits"]
    limit(resource.RLIMIT_CORE, 0)
    cpu = int(job["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))      # SIGXCPU first, SIGKILL a second later
    limit(resource.RLIMIT_AS, int(limits["memory_mb"]) << 20)
    limit(resource.RLIMIT_FSIZE, int(limits["max_output_bytes"]))
    limit(resource.RLIMIT_NOFILE, int(limits["max_open_files"]))
    if os.getuid() != 0 and hasattr(resource, "RLIMIT_NPROC"):
        limit(resource.RLIMIT_NPROC, processes_of(os.getuid()) + int(limits["max_processes"]))
    child = os.fork()
    if child:
        supervise(child)
    if guarded:
        sys.addaudithook(make_guard(os.path.realpath(os.getcwd())))
    signal.signal(signal.SIGALRM, on_alarm)
    scope = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        program = compile(code, "<program>", "exec")
        del code
        signal.setitimer(signal.ITIMER_REAL, timeout)
        exec(program, scope)
        signal.setitimer(signal.ITIMER_REAL, 0)
    except SandboxTimeout:
        os.write(2, b"sandbox: timed out\n")
        os._exit(124)
    except BaseException as error:
        signal.setitimer(signal.ITIMER_REAL, 0)
        try:
            os.write(2, ("sandbox: %s: %s\n" % (type(error).__name__, error))[:2000].encode("utf-8", "replace"))
        finally:
            os._exit(1)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os.write(1, ("\n%s\n" % token).encode())
        os._exit(0)


main()
'''

# Run as root inside fresh mount/net/pid namespaces: a private tmpfs over /tmp (bound over the other
# world-writable directories too), then drop to the sandbox uid and start the runner there.
_NAMESPACE_SCRIPT = r'''
set -e
mount -t tmpfs -o "size=${HIZFO_DISK_MB}m,mode=1777,nosuid,nodev" hizfo-sandbox /tmp
for d in /var/tmp /dev/shm /run/lock /var/lock; do
  if [ -d "$d" ] && [ ! -L "$d" ]; then mount --bind /tmp "$d"; fi
done
cd /tmp
exec setpriv --reuid="$HIZFO_UID" --regid="$HIZFO_UID" --clear-groups --no-new-privs $HIZFO_CAPS -- "$@"
'''
_READ_CAPS = "--inh-caps=-all,+dac_read_search --ambient-caps=+dac_read_search --bounding-set=-all,+dac_read_search"
_DROP_CAPS = "--inh-caps=-all --bounding-set=-all"


def _clean_env(home: str) -> dict[str, str]:
    """No inherited variables (tokens, keys, proxies): only what a Python program needs."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8"}


def _interpreter_world_readable() -> bool:
    """Whether an unprivileged uid can reach the interpreter and its library (every parent directory searchable)."""
    for place in {sys.executable, sys.prefix, sys.base_prefix}:
        path = Path(os.path.realpath(place))
        for parent in [path, *path.parents]:
            try:
                if parent.is_dir() and not parent.stat().st_mode & 0o001:
                    return False
            except OSError:
                return False
    return True


@functools.lru_cache(maxsize=1)
def _namespaces_work() -> bool:
    """Root, the tools present, and a trivial program really runs at the namespaces level."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return False
    if not all(shutil.which(tool) for tool in ("unshare", "setpriv", "mount", "sh")):
        return False
    try:
        result = _run_once("pass", SandboxLimits(timeout=10.0), guard=False, level="namespaces")
    except OSError as exc:
        result = ProgramResult(False, f"could not start: {exc}", None, "", "", 0.0)
    if not result.passed:
        warnings.warn(f"hizfo.sandbox: the namespaces level does not work here ({result.status}: "
                      f"{result.stderr.strip()[-300:]}); falling back to the process level", stacklevel=3)
    return result.passed


def isolation_level(requested: str = "auto") -> str:
    """The level a program will run at: ``namespaces`` where it works (root on Linux), else ``process``.

    ``auto`` can be pinned for a whole run with the environment variable ``HIZFO_SANDBOX_ISOLATION``.
    """
    if requested == "auto":
        requested = os.environ.get("HIZFO_SANDBOX_ISOLATION", "auto") or "auto"   # an operator's override
    if requested not in ISOLATION_LEVELS:
        raise ConfigError(f"sandbox isolation: must be one of {ISOLATION_LEVELS}, got {requested!r}")
    if requested == "process":
        return "process"
    if _namespaces_work():
        return "namespaces"
    if requested == "namespaces":
        raise ConfigError("sandbox isolation=namespaces needs root and working `unshare`/`setpriv` "
                          "(util-linux); use isolation=auto or process")
    return "process"


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


def _run_once(code: str, limits: SandboxLimits, *, guard: bool, level: str) -> ProgramResult:
    token = secrets.token_hex(16)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hizfo-sandbox-") as box_name:
        box = Path(box_name)
        os.chmod(box, 0o711)                         # the sandbox uid may pass through, not list or write
        python = os.path.realpath(sys.executable)
        runner = [python, "-I", "-B", "-c", RUNNER]
        if level == "namespaces":
            sandbox_uid = 1_000_000 + secrets.randbelow(1_000_000_000)   # fresh: no files, no other processes
            env = {**_clean_env("/tmp"), "HIZFO_UID": str(sandbox_uid), "HIZFO_DISK_MB": str(limits.disk_mb),
                   "HIZFO_CAPS": _DROP_CAPS if _interpreter_world_readable() else _READ_CAPS}
            command = ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--",
                       "sh", "-c", _NAMESPACE_SCRIPT, "hizfo-sandbox", *runner]
            cwd = str(box)
        else:
            workdir = box / "work"
            workdir.mkdir(mode=0o700)
            env = _clean_env(str(workdir))
            command = runner
            cwd = str(workdir)
        job = {"code": code, "token": token, "guard": guard, "timeout": limits.timeout,
               "cpu_seconds": math.ceil(limits.timeout) + 1, "limits": asdict(limits)}
        with open(box / "stdout", "wb") as out, open(box / "stderr", "wb") as err:
            proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=cwd, env=env,
                                    start_new_session=True, close_fds=True)
            try:
                try:
                    proc.stdin.write(json.dumps(job).encode())
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
    has_token = lines[-1] == token
    if has_token:
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


def run_program(code: str, limits: SandboxLimits = SandboxLimits(), *, guard: bool = True,
                isolation: str = "auto") -> ProgramResult:
    """Run one untrusted Python program in the sandbox and say whether it ran to its end."""
    return _run_once(code, limits, guard=guard, level=isolation_level(isolation))


def run_programs(codes: list[str], limits: SandboxLimits = SandboxLimits(), *, workers: Optional[int] = None,
                 guard: bool = True, isolation: str = "auto") -> list[ProgramResult]:
    """Run many programs, each in its own sandbox, a few at a time (default: one per core, at most 2)."""
    level = isolation_level(isolation)
    if level == "process" and os.geteuid() == 0:
        warnings.warn("hizfo.sandbox: running as root without namespaces; the process-count limit does not "
                      "apply to root, so only the guard and the timeout contain a fork loop", stacklevel=2)
    workers = workers or max(1, min(2, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda code: _run_once(code, limits, guard=guard, level=level), codes))
