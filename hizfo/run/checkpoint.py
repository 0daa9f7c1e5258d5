"""Checkpoints for exact resume: what a run's state is on disk, how it is written whole and checked on the way back.

A checkpoint is one directory ``step-<N>/`` under the run's checkpoint folder, written to a temp directory and
renamed into place, so a reader sees a whole checkpoint or none:

    params.safetensors   every unique parameter tensor of the model (ZO methods change tensors without
                         requires_grad, so all of them are saved, not only the trainable ones)
    method.pt            ``method.state_dict()`` (optimizer / scheduler / method state); read back with
                         ``torch.load(weights_only=True)``, never an unrestricted unpickle
    rng.pt               torch CPU and CUDA RNG states, the ZO seed generator, numpy's key (tensors only)
    state.json           format, config hash, loop position (epoch, batch, step, losses, ZO seeds used),
                         meters, python's and numpy's RNG scalars, why it was written
    manifest.json        size and sha256 of each file above; written last (temp file, fsync, rename), so a
                         checkpoint without a valid manifest is incomplete. A restore checks every file against
                         it, reports a corrupt or truncated one by path and falls back to the previous intact
                         checkpoint, or starts the run afresh: never a silent resume from damaged files.

One process writes a run's folder: the run holds ``<folder>/.lock`` (``hizfo.run.locks.RunLock``) for its lifetime, so a
duplicate launch of the same run stops with one line instead of racing on the same files. Folders and files are
created with the process's umask (0755 / 0644 under umask 022), like any other output of the run.

Preemption signals reach the checkpointer through ``hizfo.run.signals.RELAY``; Slurm's pre-submission checks live in
``hizfo.run.slurm_preflight``. See docs/slurm.md.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from hizfo.errors import ConfigError
from hizfo.run.locks import RunLock
from hizfo.run.signals import RELAY, Pending, signal_name

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
CHECKPOINT_FILES = ("params.safetensors", "method.pt", "rng.pt", "state.json")
LOCK_NAME = ".lock"
_STEP_PREFIX = "step-"
_STEP_NAME = re.compile(r"step-(\d+)")      # a checkpoint folder's whole name; anything else in the folder is ignored
_TMP_PREFIX = ".tmp-"
_HASH_CHUNK = 8 << 20


# ---------------------------------------------------------------------------------------------------
# parameters


def unique_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter tensor once (tied weights under their first name), detached."""
    return {name: p.detach() for name, p in model.named_parameters(remove_duplicate=True)}


def params_sha256(model: nn.Module) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of every unique parameter (equal iff bit-identical)."""
    digest = hashlib.sha256()
    for name, tensor in unique_parameters(model).items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        flat = tensor.reshape(-1).contiguous().cpu()
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _save_parameters(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file
    save_file({name: t.contiguous() for name, t in unique_parameters(model).items()}, str(path))
    os.chmod(path, 0o666 & ~_umask())       # safetensors (0.8) writes a temp file 0600 and renames it


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask can only set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@torch.no_grad()
def _load_parameters(model: nn.Module, path: Path) -> None:
    """Copy saved tensors into the model in place (each onto its own device: works for sharded models)."""
    from safetensors import safe_open
    live = unique_parameters(model)
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        saved = set(handle.keys())
        if saved != set(live):
            missing, extra = sorted(set(live) - saved), sorted(saved - set(live))
            raise ConfigError(f"checkpoint: {path} holds other tensors than this model "
                              f"(missing {missing[:3]}, unexpected {extra[:3]})")
        for name, tensor in live.items():
            value = handle.get_tensor(name)
            if value.shape != tensor.shape or value.dtype != tensor.dtype:
                raise ConfigError(f"checkpoint: {name} is {tuple(value.shape)} {value.dtype} in {path}, "
                                  f"{tuple(tensor.shape)} {tensor.dtype} in this model")
            tensor.copy_(value)


# ---------------------------------------------------------------------------------------------------
# RNG states


def capture_rng(zo_seeds: Optional[torch.Generator]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every RNG the run draws from: (tensors for rng.pt, JSON scalars for state.json)."""
    np_state = np.random.get_state()
    tensors: dict[str, Any] = {"torch_cpu": torch.get_rng_state(),
                               "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = torch.cuda.get_rng_state_all()
    if zo_seeds is not None:
        tensors["zo_seeds"] = zo_seeds.get_state()
    version, internal, gauss = random.getstate()
    scalars = {"python": [version, list(internal), gauss],
               "numpy": {"kind": np_state[0], "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                         "cached_gaussian": float(np_state[4])}}
    return tensors, scalars


def restore_rng(tensors: dict[str, Any], scalars: dict[str, Any], zo_seeds: Optional[torch.Generator]) -> None:
    """Put back what ``capture_rng`` returned."""
    torch.set_rng_state(tensors["torch_cpu"])
    if "cuda" in tensors and torch.cuda.is_available():
        states = tensors["cuda"]
        if len(states) != torch.cuda.device_count():
            raise ConfigError(f"checkpoint: saved with {len(states)} CUDA devices, this job has "
                              f"{torch.cuda.device_count()}; an exact resume needs the same count")
        torch.cuda.set_rng_state_all(states)
    if zo_seeds is not None:
        if "zo_seeds" not in tensors:
            raise ConfigError("checkpoint: it has no ZO seed generator state")
        zo_seeds.set_state(tensors["zo_seeds"])
    numpy = scalars["numpy"]
    np.random.set_state((numpy["kind"], tensors["numpy_keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    version, internal, gauss = scalars["python"]
    random.setstate((version, tuple(internal), gauss))


# ---------------------------------------------------------------------------------------------------
# writing whole files, and checking them on the way back


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256_file(path: Path, fsync: bool = False) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of a file; ``fsync``: also flush it to disk (one pass over a fresh file)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        if fsync:
            os.fsync(handle.fileno())
    return digest.hexdigest(), size


def _write_manifest(folder: Path, files: dict[str, dict[str, Any]]) -> None:
    """``manifest.json`` written atomically: a temp file (mode from the umask), fsync, rename."""
    tmp = folder / f"{_TMP_PREFIX}{MANIFEST}"
    with open(tmp, "w") as handle:
        json.dump({"format": MANIFEST_FORMAT, "files": files}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, folder / MANIFEST)


def verify_checkpoint(path: Path) -> Optional[str]:
    """None if every file of checkpoint ``path`` matches its manifest; else what is wrong, naming the file."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {manifest.get('format')}")
    except FileNotFoundError:
        return f"{path} has no {MANIFEST}: it is incomplete (or was written before checkpoints carried checksums)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{path / MANIFEST} is unreadable ({type(exc).__name__}: {exc}): the checkpoint is incomplete"
    missing = [name for name in CHECKPOINT_FILES if name not in files]
    if missing:
        return f"{path / MANIFEST} lists no {', '.join(missing)}: the checkpoint is incomplete"
    for name, expected in files.items():     # every entry {"bytes": int, "sha256": str}, of a file it should have
        if (name not in CHECKPOINT_FILES or not isinstance(expected, dict)
                or not isinstance(expected.get("bytes"), int) or not isinstance(expected.get("sha256"), str)):
            return (f"{path / MANIFEST} is malformed (its entry {name!r} is not one of "
                    f"{', '.join(CHECKPOINT_FILES)} with bytes and sha256): the checkpoint is damaged")
    for name, expected in files.items():
        item = path / name
        try:
            if item.is_symlink():
                return f"{item} is a symbolic link, not a file this code wrote"
            size = item.stat().st_size
        except FileNotFoundError:
            return f"{item} is missing"
        if size != expected.get("bytes"):
            return f"{item} is truncated or damaged: {size} bytes, {MANIFEST} says {expected.get('bytes')}"
        sha, _ = _sha256_file(item)
        if sha != expected.get("sha256"):
            return f"{item} is corrupt: its sha256 {sha[:12]}… differs from {MANIFEST}'s {str(expected.get('sha256'))[:12]}…"
    return None


def _remove(checkpoint: Path) -> None:
    """Delete a checkpoint folder: renamed out of the ``step-*`` names first (atomic), so a kill half way through
    the deletion leaves a temp folder the next restore clears, not a half-deleted checkpoint."""
    doomed = checkpoint.with_name(f"{_TMP_PREFIX}old-{checkpoint.name}-{secrets.token_hex(4)}")
    try:
        os.rename(checkpoint, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def _step_of(path: Path) -> int:
    return int(_STEP_NAME.fullmatch(path.name).group(1))


# ---------------------------------------------------------------------------------------------------


class Checkpointer:
    """One run's checkpoints: periodic and on preemption signals; exact restore from the newest intact one;
    refuses another config's; one writer per folder (``<folder>/.lock``)."""

    def __init__(self, folder: Path, config_hash: str, every_steps: int = 0,
                 every_minutes: Optional[float] = None, handle_signals: bool = True, keep: int = 1) -> None:
        if every_steps < 0:
            raise ConfigError(f"checkpoint_every: must be >= 0 (0: only on preemption signals), got {every_steps}")
        if every_minutes is not None and not every_minutes > 0:
            raise ConfigError(f"checkpoint_minutes: must be > 0 or null, got {every_minutes}")
        if keep < 1:
            raise ConfigError(f"checkpoint keep: must be >= 1 (checkpoints kept), got {keep}")
        self.folder = Path(folder)
        self.config_hash = config_hash
        self.every_steps = every_steps
        self.every_minutes = every_minutes
        self.handle_signals = handle_signals
        self.keep = keep                    # newest checkpoints kept: more than 1 gives a corrupt one a fallback
        self.restored_from: Optional[Path] = None
        self._lock = RunLock(self.folder / LOCK_NAME, name=f"checkpoint: {self.folder}")
        self._saved_step: Optional[int] = None
        self._last_save = time.monotonic()
        self._live: Optional[tuple[Any, Any, Any, Optional[torch.Generator]]] = None
        self._in_training = False
        self._saving = False
        self._pending: Optional[Pending] = None
        self._closed = False

    @classmethod
    def for_run(cls, spec: Any, every_steps: int = 0, every_minutes: Optional[float] = None) -> "Checkpointer":
        """The run's checkpointer, its folder already locked: the folder and the config hash are the run's
        (``RunSpec.checkpoint_folder``, ``RunSpec.config_hash``). A second launch of the same run raises
        ``ConfigError`` here."""
        checkpointer = cls(spec.checkpoint_folder, spec.config_hash, every_steps=every_steps,
                           every_minutes=every_minutes)
        checkpointer.lock()
        return checkpointer

    # -- where --------------------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The checkpoint resumed from, else the run's checkpoint folder."""
        return self.restored_from or self.folder

    def checkpoints(self) -> list[Path]:
        """Every ``step-<digits>/`` folder, newest first (whole or not: see ``verify_checkpoint``). Whatever else
        is there (``step-old``, ``step-00000600.bak``, a file, a symbolic link) is not a checkpoint: ignored."""
        if not self.folder.is_dir():
            return []
        found = [p for p in self.folder.iterdir()
                 if _STEP_NAME.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
        return sorted(found, key=_step_of, reverse=True)

    def latest(self) -> Optional[Path]:
        """The newest checkpoint that has its manifest (written last, so complete; checksums not read here)."""
        return next((p for p in self.checkpoints() if (p / MANIFEST).is_file()), None)

    # -- one writer ---------------------------------------------------------------------------------------
    def lock(self) -> None:
        """Hold the folder's lock (no-op if held); ``ConfigError`` if another process holds it."""
        self._lock.acquire()

    # -- the loop's hooks ---------------------------------------------------------------------------------
    def restore(self, method: Any, state: Any, meters: Any, zo_seeds: Optional[torch.Generator]) -> bool:
        """Called once after ``method.setup``: load the newest intact checkpoint if there is one. True if resumed.
        Damaged ones are reported (one line each, naming the file) and skipped."""
        self._activate()
        try:
            self.lock()
        except ConfigError:                 # another process runs this: leave the signals as they were
            self._stop_signals()
            raise
        self._live = (method, state, meters, zo_seeds)
        self._in_training = True
        self._last_save = time.monotonic()
        self._remove_partial()
        latest = self._newest_intact()
        if latest is None:
            return False
        info = json.loads((latest / "state.json").read_text())
        if info.get("format") != FORMAT_VERSION:
            raise ConfigError(f"checkpoint: {latest} has format {info.get('format')}, this code reads "
                              f"{FORMAT_VERSION}; remove it (rm -r {self.folder}) to start the run afresh")
        if info.get("config_hash") != self.config_hash:
            raise ConfigError(
                f"checkpoint: {latest} was written by a run with config hash {info.get('config_hash')}, "
                f"this run's is {self.config_hash}: a different config under the same record path. "
                f"It will not be resumed. Remove it (rm -r {self.folder}) to start afresh, or pass variant=NAME "
                f"to keep both")
        _load_parameters(method.eval_model(), latest / "params.safetensors")
        method.load_state_dict(torch.load(latest / "method.pt", map_location="cpu", weights_only=True))
        rng_tensors = torch.load(latest / "rng.pt", map_location="cpu", weights_only=True)
        restore_rng(rng_tensors, info["rng"], zo_seeds)
        meters.load_state_dict(info["meters"])
        for name, value in info["loop"].items():
            current = getattr(state, name)
            if isinstance(current, list):
                current[:] = value              # in place: the loop may hold this list under another name
            else:
                setattr(state, name, value)
        self.restored_from = latest
        self._saved_step = state.step
        return True

    def maybe_save(self, method: Any, state: Any, meters: Any, zo_seeds: Optional[torch.Generator]) -> Optional[Path]:
        """After each step: save when ``checkpoint_every`` steps or ``checkpoint_minutes`` have passed, or a
        preemption signal is waiting (which is then passed on)."""
        self._live = (method, state, meters, zo_seeds)
        due = ((self.every_steps and state.step % self.every_steps == 0)
               or (self.every_minutes is not None and time.monotonic() - self._last_save >= self.every_minutes * 60))
        written = None
        if due or self._pending is not None:
            written = self.save(method, state, meters, zo_seeds,
                                reason="periodic" if self._pending is None else signal_name(self._pending[0]))
        self._deliver_pending()
        return written

    def training_finished(self, method: Any, state: Any, meters: Any, zo_seeds: Optional[torch.Generator]) -> None:
        """After the last step: from now on a signal is answered at once (parameters no longer change)."""
        self._live = (method, state, meters, zo_seeds)
        self._in_training = False
        if self._pending is not None:
            self.save(method, state, meters, zo_seeds, reason=signal_name(self._pending[0]))
            self._deliver_pending()

    def save(self, method: Any, state: Any, meters: Any, zo_seeds: Optional[torch.Generator],
             reason: str = "periodic") -> Path:
        """Write ``step-<N>/`` atomically (temp dir, fsync, manifest last, rename); keep the newest ``keep``."""
        final = self.folder / f"{_STEP_PREFIX}{state.step:08d}"
        if self._saved_step == state.step and final.is_dir():
            return final
        self._saving = True
        try:
            self.lock()
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f"{_TMP_PREFIX}{final.name}-{os.getpid()}-{secrets.token_hex(4)}"
            os.mkdir(tmp)               # mode 0o777 less the umask (mkdtemp would force 0700)
            try:
                _save_parameters(method.eval_model(), tmp / "params.safetensors")
                torch.save(method.state_dict(), tmp / "method.pt")
                rng_tensors, rng_scalars = capture_rng(zo_seeds)
                torch.save(rng_tensors, tmp / "rng.pt")
                info = {"format": FORMAT_VERSION, "config_hash": self.config_hash, "step": state.step,
                        "reason": reason, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "loop": dataclasses.asdict(state), "meters": meters.state_dict(), "rng": rng_scalars}
                (tmp / "state.json").write_text(json.dumps(info))
                files = {}
                for name in CHECKPOINT_FILES:       # read back from disk: the checksum covers what was written
                    sha, size = _sha256_file(tmp / name, fsync=True)
                    files[name] = {"bytes": size, "sha256": sha}
                _write_manifest(tmp, files)         # last: a checkpoint without it is incomplete
                _fsync_dir(tmp)
                if final.exists():      # same step written before (a resume right after a checkpoint)
                    _remove(final)
                os.rename(tmp, final)
                _fsync_dir(self.folder)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            self._prune(final)
            self._saved_step = state.step
            self._last_save = time.monotonic()
            return final
        finally:
            self._saving = False

    def discard(self) -> None:
        """The run's record is written: its checkpoints are no longer needed (the lock goes with the folder)."""
        self._stop_signals()
        if self.folder.is_dir():
            for item in self.folder.iterdir():      # everything but the lock, which is held to the end
                if item.name.startswith(LOCK_NAME):
                    continue
                if item.is_dir() and not item.is_symlink():
                    shutil.rmtree(item, ignore_errors=True)
                else:
                    item.unlink(missing_ok=True)
        self._lock.release(unlink=True)
        shutil.rmtree(self.folder, ignore_errors=True)
        self._prune_empty_parents()

    def close(self) -> None:
        """Stop answering signals for this run and free its folder: the lock files go (a failed or bad run leaves
        no ``.lock`` behind), checkpoints stay for a resume, and a folder left empty is removed. Idempotent; run.py
        calls it on every way out of a run. A signal still waiting is passed on now."""
        held = self._lock.held
        self._lock.release(unlink=True)
        self._stop_signals()
        if held:
            try:
                self.folder.rmdir()             # only if empty: no checkpoint was written
            except OSError:
                return
            self._prune_empty_parents()

    def _prune_empty_parents(self) -> None:
        """Remove the empty <variant>/<method>/<task>/<model> folders above the run's (never the root above them)."""
        parent = self.folder.parent
        for _ in range(4):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    # -- internals ----------------------------------------------------------------------------------------
    def _stop_signals(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._in_training = False
        pending, self._pending = self._pending, None
        RELAY.deactivate(self)
        if pending is not None:             # a signal came while a step was running and no step followed
            signum, frame = pending
            if RELAY.installed:
                RELAY.pass_on(signum, frame)
            else:                           # handlers already given back: let the one in place act
                signal.raise_signal(signum)

    def _activate(self) -> None:
        previous = RELAY.active
        RELAY.activate(self, install=self.handle_signals)
        if isinstance(previous, Checkpointer) and previous is not self:
            previous._lock.release()        # an earlier run in this process has stopped: it writes no more

    def on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        """The relay's call: note the signal; answer it now unless a step (or a save) is under way."""
        if self._pending is None:
            self._pending = (signum, frame)
        if self._in_training or self._saving:
            print(f"checkpoint: {signal_name(signum)} received; checkpointing after this step",
                  file=sys.stderr, flush=True)
            return
        if self._live is not None:
            self.save(*self._live, reason=signal_name(signum))
        self._deliver_pending()

    def take_pending(self) -> Optional[Pending]:
        """The signal noted and not yet passed on (cleared)."""
        pending, self._pending = self._pending, None
        return pending

    def _deliver_pending(self) -> None:
        if self._pending is None:
            return
        signum, frame = self._pending
        self._pending = None
        where = f" ({self.folder})" if self._saved_step is not None else ""
        print(f"checkpoint: saved step {self._saved_step}{where} on {signal_name(signum)}; passing the signal on",
              file=sys.stderr, flush=True)
        RELAY.pass_on(signum, frame)

    def _newest_intact(self) -> Optional[Path]:
        """The newest checkpoint whose files match its manifest; one warning line for each newer damaged one."""
        damaged: list[str] = []
        chosen = None
        for candidate in self.checkpoints():
            problem = verify_checkpoint(candidate)
            if problem is None:
                chosen = candidate
                break
            damaged.append(problem)
        then = f"resuming from the previous one, {chosen.name}" if chosen is not None else \
            "no intact checkpoint is left, so the run starts afresh"
        for problem in damaged:
            print(f"warning: checkpoint: {problem}; not resumed from it, {then}", file=sys.stderr, flush=True)
        return chosen

    def _prune(self, final: Path) -> None:
        """Keep ``final`` and the ``keep - 1`` newest before it; drop the rest, and any newer one (a damaged
        checkpoint that was skipped: its timeline was abandoned)."""
        older = [p for p in self.checkpoints() if _step_of(p) < _step_of(final)]
        newer = [p for p in self.checkpoints() if _step_of(p) > _step_of(final)]
        for old in newer + older[self.keep - 1:]:
            _remove(old)

    def _remove_partial(self) -> None:
        """Temp directories left by a save that was killed half way."""
        if self.folder.is_dir():
            for item in self.folder.iterdir():
                if item.name.startswith(_TMP_PREFIX):
                    shutil.rmtree(item, ignore_errors=True)
