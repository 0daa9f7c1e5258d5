"""Checkpoint policy for exact resume: where a run's checkpoints live, when they are written, which are kept,
who may write them, and which one a resume reads.

A checkpoint is one directory ``step-<N>/`` under the run's checkpoint folder (``RunSpec.checkpoint_folder``);
its files and their format are ``hizfo.run.checkpoint_files``'s. It is written to a temp directory and renamed
into place, so a reader sees a whole checkpoint or none. A restore checks every file against the manifest,
reports a corrupt or truncated one by path and falls back to the previous intact checkpoint, or starts the run
afresh: never a silent resume from damaged files.

One process writes a run's folder: the run holds ``<folder>/.lock`` (``hizfo.run.locks.RunLock``) for its lifetime, so a
duplicate launch of the same run stops with one line instead of racing on the same files. Folders and files are
created with the process's umask (0755 / 0644 under umask 022), like any other output of the run.

Under several processes (``torchrun``) every rank has a checkpointer and they act together: rank 0 holds the lock,
picks the checkpoint to resume and manages the folders; every rank writes its shard of each checkpoint
(``hizfo.run.checkpoint_dist``, through torch.distributed.checkpoint). Whether to checkpoint after a step is agreed
by one all-reduce (a signal may reach one rank only, a time-based cadence may fall due on one only); the end of
training always writes one, since a signal during evaluation cannot start a collective write from its handler.
One process writes one at the end of training too, ``checkpoint_every=0`` included: the trained run waits in it
until the ok record is written (a full disk then costs an evaluation, not the training).

Preemption signals reach the checkpointer through ``hizfo.run.signals.RELAY``; Slurm's pre-submission checks live in
``hizfo.run.slurm_preflight``. See docs/slurm.md.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, Optional

import torch
from torch.distributed.checkpoint.api import CheckpointException

from hizfo.core import distributed
from hizfo.core.distributed import World
from hizfo.errors import ConfigError
from hizfo.run.checkpoint_dist import (check_readable, is_distributed, own_failure, read_distributed, write_shards,
                                       write_state)
from hizfo.run.checkpoint_files import (MANIFEST, TMP_PREFIX, Parsed, apply_checkpoint, fsync_dir, parse_checkpoint,
                                        verify_checkpoint, write_checkpoint)
from hizfo.run.locks import RunLock
from hizfo.run.rank_failures import note_stop
from hizfo.run.signals import PREEMPTION_SIGNALS, RELAY, DeferredSignal, Pending, signal_name

LOCK_NAME = ".lock"
_STEP_PREFIX = "step-"
_STEP_NAME = re.compile(r"step-(\d+)")      # a checkpoint folder's whole name; anything else in the folder is ignored


def _remove(checkpoint: Path) -> None:
    """Delete a checkpoint folder: renamed out of the ``step-*`` names first (atomic), so a kill half way through
    the deletion leaves a temp folder the next restore clears, not a half-deleted checkpoint."""
    doomed = checkpoint.with_name(f"{TMP_PREFIX}old-{checkpoint.name}-{secrets.token_hex(4)}")
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
                 every_minutes: Optional[float] = None, handle_signals: bool = True, keep: int = 1,
                 world: World = World()) -> None:
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
        self.world = world                  # several processes: rank 0 manages the folder, every rank writes
        self.restored_from: Optional[Path] = None
        self._lock = RunLock(self.folder / LOCK_NAME, name=f"checkpoint: {self.folder}")
        self._saved_step: Optional[int] = None
        self._last_save = time.monotonic()
        self._live: Optional[tuple[Any, Any, Any, Optional[torch.Generator]]] = None
        self._signal = DeferredSignal(RELAY)
        self._signal.quiet = not world.is_main

    @classmethod
    def for_run(cls, spec: Any, every_steps: int = 0, every_minutes: Optional[float] = None,
                world: World = World()) -> "Checkpointer":
        """The run's checkpointer, its folder already locked (by rank 0): the folder and the config hash are the
        run's (``RunSpec.checkpoint_folder``, ``RunSpec.config_hash``). A second launch of the same run raises
        ``ConfigError`` here."""
        checkpointer = cls(spec.checkpoint_folder, spec.config_hash, every_steps=every_steps,
                           every_minutes=every_minutes, world=world)
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
        """Hold the folder's lock (no-op if held, or on a rank other than 0); ``ConfigError`` if another process
        holds it."""
        if self.world.is_main:
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
        self._signal.in_training = True
        self._last_save = time.monotonic()
        chosen, error = None, None
        if self.world.is_main:
            self._remove_partial()
            try:
                chosen = self._newest_readable()
            except ConfigError as exc:              # another config's checkpoint: every rank stops, one line
                error = exc
        distributed.agree(error)
        latest = distributed.from_main(chosen.path if isinstance(chosen, Parsed) else chosen)
        if latest is None:
            return False
        if is_distributed(latest):
            read_distributed(latest, method, state, meters, zo_seeds, self.config_hash, self.folder, self.world)
        elif self.world.size > 1:
            refusal = ConfigError(f"checkpoint: {latest} was written by one process; resume it with one process, "
                                  f"or remove it (rm -r {self.folder}) to start afresh on {self.world.size}")
            refusal.reported = not self.world.is_main           # type: ignore[attr-defined]
            raise refusal
        else:
            apply_checkpoint(chosen, method, state, meters, zo_seeds)
        self.restored_from = latest
        self._saved_step = state.step
        return True

    def maybe_save(self, method: Any, state: Any, meters: Any, zo_seeds: Optional[torch.Generator]) -> Optional[Path]:
        """After each step: save when ``checkpoint_every`` steps or ``checkpoint_minutes`` have passed, or a
        preemption signal is waiting (which is then passed on)."""
        self._live = (method, state, meters, zo_seeds)
        due = ((self.every_steps and state.step % self.every_steps == 0)
               or (self.every_minutes is not None and time.monotonic() - self._last_save >= self.every_minutes * 60))
        signalled = self._signal.pending is not None
        if self.world.size > 1:             # every rank writes its part: all agree, in one all-reduce
            due, signalled = (v > 0 for v in distributed.summed([float(bool(due)), float(signalled)], self.world))
            if signalled:
                self._agree_on_the_signal()
        written = None
        if due or signalled:
            reason = self._signal.reason or "periodic"          # several processes: the agreed signal
            written = self.save(method, state, meters, zo_seeds, reason=reason)
        if self.world.size == 1 or signalled:
            # several processes: only a signal every rank has agreed on; one that came to a rank during this step's
            # save waits for the next step's agreement (passed on now, it would stop that rank alone)
            self._deliver_pending()
        return written

    def _agree_on_the_signal(self) -> None:
        """Several processes, once they agree a signal came: a rank that got none takes the one most ranks got, so
        every rank checkpoints and stops alike (a signal to one rank would stop that rank alone, and the others'
        next collective would wait for it). A second all-reduce, on the step a signal came only."""
        mine = self._signal.pending[0] if self._signal.pending is not None else None
        counts = distributed.summed([float(mine == int(s)) for s in PREEMPTION_SIGNALS], self.world)
        most = max(range(len(counts)), key=lambda i: (counts[i], -i))
        self._signal.adopt(int(PREEMPTION_SIGNALS[most]))

    def training_finished(self, method: Any, state: Any, meters: Any, zo_seeds: Optional[torch.Generator]) -> None:
        """After the last step: from now on a signal is answered at once (parameters no longer change)."""
        self._live = (method, state, meters, zo_seeds)
        # the trained weights are kept until the record is written (a full disk then loses no training); several
        # processes write always, since a signal during evaluation cannot start a collective write, and answer a
        # signal only once every rank has agreed on it (until then it waits, as during a step)
        if self.world.size > 1:
            signalled = distributed.summed([float(self._signal.pending is not None)], self.world)[0] > 0
            if signalled:
                self._agree_on_the_signal()
            self.save(method, state, meters, zo_seeds, reason=self._signal.reason or "end of training")
            self._signal.in_training = False
            if signalled:
                self._deliver_pending()
            return
        self._signal.in_training = False
        if self.every_steps or self.every_minutes is not None or self._signal.pending is not None:
            self.save(method, state, meters, zo_seeds, reason=self._signal.reason or "end of training")
            self._deliver_pending()
        elif state.step > 0:                # checkpoint_every=0 too: the trained run waits here for its record
            self._keep_until_recorded(method, state, meters, zo_seeds)

    def _keep_until_recorded(self, method: Any, state: Any, meters: Any, zo_seeds: Optional[torch.Generator]) -> None:
        """One process, no cadence asked for: the end-of-training checkpoint all the same, so a full disk at the
        ok record costs an evaluation, not the training (``discard`` removes it once the record is written). Left
        out of ``train_seconds`` and of the peak memory (a default run's costs stay as they were); a disk that
        refuses it is a warning."""
        try:
            with meters.paused("train_seconds", torch.device("cpu")), meters.outside_peak():   # paused: the clock
                self.save(method, state, meters, zo_seeds, reason="end of training")
        except OSError as exc:
            print(f"warning: checkpoint: the end-of-training checkpoint could not be written to {self.folder} "
                  f"({type(exc).__name__}: {exc}); the run goes on, but a record the disk refuses would lose its "
                  f"training", file=sys.stderr, flush=True)
        self._deliver_pending()             # a signal that came during the save

    def save(self, method: Any, state: Any, meters: Any, zo_seeds: Optional[torch.Generator],
             reason: str = "periodic") -> Path:
        """Write ``step-<N>/`` atomically (temp dir, fsync, manifest last, rename); keep the newest ``keep``."""
        final = self.folder / f"{_STEP_PREFIX}{state.step:08d}"
        if self._saved_step == state.step and final.is_dir():
            return final
        self._signal.saving = True
        try:
            if self.world.size > 1:
                self._save_together(final, method, state, meters, zo_seeds, reason)
                return final
            self.lock()
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f"{TMP_PREFIX}{final.name}-{os.getpid()}-{secrets.token_hex(4)}"
            os.mkdir(tmp)               # mode 0o777 less the umask (mkdtemp would force 0700)
            try:
                write_checkpoint(tmp, method, state, meters, zo_seeds, self.config_hash, reason)
                if final.exists():      # same step written before (a resume right after a checkpoint)
                    _remove(final)
                os.rename(tmp, final)
                fsync_dir(self.folder)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            self._prune(final)
            self._saved_step = state.step
            self._last_save = time.monotonic()
            return final
        finally:
            self._signal.saving = False

    def _save_together(self, final: Path, method: Any, state: Any, meters: Any,
                       zo_seeds: Optional[torch.Generator], reason: str) -> None:
        """Several processes: rank 0 makes the temp folder, every rank writes its part into it, then rank 0
        writes the state and the manifest (last) and renames it into place. A rank that dies before the manifest
        leaves a temp folder, which no resume reads."""
        tmp, error = None, None
        if self.world.is_main:
            try:
                self.lock()
                self.folder.mkdir(parents=True, exist_ok=True)
                tmp = self.folder / f"{TMP_PREFIX}{final.name}-{os.getpid()}-{secrets.token_hex(4)}"
                os.mkdir(tmp)
            except (OSError, ConfigError) as exc:
                error = exc
        distributed.agree(error)
        tmp = distributed.from_main(tmp)
        error = None
        try:
            write_shards(tmp, method, meters, zo_seeds, self.world)
        except CheckpointException as exc:              # a rank's failure in DCP's own write, handed to every rank
            error = own_failure(exc, self.world.rank)
        except Exception as exc:                        # noqa: BLE001 (every rank hears of it below)
            error = exc
        try:
            distributed.agree_all(error)
        except Exception:
            if tmp is not None and self.world.is_main:  # no half-written folder left behind
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if self.world.is_main:
            try:
                write_state(tmp, method, state, self.config_hash, reason, self.world)
                if final.exists():
                    _remove(final)
                os.rename(tmp, final)
                fsync_dir(self.folder)
                self._prune(final)
            except BaseException as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                error = exc if isinstance(exc, Exception) else None
                if error is None:
                    raise
        distributed.agree(error)
        self._saved_step = state.step
        self._last_save = time.monotonic()

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
        self._signal.stop(self)

    def _activate(self) -> None:
        previous = RELAY.active
        RELAY.activate(self, install=self.handle_signals)
        if isinstance(previous, Checkpointer) and previous is not self:
            previous._lock.release()        # an earlier run in this process has stopped: it writes no more

    def on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        """The relay's call: note the signal; answer it now unless a step (or a save) is under way."""
        if not self._signal.note(signum, frame):
            return
        if self._live is not None and self.world.size == 1:    # several: no collective write from a handler
            self.save(*self._live, reason=signal_name(signum))
        elif self._live is not None and not self.world.is_main:   # rank 0's record says why this rank stopped
            note_stop(self.folder, self.world.rank, f"stopped by {signal_name(signum)} after training (a relaunch "
                      f"resumes from the end-of-training checkpoint, step {self._saved_step}, and evaluates again)")
        self._deliver_pending()

    def take_pending(self) -> Optional[Pending]:
        """The signal noted and not yet passed on (cleared)."""
        return self._signal.take()

    def _deliver_pending(self) -> None:
        where = f" ({self.folder})" if self._saved_step is not None else ""
        self._signal.deliver(f"step {self._saved_step}{where}")

    def _newest_readable(self) -> Optional[Parsed | Path]:
        """The newest checkpoint whose files match its manifest and parse (a single-layout one parsed, a distributed
        one's path); one warning line for each newer one that does not. ``ConfigError`` for another config's."""
        damaged: list[str] = []
        chosen: Optional[Parsed | Path] = None
        for candidate in self.checkpoints():
            problem = verify_checkpoint(candidate)
            if problem is None:
                try:
                    if is_distributed(candidate):
                        check_readable(candidate, self.config_hash, self.folder)
                        chosen = candidate
                    else:
                        chosen = parse_checkpoint(candidate, self.config_hash, self.folder)
                    break
                except ConfigError:
                    raise
                except Exception as exc:                # noqa: BLE001 - any parse failure: fall back, in one line
                    problem = (f"{candidate} matches its {MANIFEST} but cannot be read "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
            damaged.append(problem)
        name = (chosen.path if isinstance(chosen, Parsed) else chosen).name if chosen is not None else None
        then = f"resuming from the previous one, {name}" if chosen is not None else \
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
                if item.name.startswith(TMP_PREFIX):
                    shutil.rmtree(item, ignore_errors=True)
