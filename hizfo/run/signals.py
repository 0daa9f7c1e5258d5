"""Preemption signals held until a step ends, then passed on (Slurm preemption, time limits, submitit requeue).

SIGTERM (Slurm preemption, scancel, the time limit itself) and SIGUSR1 / SIGUSR2 (the warning Slurm sends
``signal_delay_s`` before the time limit; submitit 1.5 asks for USR2, older versions USR1) go to the *listener*
that is active (the run's ``hizfo.run.checkpoint.Checkpointer``). It notes the signal, checkpoints at the next step
boundary and then asks the relay to pass the signal on to whoever handled it before: under submitit that is its
handler, which calls the launcher's ``checkpoint`` and requeues the job with ``scontrol requeue``; outside submitit
the default action ends the process. See docs/slurm.md.

SIGINT (Ctrl-C) is held the same way: the step under way finishes, a checkpoint is written, and the run stops with
``Interrupted`` (a ``KeyboardInterrupt``) that ``hizfo.run.cli.call_main`` turns into one line, exit status 130.
A second Ctrl-C while the first is being answered exits at once (``os._exit(130)``), without waiting for the step.

Signal handlers belong to the process, so there is one relay per process, ``RELAY``; runs that follow each other
in one process (a Hydra multirun on the basic launcher) each make themselves its listener in turn.
"""
from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Any, Callable, Optional, Protocol

PREEMPTION_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)
INTERRUPT_EXIT = 130          # the shell's status for a process ended by SIGINT (128 + 2)
REQUEUE_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGUSR2, signal.SIGUSR1)   # submitit's handler is on one

Pending = tuple[int, Optional[FrameType]]


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, answered: its message says whether (and where) a checkpoint was written."""


def exit_now(why: str) -> None:
    """A second Ctrl-C: one line, then end the process at once (no cleanup, no traceback)."""
    print(f"interrupted: {why}; exiting now", file=sys.stderr, flush=True)
    os._exit(INTERRUPT_EXIT)


class SignalListener(Protocol):
    """What the relay calls: the run that is active in this process."""

    def on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        """A preemption signal arrived (in the main thread, between two Python bytecodes)."""

    def take_pending(self) -> Optional[Pending]:
        """The signal it noted and has not passed on yet (cleared), if any."""


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15; the number itself for a value that is no signal."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


class SignalRelay:
    """Our handler on the preemption signals, the handlers that were there before it, and the active listener."""

    def __init__(self, signals: tuple[signal.Signals, ...] = PREEMPTION_SIGNALS,
                 requeue_signals: tuple[signal.Signals, ...] = REQUEUE_SIGNALS) -> None:
        self.signals = signals
        self.requeue_signals = requeue_signals
        self.previous: dict[int, Any] = {}          # signal -> handler before ours (submitit's, or the default)
        self.active: Optional[SignalListener] = None
        self.interrupt_note: Optional[str] = None   # what the run did about a Ctrl-C (the ``Interrupted`` message)
        self.exit_hooks: list[Callable[[], None]] = []   # run before a signal ends the process (the W&B run's flush)

    def add_exit_hook(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` before a passed-on signal ends (or requeues) the process: what is buffered is saved."""
        self.exit_hooks.append(hook)

    def remove_exit_hook(self, hook: Callable[[], None]) -> None:
        if hook in self.exit_hooks:
            self.exit_hooks.remove(hook)

    def _run_exit_hooks(self) -> None:
        for hook in list(self.exit_hooks):
            self.remove_exit_hook(hook)
            try:
                hook()
            except Exception as exc:            # noqa: BLE001 - a flush that fails must not stop the signal
                print(f"warning: before {hook}: {exc}", file=sys.stderr, flush=True)

    @property
    def installed(self) -> bool:
        """Whether our handler is on the signals now."""
        return bool(self.previous)

    def install(self) -> bool:
        """Put our handler on the signals, remembering the ones before. False outside the main thread, where
        Python allows no signal handlers (periodic checkpoints still work there)."""
        if self.previous:
            return True
        try:
            for sig in self.signals:
                current = signal.getsignal(sig)
                if sig == signal.SIGINT and current == signal.SIG_IGN:
                    continue            # Ctrl-C ignored (nohup, a background job of a script): it stays ignored
                self.previous[int(sig)] = current
                signal.signal(sig, self._dispatch)
        except ValueError:          # not the main thread
            for sig, handler in self.previous.items():
                signal.signal(sig, handler)
            self.previous.clear()
            return False
        return True

    def uninstall(self) -> None:
        """Give the signals back to the handlers that were there before."""
        for sig, handler in self.previous.items():
            try:
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            except ValueError:
                pass
        self.previous.clear()

    def activate(self, listener: SignalListener, install: bool = True) -> None:
        """Make ``listener`` the one signals go to. An earlier listener that stopped with a signal still waiting
        (its run ended by an exception) has that signal passed on now."""
        previous, self.active = self.active, listener
        self.interrupt_note = None
        if previous is not None and previous is not listener:
            pending = previous.take_pending()
            if pending is not None:
                self.pass_on(*pending)
        if install:
            self.install()

    def deactivate(self, listener: SignalListener) -> None:
        """``listener``'s run is done: hand the signals back (if it is the active one)."""
        if self.active is listener:
            self.active = None
            self.uninstall()

    def pass_on(self, signum: int, frame: Optional[FrameType]) -> None:
        """Hand a signal to whoever handled it before us: submitit requeues; the default action ends the process."""
        handler = self.previous.get(signum, signal.SIG_DFL)
        if signum in self.requeue_signals and not callable(handler):
            # Slurm's time-limit warning comes as USR1 or USR2 depending on the submitit version: both requeue
            for other in self.requeue_signals:
                if callable(self.previous.get(int(other))):
                    handler = self.previous[int(other)]
                    break
        if handler == signal.SIG_IGN:
            return
        self._run_exit_hooks()                  # the process ends (or is requeued) now
        if signum == signal.SIGINT and handler is signal.default_int_handler:
            raise Interrupted(self.interrupt_note or "no checkpoint was written")
        if callable(handler):
            handler(signum, frame)
            return
        self.uninstall()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def _dispatch(self, signum: int, frame: Optional[FrameType]) -> None:
        listener = self.active
        if listener is None:
            self.pass_on(signum, frame)
            return
        listener.on_signal(signum, frame)


RELAY = SignalRelay()


class DeferredSignal:
    """One run's preemption signal, from its arrival to its passing on (the state machine the checkpointer uses).

        nothing running  --signal-->  answer now: the owner saves, then ``deliver`` passes it on
        step or save     --signal-->  pending (the first signal wins) until the step boundary, then as above
        any              --stop-->    stopped: a signal still pending is passed on (or raised again if the relay
                                      has already given the handlers back)
    """

    def __init__(self, relay: SignalRelay = RELAY) -> None:
        self.relay = relay
        self.pending: Optional[Pending] = None
        self.in_training = False        # a training step may be under way: answer at the next step boundary
        self.saving = False             # a checkpoint is being written: answer when it is done
        self.stopped = False
        self.quiet = False              # several processes: only rank 0 prints what it does

    def note(self, signum: int, frame: Optional[FrameType]) -> bool:
        """Record the signal; True if it is to be answered now (no step and no save under way)."""
        if self.pending is not None and signum == signal.SIGINT:       # Ctrl-C again while the first is answered
            exit_now(f"a second Ctrl-C while waiting for the step to end (after {signal_name(self.pending[0])})")
        if self.pending is None:
            self.pending = (signum, frame)
        if self.in_training or self.saving:
            again = " (Ctrl-C again: exit at once, without it)" if signum == signal.SIGINT else ""
            if not self.quiet:
                print(f"checkpoint: {signal_name(signum)} received; checkpointing after this step{again}",
                      file=sys.stderr, flush=True)
            return False
        return True

    def adopt(self, signum: int) -> None:
        """Another rank's signal, taken by a rank that got none (several processes stop alike)."""
        if self.pending is None:
            self.pending = (signum, None)

    @property
    def reason(self) -> Optional[str]:
        """The waiting signal's name (why the next checkpoint is written), or None."""
        return signal_name(self.pending[0]) if self.pending is not None else None

    def take(self) -> Optional[Pending]:
        """The signal noted and not yet passed on (cleared)."""
        pending, self.pending = self.pending, None
        return pending

    def deliver(self, saved: str) -> None:
        """Pass a waiting signal on, once the owner has saved (``saved`` says what, for the log line)."""
        pending = self.take()
        if pending is None:
            return
        signum, frame = pending
        if signum == signal.SIGINT:
            self.relay.interrupt_note = f"checkpoint saved at {saved}; run the same command again to resume"
        elif not self.quiet:
            print(f"checkpoint: saved {saved} on {signal_name(signum)}; passing the signal on", file=sys.stderr,
                  flush=True)
        self.relay.pass_on(signum, frame)

    def stop(self, listener: SignalListener) -> None:
        """The run is over: signals no longer come to ``listener``; one still waiting is passed on now."""
        if self.stopped:
            return
        self.stopped = True
        self.in_training = False
        pending = self.take()
        self.relay.deactivate(listener)
        if pending is not None:             # a signal came while a step was running and no step followed
            signum, frame = pending
            if self.relay.installed:
                self.relay.pass_on(signum, frame)
            else:                           # handlers already given back: let the one in place act
                signal.raise_signal(signum)
