"""Shared fixtures: tiny models built from config, composed configs, offline W&B."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# the bf16 tests check numerics, which emulated bf16 computes too: let them run on a CPU without native bf16
os.environ.setdefault("HIZFO_ALLOW_EMULATED_BF16", "1")


def compose(overrides: list[str] | None = None):
    """The composed run config, exactly as run.py sees it (the one composer: hizfo.run.session.compose)."""
    from hizfo.run.session import compose as session_compose
    return session_compose(overrides or [])


def tiny(name: str = "tiny-opt", seed: int = 0):
    """A tiny model from conf/model/<name>.yaml (random init, no download)."""
    from omegaconf import OmegaConf
    from hizfo.core.models import load_model
    cfg = compose([f"model={name}"])
    kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    kwargs.pop("_target_")
    return load_model(**kwargs, seed=seed)


@pytest.fixture
def tiny_opt():
    return tiny("tiny-opt")


@pytest.fixture
def one_thread():
    """Tiny models run several times faster on one torch thread on the shared 2-core machine."""
    import torch
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """The README's default run, once per session (tests/readme_run.py)."""
    from tests.readme_run import run_default
    return run_default(tmp_path_factory.mktemp("default_run"))


def finished_checkpoints(folder: Path) -> list[Path]:
    """The checkpoints under ``folder`` renamed into place (``step-N/`` with its manifest), oldest step first, while
    a run writes there: not the ``.tmp-step-N-*`` folder whose manifest is written just before its rename, and none
    yet when a folder renamed mid-scan makes ``rglob`` raise (Python 3.11 catches only PermissionError there)."""
    try:
        found = [p.parent for p in folder.rglob("manifest.json") if p.parent.name.startswith("step-")]
    except FileNotFoundError:
        return []
    return sorted(found, key=lambda step: int(step.name.split("-")[1]))


def read_until(fd: int, marker: bytes, timeout: float) -> bytes:
    """Bytes from a pipe until ``marker`` shows up (a progress bar ends no line, so no readline)."""
    seen = b""
    deadline = time.monotonic() + timeout
    os.set_blocking(fd, False)
    while marker not in seen:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {marker!r} in {timeout} s: {seen[-2000:]!r}")
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            time.sleep(0.05)
            continue
        if not chunk:
            raise AssertionError(f"process ended before {marker!r}: {seen[-3000:]!r}")
        seen += chunk
    os.set_blocking(fd, True)
    return seen


def pytest_configure(config):
    from tests.cpu_times import CpuTimes
    config.pluginmanager.register(CpuTimes(), "hizfo-cpu-times")
    # a whole fast-tier run (scripts/test.sh with FAST=1) records which modules its tests load (tests/tier_trace.py)
    if os.environ.get("HIZFO_FAST_TRACE"):
        from tests.tier_trace import ModuleTrace
        config.pluginmanager.register(ModuleTrace(Path(os.environ["HIZFO_FAST_TRACE"])), "hizfo-module-trace")


# -- processes a test left running: every process a test starts inherits PYTEST_CURRENT_TEST (grandchildren too), so
# after each test one scan of /proc finds those still alive from earlier tests; the session ends with the list (a
# leaked busy process slows every later test: the SIGINT test took 132 s in a full suite against 15 s alone)
_LEFT: dict[int, tuple[str, float]] = {}


def _spawned_by_tests() -> dict[int, str]:
    found, me = {}, os.getpid()
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as handle:
                env = handle.read()
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                if handle.read().rsplit(b")", 1)[-1].split()[0] == b"Z":      # a zombie holds no CPU
                    continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:                                           # gone meanwhile, or not ours to read
            continue
        if "multiprocessing.resource_tracker" in command:      # multiprocessing's, lives as long as pytest
            continue
        for item in env.split(b"\0"):
            if item.startswith(b"PYTEST_CURRENT_TEST="):
                test = item.split(b"=", 1)[1].decode(errors="replace").rsplit(" ", 1)[0]
                found[int(entry.name)] = f"{test} ({command[:100]})"
                break
    return found


def pytest_runtest_teardown(item, nextitem):
    now = time.monotonic()
    for pid, test in _spawned_by_tests().items():
        if not test.startswith(item.nodeid + " "):
            _LEFT.setdefault(pid, (test, now))


def pytest_terminal_summary(terminalreporter):
    alive = _spawned_by_tests()
    lingering = {pid: what for pid, what in _LEFT.items() if pid in alive}
    gone = {pid: what for pid, what in _LEFT.items() if pid not in alive}
    if not _LEFT:
        return
    terminalreporter.section("processes left running after their test")
    for pid, (test, since) in sorted({**gone, **lingering}.items(), key=lambda kv: kv[1][1]):
        state = "still running" if pid in lingering else "ended later"
        terminalreporter.write_line(f"pid {pid} from {test}: {state} (seen {time.monotonic() - since:.0f} s ago)")
