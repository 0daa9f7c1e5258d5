"""Checkpoints: exact resume for every method, atomic writes, safe loading, refusal of another config's checkpoint,
signals answered at a step boundary, and the checks run before a Slurm submission."""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from hizfo.run.checkpoint import Checkpointer
from hizfo.run.checkpoint_files import capture_rng, params_sha256, restore_rng
from hizfo.errors import ConfigError
from hizfo.run.runspec import RunSpec
from tests.conftest import compose

# one torch thread whatever the tests before left (conftest's fixture): runs compared bit for bit here once
# differed at two threads (Hi-ZFO's profile, tests/integration/test_resume.py)
pytestmark = pytest.mark.usefixtures("one_thread")

# 16 examples / batch 4 = 4 steps an epoch; 6 steps cross one epoch boundary
TOTAL_STEPS = 6
SMALL = ["logger=none", "train_dropout=true", "task.options.n_train=16", "task.batch_size=4", "task.options.n_eval=4",
         "task.generation.max_new_tokens=3", f"method.max_steps={TOTAL_STEPS}", "eval_before_training=false"]
# here: FO with dropout (mid-epoch and at the epoch boundary), pure ZO, and the hybrid; every other method
# is checked the same way in tests/integration/test_resume.py
RESUME_CASES = [("full_ft", 2), ("full_ft", 4), ("mezo", 3), ("hizfo", 3)]


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs."""


class KilledAfter(Checkpointer):
    """A checkpointer whose process 'dies' right after step ``stop_at`` was checkpointed."""

    def __init__(self, *args, stop_at: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stop_at = stop_at

    def maybe_save(self, method, state, meters, zo_seeds):
        written = super().maybe_save(method, state, meters, zo_seeds)
        if state.step == self.stop_at:
            raise Killed
        return written


def build(method_name: str, extra: tuple[str, ...] = ()):
    """The pieces run.py builds, from a fresh seed (as a relaunched process would)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from hizfo.core.device import seed_everything
    from hizfo.core.models import load_model
    cfg = compose([f"method={method_name}", *SMALL, *extra])
    seed_everything(cfg.seed)
    method = instantiate(cfg.method, _convert_="all")
    task = instantiate(cfg.task, _convert_="all")
    kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    kwargs.pop("_target_")
    loaded = load_model(**kwargs, seed=cfg.seed, precision=cfg.precision)
    return cfg, method, task, loaded


def train(method_name: str, checkpointer=None, extra: tuple[str, ...] = ()):
    """One run in this process; returns (loop result, sha256 of the final parameters, meters)."""
    from hizfo.run.loop import LoopOptions, train_and_evaluate
    from hizfo.run.meters import Meters
    from hizfo.core.precision import use_precision
    cfg, method, task, loaded = build(method_name, extra)
    meters = Meters()
    with use_precision(cfg.precision):
        options = LoopOptions(torch.device("cpu"), seed=cfg.seed, train_dropout=cfg.train_dropout)
        result = train_and_evaluate(method, cfg.method, loaded, task, options, meters, checkpoint=checkpointer)
    return result, params_sha256(method.eval_model()), meters


@pytest.fixture
def closing():
    """Checkpointers made in a test give their signal handlers back at the end."""
    made: list[Checkpointer] = []
    yield made.append
    for item in made:
        item.close()


_uninterrupted: dict[tuple, tuple] = {}


def uninterrupted(method_name: str, extra: tuple[str, ...] = ()) -> tuple:
    """The reference run of a method (once per session)."""
    if (method_name, extra) not in _uninterrupted:
        _uninterrupted[method_name, extra] = train(method_name, extra=extra)
    return _uninterrupted[method_name, extra]


def check_resume_is_exact(method_name: str, stop_at: int, tmp_path: Path, closing,
                          extra: tuple[str, ...] = ()) -> None:
    """Kill a run right after step ``stop_at`` was checkpointed, relaunch it: same everything as uninterrupted."""
    reference, reference_sha, reference_meters = uninterrupted(method_name, extra)

    killed = KilledAfter(tmp_path / "ckpt", "hash-a", every_steps=1, stop_at=stop_at)
    closing(killed)
    with pytest.raises(Killed):
        train(method_name, killed, extra=extra)
    assert killed.latest().name == f"step-{stop_at:08d}"

    resumed_ckpt = Checkpointer(tmp_path / "ckpt", "hash-a", every_steps=1)
    closing(resumed_ckpt)
    resumed, resumed_sha, resumed_meters = train(method_name, resumed_ckpt, extra=extra)

    assert resumed_ckpt.restored_from is not None and resumed_ckpt.restored_from.name == f"step-{stop_at:08d}"
    assert len(resumed.history) == TOTAL_STEPS - stop_at                # it trained only the steps after the checkpoint
    assert resumed_sha == reference_sha
    assert resumed.metrics == reference.metrics
    assert resumed.predictions == reference.predictions
    assert resumed.losses == reference.losses                   # every step's, the first from the checkpoint
    assert resumed.zo_seeds == reference.zo_seeds
    assert (resumed_meters.n_forward, resumed_meters.n_backward, resumed_meters.steps) == \
        (reference_meters.n_forward, reference_meters.n_backward, reference_meters.steps)


@pytest.mark.slow
@pytest.mark.parametrize("method_name,stop_at", RESUME_CASES)
def test_a_killed_run_resumes_to_the_same_parameters_and_metrics(method_name, stop_at, tmp_path, closing):
    check_resume_is_exact(method_name, stop_at, tmp_path, closing)


@pytest.mark.slow
def test_bilevel_zofo_in_bf16_resumes_exactly_with_its_fp32_masters(tmp_path, closing):
    """The upper Adam's fp32 masters of θ and p_U are in the checkpoint: a resumed bf16 run is the same run."""
    check_resume_is_exact("bilevel_zofo", 3, tmp_path, closing, extra=("precision=bf16", "method.lower_steps=2"))


@pytest.mark.slow
def test_a_checkpoint_from_another_config_is_refused_and_nothing_is_loaded(tmp_path, closing):
    first = Checkpointer(tmp_path / "ckpt", "hash-a", every_steps=2)
    closing(first)
    train("full_ft", first, extra=("method.max_steps=4",))       # leaves step-4 behind (no record discards it)
    assert first.latest() is not None

    other = Checkpointer(tmp_path / "ckpt", "hash-b", every_steps=2)
    closing(other)
    cfg, method, task, loaded = build("full_ft")
    before = params_sha256(loaded.model)
    from hizfo.run.loop import LoopState
    from hizfo.run.meters import Meters
    method.setup(_context(cfg, loaded, task))
    with pytest.raises(ConfigError, match="hash-a.*this run's is hash-b.*will not be resumed"):
        other.restore(method, LoopState(), Meters(), torch.Generator())
    assert params_sha256(loaded.model) == before


def listing(folder: Path) -> list[str]:
    """The checkpoint folder's entries but its lock (``.lock``, ``.lock.owner``: held while the run is alive)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".lock"))


def resign(checkpoint: Path) -> None:
    """Rewrite ``checkpoint``'s manifest to match its files as they are now."""
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    for name in manifest["files"]:
        data = (checkpoint / name).read_bytes()
        manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


# used by tests/unit/run/test_checkpoint_damage.py and tests/integration/test_checkpoint_integrity.py
def damage(checkpoint: Path, how: str) -> Path:
    """Damage ``checkpoint`` the way a disk, a copy or a kill can; the path that is now wrong."""
    params = checkpoint / "params.safetensors"
    data = bytearray(params.read_bytes())
    if how == "flip":                                   # one byte of tensor data: still loads, silently wrong
        data[len(data) // 2] ^= 0x01
        params.write_bytes(bytes(data))
        return params
    if how == "truncate":
        params.write_bytes(bytes(data[: len(data) // 2]))
        return params
    if how == "no_manifest":                            # what a save killed before its last file leaves
        (checkpoint / "manifest.json").unlink()
        return checkpoint
    if how in ("entries_not_objects", "foreign_entry"):  # a manifest that parses but is not one this code wrote
        manifest = json.loads((checkpoint / "manifest.json").read_text())
        if how == "entries_not_objects":
            manifest["files"] = {name: "ok" for name in manifest["files"]}
        else:
            manifest["files"]["../../outside"] = {"bytes": 1, "sha256": "0" * 64}
        (checkpoint / "manifest.json").write_text(json.dumps(manifest))
        return checkpoint / "manifest.json"
    if how in ("garbage_state", "garbage_method"):      # garbage that its manifest vouches for (written so)
        from hizfo.run.checkpoint_files import manifest_files, write_manifest
        name = "state.json" if how == "garbage_state" else "method.pt"
        (checkpoint / name).write_bytes(b"{not json, not a pickle")
        (checkpoint / "manifest.json").unlink()
        write_manifest(checkpoint, manifest_files(checkpoint))
        return checkpoint
    raise ValueError(how)


def _context(cfg, loaded, task):
    from hizfo.core.methods import TrainContext
    return TrainContext(loaded=loaded, task=task, device=torch.device("cpu"), total_steps=10, steps_per_epoch=6,
                        zo_seeds=torch.Generator().manual_seed(1), train_batches=lambda: iter(()),
                        dev_batches=lambda: iter(()))


@pytest.mark.slow
def test_a_save_that_fails_half_way_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch, closing):
    ckpt = KilledAfter(tmp_path / "ckpt", "hash-a", every_steps=2, stop_at=4)
    closing(ckpt)
    with pytest.raises(Killed):
        train("full_ft", ckpt)
    assert ckpt.latest().name == "step-00000004"

    real_save = torch.save

    def dies_on_rng(obj, path, *args, **kwargs):
        if str(path).endswith("rng.pt"):
            raise Killed                                       # the process dies while writing step 6
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dies_on_rng)
    again = Checkpointer(tmp_path / "ckpt", "hash-a", every_steps=2)
    closing(again)
    with pytest.raises(Killed):
        train("full_ft", again)
    monkeypatch.setattr(torch, "save", real_save)
    names = listing(tmp_path / "ckpt")
    assert names == ["step-00000004"], names                   # no step-6, no temp directory
    assert again.latest().name == "step-00000004"


@pytest.mark.slow
def test_method_state_is_loaded_with_weights_only(tmp_path, closing, capsys):
    """A method.pt holding an arbitrary object is refused: checkpoints are never unpickled without limits. The
    refusal is a checkpoint that cannot be read: one warning line, and the run starts afresh (no older one)."""
    ckpt = KilledAfter(tmp_path / "ckpt", "hash-a", every_steps=2, stop_at=2)
    closing(ckpt)
    with pytest.raises(Killed):
        train("full_ft", ckpt)
    torch.save({"payload": _Evil()}, ckpt.latest() / "method.pt")
    resign(ckpt.latest())                       # whoever can write method.pt can write the manifest too
    again = Checkpointer(tmp_path / "ckpt", "hash-a", every_steps=2)
    closing(again)
    capsys.readouterr()
    train("full_ft", again)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: checkpoint:")]
    assert len(warnings) == 1 and "cannot be read (UnpicklingError" in warnings[0], warnings
    assert "starts afresh" in warnings[0] and again.restored_from is None
    assert not _Evil.called


class _Evil:
    called = False

    def __reduce__(self):
        return (_Evil._mark, ())

    @staticmethod
    def _mark():
        _Evil.called = True
        return None


def test_rng_states_round_trip():
    zo = torch.Generator().manual_seed(5)
    tensors, scalars = capture_rng(zo)
    tensors, scalars = json_round_trip(tensors, scalars)
    first = (random.random(), np.random.rand(), torch.rand(1).item(), torch.randint(0, 2**62, (1,), generator=zo).item())
    restore_rng(tensors, scalars, zo)
    second = (random.random(), np.random.rand(), torch.rand(1).item(), torch.randint(0, 2**62, (1,), generator=zo).item())
    assert first == second


def json_round_trip(tensors, scalars):
    import io
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True), json.loads(json.dumps(scalars))


@pytest.mark.slow
def test_a_signal_during_a_step_checkpoints_after_the_step_then_reaches_the_previous_handler(tmp_path, closing):
    """SIGUSR2 (submitit's time-limit warning) mid-step: the step finishes, step k is saved, then the handler
    that was there before (submitit's requeue, here a stand-in) runs once, after the save."""
    seen: list[tuple[int, list[str]]] = []
    folder = tmp_path / "ckpt"

    def submitit_like(signum, frame):
        seen.append((signum, listing(folder)))
        raise Killed                                            # submitit requeues, then exits

    previous = signal.signal(signal.SIGUSR2, submitit_like)
    try:
        ckpt = Checkpointer(folder, "hash-a", every_steps=0)
        closing(ckpt)
        from hizfo.run.loop import LoopOptions, train_and_evaluate
        from hizfo.run.meters import Meters
        cfg, method, task, loaded = build("full_ft")
        real_step = method.train_step
        calls = {"n": 0}

        def step_with_signal(batch):
            calls["n"] += 1
            if calls["n"] == 3:
                os.kill(os.getpid(), signal.SIGUSR2)            # arrives in the middle of step 3
            return real_step(batch)

        method.train_step = step_with_signal
        with pytest.raises(Killed):
            train_and_evaluate(method, cfg.method, loaded, task, LoopOptions(torch.device("cpu"), seed=cfg.seed),
                               Meters(), checkpoint=ckpt)
        assert seen == [(signal.SIGUSR2, ["step-00000003"])]
        info = json.loads((folder / "step-00000003" / "state.json").read_text())
        assert info["reason"] == "SIGUSR2" and info["loop"]["step"] == 3
    finally:
        signal.signal(signal.SIGUSR2, previous)


@pytest.mark.slow
def test_handlers_are_given_back_when_the_run_is_done(tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)}
    ckpt = Checkpointer(tmp_path / "ckpt", "hash-a", every_steps=0)
    train("full_ft", ckpt, extra=("method.max_steps=2",))
    assert signal.getsignal(signal.SIGTERM) not in (before[signal.SIGTERM],)
    ckpt.discard()
    assert {s: signal.getsignal(s) for s in before} == before
    assert not (tmp_path / "ckpt").exists()


def test_checkpoint_folder_mirrors_the_record_path(tmp_path):
    def spec(checkpoint_dir, results_dir=tmp_path / "results" / "runs", variant_overrides=()):
        config = {"model": {"name": "opt-13b"}, "task": {"name": "scitldr"}, "method": {"name": "hizfo"},
                  "seed": 0, "results_dir": str(results_dir), "checkpoint_dir": checkpoint_dir}
        return RunSpec.build(config, variant_overrides)
    run = spec(None)
    assert run.path == tmp_path / "results" / "runs" / "opt-13b" / "scitldr" / "hizfo" / "default" / "seed0.json"
    assert run.checkpoint_folder == \
        tmp_path / "results" / "checkpoints" / "opt-13b" / "scitldr" / "hizfo" / "default" / "seed0"
    assert spec(str(tmp_path / "scratch")).checkpoint_folder == \
        tmp_path / "scratch" / "opt-13b" / "scitldr" / "hizfo" / "default" / "seed0"
    # the folder follows the variant as the record does, at any results_dir depth
    deep = spec(str(tmp_path / "scratch"), tmp_path / "a" / "b" / "c" / "d" / "e" / "f", ["method.rho=0.2"])
    assert deep.checkpoint_folder == tmp_path / "scratch" / "opt-13b" / "scitldr" / "hizfo" / "method.rho=0.2" / "seed0"
    assert deep.predictions_path == deep.path.with_name("seed0.predictions.jsonl")


def test_checkpointer_refuses_bad_intervals(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint_every"):
        Checkpointer(tmp_path, "h", every_steps=-1)
    with pytest.raises(ConfigError, match="checkpoint_minutes"):
        Checkpointer(tmp_path, "h", every_minutes=0)


def test_close_removes_the_lock_files_and_an_empty_folder_and_keeps_checkpoints(tmp_path):
    root = tmp_path / "checkpoints"
    empty = Checkpointer(root / "m" / "t" / "x" / "v" / "seed0", "hash-a", handle_signals=False)
    empty.lock()
    assert (empty.folder / ".lock").exists() and (empty.folder / ".lock.owner").exists()
    empty.close()
    assert root.is_dir() and list(root.iterdir()) == []               # the run's folders go, the root stays
    kept = Checkpointer(root / "m" / "t" / "x" / "v" / "seed1", "hash-a", handle_signals=False)
    kept.lock()
    (kept.folder / "step-00000002").mkdir()                            # stands for a checkpoint of a failed run
    kept.close()
    kept.close()                                                       # idempotent
    assert sorted(p.name for p in kept.folder.iterdir()) == ["step-00000002"]


def test_a_signal_during_a_step_waits_for_the_step_boundary_and_the_first_one_wins():
    from hizfo.run.signals import DeferredSignal, SignalRelay
    deferred = DeferredSignal(SignalRelay())               # a relay of its own: nothing is installed or passed on
    assert deferred.note(signal.SIGUSR2, None)             # nothing running: answer now
    assert deferred.take() == (signal.SIGUSR2, None) and deferred.take() is None
    deferred.in_training = True
    assert not deferred.note(signal.SIGUSR1, None)         # a step is under way: wait for its end
    assert not deferred.note(signal.SIGTERM, None)
    assert deferred.reason == "SIGUSR1"                    # the first signal is the one answered
    deferred.in_training, deferred.saving = False, True
    assert not deferred.note(signal.SIGTERM, None)         # a save is under way: wait for it too
    assert deferred.take() == (signal.SIGUSR1, None) and deferred.reason is None
