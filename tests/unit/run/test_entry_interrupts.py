"""Ctrl-C where no run handles it (hizfo/run/entry_interrupts.py): during run.py's start-up (torch, transformers
and Hydra importing) and after the run finished. One line each, exit 130, no traceback."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hizfo.run import entry_interrupts
from hizfo.run.entry_interrupts import FINISHED, STARTING, finished_interrupt
from hizfo.run.signals import Interrupted

ROOT = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
# Ctrl-C as a terminal delivers it, also where pytest itself runs with SIGINT ignored (a script's background job,
# as CI may run it): a child inherits an ignored SIGINT, and the code rightly leaves it ignored
DEFAULT_INT = ["env", "--default-signal=INT"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_ctrl_c_while_run_py_imports_is_one_line_and_exit_130(tmp_path):
    proc = subprocess.Popen([*DEFAULT_INT, sys.executable, "run.py", "logger=none", f"results_dir={tmp_path}"],
                            cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.5)                      # past the interpreter's start, well inside the imports (10 s or more)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and out == "", (proc.returncode, out, err[-2000:])
    assert err.strip() == STARTING, err[-2000:]             # one line: no traceback of the import under way


@pytest.mark.subprocess
def test_ctrl_c_in_the_clean_up_after_a_finished_run_says_so_in_one_line(tmp_path):
    script = ("import atexit, os, signal\n"
              "from hizfo.run.entry_interrupts import guard_start_up, end_start_up, guard_after_finish\n"
              "guard_start_up(); end_start_up()\n"
              "print('record: written')\n"
              "guard_after_finish()\n"
              "atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))   # W&B's clean-up, interrupted\n")
    proc = subprocess.run([*DEFAULT_INT, sys.executable, "-c", script], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 130 and proc.stdout == "record: written\n", (proc.returncode, proc.stderr)
    assert proc.stderr.strip() == FINISHED, proc.stderr


def test_after_the_exit_hooks_a_finished_run_ignores_ctrl_c():
    """Past the last exit hook Python runs no handler and puts the default one back (the process would end by
    SIGINT with no line): the finished run's own status stands instead."""
    before = signal.getsignal(signal.SIGINT)
    try:
        entry_interrupts.guard_after_finish()
        entry_interrupts._ignore_in_finalization()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.signal(signal.SIGINT, signal.default_int_handler)
        entry_interrupts._ignore_in_finalization()              # a run that did not finish: Ctrl-C still ends it
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_an_interrupt_after_the_ok_record_says_the_run_had_finished(tmp_path):
    record = tmp_path / "seed0.json"
    record.write_text(json.dumps({"status": "ok"}))
    first = KeyboardInterrupt()
    late = finished_interrupt(first, str(record), started=time.time() - 5)
    assert isinstance(late, Interrupted) and str(late) == f"after the run had finished; its record is written: {record}"
    assert finished_interrupt(first, str(record), started=time.time() + 60) is first    # an older record: skipped
    record.write_text(json.dumps({"status": "failed"}))
    assert finished_interrupt(first, str(record), started=time.time() - 5) is first
    assert finished_interrupt(first, None, started=0.0) is first
    assert finished_interrupt(first, str(tmp_path / "none.json"), started=0.0) is first
