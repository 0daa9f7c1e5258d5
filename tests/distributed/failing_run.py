"""``run.py`` with one rank made to fail: the rank named by HIZFO_TEST_FAIL_RANK raises ValueError before the step
numbered HIZFO_TEST_FAIL_STEP (a bug, a bad batch, an out-of-memory on that rank alone); or, with
HIZFO_TEST_SIGNAL_RANK, that rank sends itself SIGTERM as its evaluation starts (a preemption of one rank after
training); or, with HIZFO_TEST_FULL_DISK_RANK, that rank's disk is full when it writes its part of a checkpoint
(HIZFO_TEST_FULL_DISK_AT: ``shard``, in DCP's own write of its shard, or ``rng``, its RNG states after it); or,
with HIZFO_TEST_SLOW_RANK, that rank takes 3 s longer over its config checks. With HIZFO_TEST_COUNT_AT_EXIT, every
rank says as it exits how many FSDP2 modules are still alive (a run's end must leave none to the interpreter's
teardown: hizfo/core/distributed.py, ``end_run``). For the tests only.

    torchrun --nproc_per_node 2 tests/distributed/failing_run.py <run.py's arguments>
"""
from __future__ import annotations

import atexit
import errno
import gc
import os
import runpy
import signal
import sys
import time
from pathlib import Path

from torch.distributed.checkpoint import FileSystemWriter

from hizfo.run import checkpoint, loop, session

ROOT = Path(__file__).resolve().parents[2]
_step = loop.Training._step
_evaluate = loop.evaluate
_write_shards = checkpoint.write_shards
_check_world = session.check_world


def _is_rank(variable: str) -> bool:
    """This process is the rank the test's ``variable`` names (set by torchrun, or from Slurm's by the run)."""
    return variable in os.environ and os.environ.get("RANK") == os.environ[variable]


def failing_step(self: loop.Training, batch: object, bar: object) -> None:
    if (_is_rank("HIZFO_TEST_FAIL_RANK")
            and self.state.step == int(os.environ["HIZFO_TEST_FAIL_STEP"])):
        raise ValueError(f"injected failure on rank {os.environ['RANK']} at step {self.state.step}")
    _step(self, batch, bar)


def signalled_evaluate(*args: object, **kwargs: object) -> object:
    if _is_rank("HIZFO_TEST_SIGNAL_RANK"):
        os.kill(os.getpid(), signal.SIGTERM)
    return _evaluate(*args, **kwargs)


_write_data = FileSystemWriter.write_data


def full_disk() -> bool:
    return _is_rank("HIZFO_TEST_FULL_DISK_RANK")


def full_disk_shards(*args: object, **kwargs: object) -> None:
    _write_shards(*args, **kwargs)
    if full_disk() and os.environ.get("HIZFO_TEST_FULL_DISK_AT") == "rng":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def full_disk_write_data(*args: object, **kwargs: object) -> object:
    if full_disk() and os.environ.get("HIZFO_TEST_FULL_DISK_AT") == "shard":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return _write_data(*args, **kwargs)


def slow_check_world(*args: object, **kwargs: object) -> str:
    if _is_rank("HIZFO_TEST_SLOW_RANK"):
        time.sleep(3)
    return _check_world(*args, **kwargs)


def say_fsdp_modules_alive() -> None:
    from torch.distributed.fsdp import FSDPModule
    alive = sum(1 for o in gc.get_objects() if isinstance(o, FSDPModule))    # what is alive now, no collection
    print(f"rank {os.environ.get('RANK')}: FSDP2 modules alive at exit: {alive}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    if os.environ.get("HIZFO_TEST_COUNT_AT_EXIT"):
        atexit.register(say_fsdp_modules_alive)
    session.check_world = slow_check_world                 # type: ignore[assignment]
    loop.Training._step = failing_step                     # type: ignore[method-assign]
    loop.evaluate = signalled_evaluate                     # type: ignore[assignment]
    checkpoint.write_shards = full_disk_shards             # type: ignore[assignment]
    FileSystemWriter.write_data = full_disk_write_data     # type: ignore[method-assign]
    sys.argv = [str(ROOT / "run.py"), *sys.argv[1:]]
    runpy.run_path(str(ROOT / "run.py"), run_name="__main__")
