"""The trusted runner of hizfo.eval.sandbox: the first code in each sandboxed interpreter (stdlib only, run by path).

``python -I -B sandbox_runner.py`` reads its job from stdin (an 8-byte length, then JSON), drops privileges,
sets the resource limits, and runs the job: a plain program under a supervisor, or a checked program (the
untrusted code serves its entry point; the trusted tests run in the supervisor and call it through a pipe).
Before any untrusted code runs, :func:`contain` restricts the process with Landlock (it may read only the
Python runtime, see ``hizfo.eval.sandbox.runtime_view``) and a seccomp allow-list that the evaluator compiled with
libseccomp. Both are kernel state: nothing the program does in Python can undo them.

This file is also bound into the namespaces-level view (read-only), so it imports nothing from hizfo.
"""
import ast
import ctypes
import json
import marshal
import os
import resource
import signal
import sys

SETUP_FAILED = 3
LIBC = ctypes.CDLL(None, use_errno=True)

# Landlock (linux/landlock.h): syscall numbers are the same on x86_64 and aarch64 (the generic table from 424 on)
LANDLOCK_CREATE_RULESET, LANDLOCK_ADD_RULE, LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
ACCESS_FS_READ_FILE, ACCESS_FS_READ_DIR = 1 << 2, 1 << 3
# every filesystem right each ABI version knows (v1: 13 rights, v2 + REFER, v3 + TRUNCATE, v5 + IOCTL_DEV)
HANDLED_FS = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2     # ABI 6: the sandbox's own domain only
O_PATH = getattr(os, "O_PATH", 0o10000000)


class SetupError(Exception):
    pass


def check(result, what):
    if result != 0:
        raise SetupError("%s: %s" % (what, os.strerror(ctypes.get_errno())))


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def switch_user(uid, whole):
    # root: become the program's own host uid, so that RLIMIT_NPROC binds (never applied to real uid 0); ``whole``:
    # every id, else the real one only (effective uid 0 with no capability: a runtime only root can read)
    os.setgroups([])
    if whole:
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    else:
        os.setresuid(uid, 0, 0)
    if os.getuid() != uid:
        raise SetupError("could not switch to uid %d" % uid)


def drop_privileges(job):
    # root: empty the capability bounding set, switch to the program's own uid, clear every capability set;
    # everyone: no_new_privs, so that no exec could gain privileges back (and Landlock and seccomp can be loaded)
    if os.geteuid() == 0:
        cap = 0
        while LIBC.prctl(24, cap, 0, 0, 0) == 0:          # PR_CAPBSET_DROP, until EINVAL past the last one
            cap += 1
    if job.get("uid") is not None:
        switch_user(int(job["uid"]), bool(job.get("whole_uid")))
    if os.geteuid() == 0:
        check(LIBC.capset(ctypes.byref(CapHeader(0x20080522, 0)), (CapData * 2)()), "capset")
    check(LIBC.prctl(38, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")


class RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi():
    abi = LIBC.syscall(LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), LANDLOCK_CREATE_RULESET_VERSION)
    return abi if abi > 0 else 0


def load_landlock(rules):
    # every filesystem access is refused except reading beneath the rules' paths ([path, "tree" | "list"]):
    # "tree" reads files and directories beneath, "list" only lists the directory (its files stay unreadable)
    abi = landlock_abi()
    if abi < 1:
        raise SetupError("Landlock is not available (%s)" % os.strerror(ctypes.get_errno()))
    handled = HANDLED_FS.get(abi, (1 << 16) - 1)
    attr = RulesetAttr(handled, 0, SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    size = ctypes.sizeof(RulesetAttr) if abi >= 6 else 8
    ruleset = LIBC.syscall(LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        raise SetupError("landlock_create_ruleset: %s" % os.strerror(ctypes.get_errno()))
    try:
        for path, kind in rules:
            try:
                fd = os.open(path, O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                is_dir = os.path.isdir(path)
                if kind == "list":
                    access = ACCESS_FS_READ_DIR
                else:
                    access = ACCESS_FS_READ_FILE | (ACCESS_FS_READ_DIR if is_dir else 0)
                rule = PathBeneathAttr(access, fd)
                check(LIBC.syscall(LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0),
                      "landlock_add_rule %s" % path)
            finally:
                os.close(fd)
        check(LIBC.syscall(LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    finally:
        os.close(ruleset)


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def load_seccomp(bpf):
    # the allow-list was compiled by libseccomp in the evaluator; loading it is one prctl (needs no_new_privs)
    program = ctypes.create_string_buffer(bpf, len(bpf))
    check(LIBC.prctl(22, 2, ctypes.byref(SockFprog(len(bpf) // 8, ctypes.addressof(program))), 0, 0),
          "PR_SET_SECCOMP")                                  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER


def contain(job):
    # the untrusted side, before its code runs: Landlock (what it may read), then seccomp (what it may ask the
    # kernel). Kernel state only: there is no Python-level guard to find and switch off
    own = "/proc/%d/" % os.getpid()                     # its own status and descriptors: not net/, not mounts
    load_landlock(job["landlock"] + [[os.getcwd(), "tree"], [own + "fd", "list"]]
                  + [[own + name, "tree"] for name in ("stat", "statm", "status", "limits")])
    load_seccomp(bytes.fromhex(job["seccomp"]))


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


def set_limits(job):
    limits = job["limits"]
    limit(resource.RLIMIT_CORE, 0)
    cpu = int(job["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))      # SIGXCPU first, SIGKILL a second later
    limit(resource.RLIMIT_AS, int(limits["memory_mb"]) << 20)
    limit(resource.RLIMIT_FSIZE, int(limits["max_output_bytes"]))
    limit(resource.RLIMIT_NOFILE, int(limits["max_open_files"]))
    if os.getuid() != 0 and hasattr(resource, "RLIMIT_NPROC"):
        if job.get("uid") is not None:       # a fresh uid: this is its only task (no /proc scan, ~30 ms)
            resource.setrlimit(resource.RLIMIT_NPROC, (1 + int(limits["max_processes"]),
                                                       resource.getrlimit(resource.RLIMIT_NPROC)[1]))
        else:
            limit(resource.RLIMIT_NPROC, processes_of(os.getuid()) + int(limits["max_processes"]))


def fork_within_limit(job):
    # where a previous program's tasks linger on this uid (under an init that does not reap), count them and fork
    # again; then both sides fix the task limit for good (soft = hard)
    try:
        child = os.fork()
    except BlockingIOError:
        if job.get("uid") is None:
            raise
        hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        wanted = processes_of(os.getuid()) + int(job["limits"]["max_processes"])
        resource.setrlimit(resource.RLIMIT_NPROC, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard),
                                                   hard))
        child = os.fork()
    soft = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    resource.setrlimit(resource.RLIMIT_NPROC, (soft, soft))
    return child


def read_exact(fd, size):
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def send(fd, data):
    data = len(data).to_bytes(8, "big") + data
    while data:
        data = data[os.write(fd, data):]


def receive(fd, most):
    head = read_exact(fd, 8)
    if head is None:
        return None
    size = int.from_bytes(head, "big")
    if size > most:
        raise ValueError("message of %d bytes, over the %d-byte cap" % (size, most))
    return read_exact(fd, size)


def read_to_end(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def stdin_to_devnull():
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)


class SandboxTimeout(BaseException):
    pass


def on_alarm(signum, frame):
    raise SandboxTimeout()


REASON_FD = [2]      # the supervisor's own channel to the evaluator (the job's reason_fd); the program never holds it


def report(error, fd=None):
    try:
        os.write(REASON_FD[0] if fd is None else fd,
                 ("sandbox: %s: %s\n" % (type(error).__name__, error))[:2000].encode("utf-8", "replace"))
    except OSError:
        pass


def close_reason_channel():
    # the untrusted side, right after the fork: it reports on stderr (which it may fill), never on the reason pipe
    if REASON_FD[0] != 2:
        os.close(REASON_FD[0])
        REASON_FD[0] = 2


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


def run_program(job):
    stdin_to_devnull()
    token, code, timeout = job.pop("token"), job.pop("code"), float(job["timeout"])
    child = fork_within_limit(job)
    if child:
        supervise(child)
    close_reason_channel()
    try:
        contain(job)
    except BaseException as error:
        report(error)
        os._exit(SETUP_FAILED)
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
            report(error)
        finally:
            os._exit(1)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os.write(1, ("\n%s\n" % token).encode())
        os._exit(0)


def plain(value, depth=0):
    # the candidate's result as builtin values only (subclasses lose their methods); anything else fails
    if depth > 100:
        raise ValueError("result nested too deeply")
    if value is None or type(value) in (bool, int, float, complex, str, bytes):
        return value
    for kind in (bool, int, float, complex, str, bytes):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, dict):
        return {plain(k, depth + 1): plain(v, depth + 1) for k, v in dict.items(value)}
    for kind in (list, tuple, set, frozenset):
        if isinstance(value, kind):
            items = [plain(item, depth + 1) for item in kind.__iter__(value)]
            return set(items) if kind is frozenset else kind(items)
    raise TypeError("the result is a %s, not plain data" % type(value).__name__)


def serve(job, requests, replies):
    # the untrusted process: define the function, then answer calls with plain data until the pipe closes
    contain(job)
    scope = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(job.pop("code"), "<program>", "exec"), scope)
    function = scope[job["entry"]]
    while True:
        request = receive(requests, 1 << 30)
        if request is None:
            os._exit(0)
        args, kwargs = marshal.loads(request)
        try:
            reply = b"ok " + repr(plain(function(*args, **kwargs))).encode("utf-8", "surrogatepass")
        except BaseException as error:
            reply = ("error %s: %s" % (type(error).__name__, error))[:2000].encode("utf-8", "replace")
        send(replies, reply)


class Floats(ast.NodeTransformer):
    def visit_Name(self, node):
        if node.id in ("inf", "nan"):                       # repr(float("inf")) is not a literal
            return ast.copy_location(ast.Constant(float(node.id)), node)
        return node


class CandidateFailed(Exception):
    pass


def stand_in(requests, replies, most):
    # what the trusted tests call: arguments out with marshal, the result back as a literal, so every value the
    # tests compare is a builtin type whatever the untrusted process sends
    def candidate(*args, **kwargs):
        send(requests, marshal.dumps((args, kwargs)))
        reply = receive(replies, most)
        if reply is None:
            raise CandidateFailed("the program ended before answering")
        kind, _, body = reply.partition(b" ")
        if kind != b"ok":
            raise CandidateFailed(body.decode("utf-8", "replace"))
        try:
            tree = Floats().visit(ast.parse(body.decode("utf-8", "surrogatepass"), mode="eval"))
            return ast.literal_eval(tree)
        except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError, UnicodeError) as error:
            raise CandidateFailed("the result is not plain data: %s" % body[:200]) from error
    return candidate


def run_check(job):
    # the supervisor runs the trusted tests; nothing the untrusted child does can reach its memory or status
    check(LIBC.prctl(4, 0, 0, 0, 0), "PR_SET_DUMPABLE")  # /proc/<this>/mem, fd/, ptrace: closed to our uid
    requests_read, requests_write = os.pipe()
    replies_read, replies_write = os.pipe()
    child = fork_within_limit(job)
    if child == 0:
        stdin_to_devnull()                                # before any untrusted code: the tests are still there
        close_reason_channel()
        os.close(requests_write)
        os.close(replies_read)
        try:
            serve(job, requests_read, replies_write)
        except BaseException as error:
            report(error)
        os._exit(1)
    os.close(requests_read)
    os.close(replies_write)
    tests = json.loads(read_to_end(0))                    # only now: the child never held the tests
    stdin_to_devnull()
    try:
        load_seccomp(bytes.fromhex(job["seccomp"]))       # the supervisor runs the problem's tests: same calls
    except BaseException as error:
        report(error)
        os._exit(SETUP_FAILED)
    signal.signal(signal.SIGALRM, on_alarm)
    scope = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        signal.setitimer(signal.ITIMER_REAL, float(job["timeout"]))
        exec(compile(tests["tests"], "<tests>", "exec"), scope)
        # a reply may be as large as the program's whole output may be (1 MiB by default)
        candidate = stand_in(requests_write, replies_read, int(job["limits"]["max_output_bytes"]))
        scope[job["entry"]] = candidate                   # tests may name it too (HumanEval/33: sort_third)
        scope[tests["check"]](candidate)
        signal.setitimer(signal.ITIMER_REAL, 0)
    except SandboxTimeout:
        os.write(REASON_FD[0], b"sandbox: timed out\n")
        os._exit(124)
    except BaseException as error:
        signal.setitimer(signal.ITIMER_REAL, 0)
        report(error)
        os._exit(1)
    sys.stdout.flush()
    os._exit(0)


def main():
    job = json.loads(receive(0, 1 << 30))
    if job.get("reason_fd") is not None:
        REASON_FD[0] = int(job["reason_fd"])
    try:
        drop_privileges(job)
        set_limits(job)
    except BaseException as error:
        report(error)
        os._exit(SETUP_FAILED)
    if job["mode"] == "check":
        run_check(job)
    run_program(job)


if __name__ == "__main__":
    main()
