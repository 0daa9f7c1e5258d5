"""How ``python run.py`` ends: a config that cannot be composed fails in one line with exit status 2, as bad values do.

Hydra reports its own errors (an unknown group option, an unknown key, a value of the wrong type, a malformed
override) in several lines and exits 1. With ``HYDRA_FULL_ERROR=1`` it raises them instead, so ``call_main`` sets
that for the call (unless the user set it: then they get Hydra's full traces), catches what comes out and prints
``error: <key>: <what is wrong>``. ``HYDRA_FULL_ERROR`` changes nothing else in Hydra 1.3 (hydra/_internal/utils.py
``run_and_report`` is its only reader).
"""
from __future__ import annotations

import errno
import os
import signal
import sys
import traceback
from typing import Callable, Optional

from hizfo.errors import ConfigError, one_line
from hizfo.run.runspec import GROUPS

INTERNAL_GROUPS = ("tuning", "study_arm")         # composed by the presets themselves, never picked by a user
USER_GROUPS = tuple(g for g in GROUPS if g not in INTERNAL_GROUPS) + ("debug",)   # what --help lists
HIDDEN_OPTIONS = ("site", "site.example")          # launcher=slurm reads these itself


def help_groups() -> str:
    """The config groups a user picks from (``--help``; conf/config.yaml's help template), one line each: not the
    schemas, study arms, tunings and site files the presets compose by themselves."""
    from pathlib import Path
    conf = Path(__file__).resolve().parents[2] / "conf"
    lines = []
    for group in USER_GROUPS:
        options = sorted(p.stem for p in (conf / group).glob("*.yaml") if p.stem not in HIDDEN_OPTIONS)
        lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)


def register_help_resolver() -> None:
    """``${hizfo_help_groups:}`` in the help template (before Hydra composes the help)."""
    from omegaconf import OmegaConf
    if not OmegaConf.has_resolver("hizfo_help_groups"):
        OmegaConf.register_new_resolver("hizfo_help_groups", help_groups)


register_help_resolver()


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def config_error_in(exc: Optional[BaseException]) -> Optional[ConfigError]:
    """The ConfigError behind ``exc``, looking through Hydra's InstantiationException wrapper."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ConfigError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _override_being_applied(exc: BaseException) -> Optional[str]:
    """The key of the command-line override Hydra was applying when ``exc`` was raised, if it was applying one."""
    tb = exc.__traceback__
    key = None
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "_apply_overrides_to_config":
            key = tb.tb_frame.f_locals.get("key", key)
        tb = tb.tb_next
    return key if isinstance(key, str) else None


def composition_error_line(exc: BaseException) -> Optional[str]:
    """One line for an error Hydra or OmegaConf raised while composing the config; None for any other error."""
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if isinstance(exc, MissingConfigException):
        missing = exc.missing_cfg_file or "?"
        group, _, option = missing.rpartition("/")
        if exc.options:
            return (f"{group}={option}: no such option. Available options: {', '.join(sorted(exc.options))}"
                    if group else f"{missing}: not found. Available options: {', '.join(sorted(exc.options))}")
        return _first_line(exc)
    key = _override_being_applied(exc)
    if isinstance(exc, AssertionError) and key is not None:
        # OmegaConf asserts when an override reaches into a value that is null here (model.arch.X on a hub model)
        parent = key.rpartition(".")[0]
        return f"{key}: cannot be set, {parent} is null in this config (set {parent} as a whole, or drop the override)"
    if isinstance(exc, (HydraException, OmegaConfBaseException)):
        cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else None
        inner = cause or (exc if isinstance(exc, OmegaConfBaseException) else None)
        full_key = getattr(inner, "full_key", None) or key
        what = _first_line(inner) if inner is not None else _first_line(exc)
        if isinstance(inner, (ConfigKeyError, ConfigAttributeError)):
            parent = getattr(inner, "parent_node", None)
            keys = [str(k) for k in parent.keys() if not str(k).startswith("_") and k != "hydra"] if parent is not None else []
            where = full_key.rpartition(".")[0] if full_key else ""
            allowed = f"; the keys{' of ' + where if where else ''} are: {', '.join(keys)}" if keys else ""
            return f"{full_key}: no such config key{allowed}"
        return f"{full_key}: {what}" if full_key else what
    return None


def interrupted_line(exc: KeyboardInterrupt) -> str:
    """The one line a Ctrl-C ends with: where its checkpoint is, or that none was written."""
    from hizfo.run.signals import Interrupted
    if isinstance(exc, Interrupted):
        return f"interrupted (Ctrl-C): {exc}"
    return "interrupted (Ctrl-C): no checkpoint written (no training step was under way)"


def end_failed_run(exc: Exception, multirun: bool) -> None:
    """run.py's answer to a run that raised: a config error is one line (from rank 0 under torchrun), any other error
    its traceback unless already reported; then exit 2 or 1, or, in a multirun, re-raise so Hydra's sweep goes on to
    the next job and the sweep's summary counts this one failed. A sweep under torchrun goes on only past a config
    error (every rank finds it alike, before any collective): after any other failure the ranks' collectives may no
    longer pair up in the one group the jobs share, so every rank exits (the relaunch skips the jobs done)."""
    from hizfo.core.distributed import launched_world_size, say_from_rank_0
    config_error = config_error_in(exc)
    if config_error is not None:
        say_from_rank_0(f"error: {config_error}")
        exc.reported = True                                   # type: ignore[attr-defined]  (call_main: nothing more)
    elif not getattr(exc, "reported", False):
        report_unreported(exc)
    if multirun and (config_error is not None or launched_world_size() == 1):
        raise exc
    sys.exit(2 if config_error is not None else 1)


def report_unreported(exc: BaseException) -> None:
    """A failure nothing has reported yet: a full disk (or quota) anywhere in its chain in one line, since no
    traceback tells the user more than "free space"; anything else its traceback."""
    cause: Optional[BaseException] = exc
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen and \
            not (isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)):
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    if cause is None or id(cause) in seen:
        traceback.print_exc()
        return
    print(f"failed: the disk is full ({one_line(cause)}); free space and run the same command again",
          file=sys.stderr)


def call_main(main: Callable[[], None]) -> int:
    """Call a ``@hydra.main`` function; return the exit status (2: bad config, 1: a run failed, 130: Ctrl-C,
    0: all ran). A sweep's summary (hizfo/run/sweep_summary.py) is printed last, whichever way it ended."""
    from hizfo.run.sweep_summary import finish_sweeps
    code = 0
    try:
        code = _call(main)
    except KeyboardInterrupt as exc:
        signal.signal(signal.SIGINT, _exit_at_once)        # a second Ctrl-C during the clean-up: exit now
        from tqdm import tqdm
        bar_open = bool(getattr(tqdm, "_instances", None))   # a bar's line has no end yet: start a new one
        print(("\n" if bar_open else "") + interrupted_line(exc), file=sys.stderr, flush=True)
        code = 130
    return finish_sweeps(code)


def _exit_at_once(signum: int, frame: object) -> None:
    os._exit(130)


def _call(main: Callable[[], None]) -> int:
    """``main()`` with Hydra's errors raised to us; the exit status, each failure reported in one line."""
    user_wants_traces = "HYDRA_FULL_ERROR" in os.environ
    os.environ["HYDRA_FULL_ERROR"] = "1"                  # Hydra raises its errors to us instead of exiting 1
    try:
        main()
    except Exception as exc:                               # noqa: BLE001 - every failure ends in one line here
        if user_wants_traces:
            raise
        line = composition_error_line(exc)
        if line is not None:                               # every rank of a torchrun launch finds it alike
            from hizfo.core.distributed import say_from_rank_0
            say_from_rank_0(f"error: {line}")
            return 2
        config_error = config_error_in(exc)
        from hizfo.run.sweep_summary import sweep_active
        if config_error is not None and not getattr(exc, "reported", False):
            print(f"error: {config_error}", file=sys.stderr)
        elif not getattr(exc, "reported", False) and not sweep_active():   # a sweep's summary shows its jobs' errors
            report_unreported(exc)
        return 2 if config_error is not None else 1
    finally:
        if not user_wants_traces:
            os.environ.pop("HYDRA_FULL_ERROR", None)
    return 0
