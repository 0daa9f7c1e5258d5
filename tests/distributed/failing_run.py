"""``run.py`` with one rank made to fail: the rank named by HIZFO_TEST_FAIL_RANK raises ValueError before the step
numbered HIZFO_TEST_FAIL_STEP (a bug, a bad batch, an out-of-memory on that rank alone). For the tests only.

    torchrun --nproc_per_node 2 tests/distributed/failing_run.py <run.py's arguments>
"""
from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from hizfo.run import loop

ROOT = Path(__file__).resolve().parents[2]
_step = loop.Training._step


def failing_step(self: loop.Training, batch: object, bar: object) -> None:
    if (os.environ.get("RANK") == os.environ["HIZFO_TEST_FAIL_RANK"]
            and self.state.step == int(os.environ["HIZFO_TEST_FAIL_STEP"])):
        raise ValueError(f"injected failure on rank {os.environ['RANK']} at step {self.state.step}")
    _step(self, batch, bar)


if __name__ == "__main__":
    loop.Training._step = failing_step                     # type: ignore[method-assign]
    sys.argv = [str(ROOT / "run.py"), *sys.argv[1:]]
    runpy.run_path(str(ROOT / "run.py"), run_name="__main__")
