"""Every sweep ends with a summary, on any launcher (the Hydra callback in conf/config.yaml).

Each job (in whichever process runs it: this one under the basic launcher, a Slurm or submitit job otherwise)
tees its stdout and stderr into Hydra's job log (``<job dir>/run.log``) and, when it ends, writes
``<job dir>/.hizfo_job.json``: its overrides, ok / failed / skipped, the record's path, the error and the logs.
The submitting process reads those files back and prints, per job, its status, overrides and record; for a failed
job, the last lines of its error log and the log's path. ``hizfo.run.cli.call_main`` prints the summary even when
Hydra stops at the first failed job (Hydra then skips ``on_multirun_end``) and exits 1 if any job failed.

``hydra/launcher=submitit_slurm`` by itself (without ``launcher=slurm``'s pre-flight, requeue settings and
timeouts) is refused in one line here, before anything is submitted.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, TextIO

from omegaconf import DictConfig, OmegaConf

try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:      # pragma: no cover (hydra-core is a dependency)
    _HydraCallback = object  # type: ignore[assignment,misc]

STATUS_FILE = ".hizfo_job.json"
TAIL_LINES = 8


@dataclass
class JobOutcome:
    """One job of a sweep, as its status file records it."""
    num: int
    overrides: list[str]
    status: str                      # ok | failed | skipped
    record: Optional[str] = None
    error: Optional[str] = None
    log: Optional[str] = None        # the job's log: Hydra's run.log (stdout and stderr teed into it)
    slurm_log: Optional[str] = None  # submitit's <job>_log.err, for Slurm and submitit jobs
    started: float = 0.0
    seconds: float = 0.0

    @property
    def error_log(self) -> Optional[str]:
        """The log a failed job's error lines are read from: submitit's .err if it has one, else run.log."""
        return self.slurm_log if self.slurm_log and Path(self.slurm_log).is_file() else self.log


class Tee:
    """A text stream that also writes complete lines into a log file (a progress bar's redraws: its last state)."""

    def __init__(self, stream: TextIO, log: TextIO) -> None:
        self.stream, self.log, self._pending = stream, log, ""

    def write(self, text: str) -> int:
        written = self.stream.write(text)
        if self.log.closed:          # a handler made during an earlier job kept this stream: the terminal only
            return written
        self._pending += text
        if "\n" in self._pending:
            done, _, self._pending = self._pending.rpartition("\n")
            self.log.write("\n".join(line.rpartition("\r")[2] for line in done.split("\n")) + "\n")
            self.log.flush()
        self._pending = self._pending.rpartition("\r")[2]
        return written

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        """Never closes the terminal (absl's log handler closes the stream it took at import, on shutdown)."""

    def __getattr__(self, name: str) -> Any:             # isatty, fileno, encoding, ...: the terminal's
        return getattr(self.stream, name)


def job_log_path(config: DictConfig) -> Path:
    """Hydra's log file of the job (``hydra.job_logging``'s file handler), else ``<job dir>/<job name>.log``."""
    configured = OmegaConf.select(config, "hydra.job_logging.handlers.file.filename", default=None)
    if configured:
        return Path(str(configured))
    return Path(str(config.hydra.runtime.output_dir)) / f"{config.hydra.job.name}.log"


def record_path_of(task_cfg: Any, overrides: list[str]) -> Optional[str]:
    """Where the job's record is (None when its config cannot say: it failed before it was checked)."""
    try:
        from hizfo.run.runspec import RunSpec
        return str(RunSpec.build(OmegaConf.to_container(task_cfg, resolve=True), overrides).path)
    except Exception:                                      # noqa: BLE001 - a bad config: its error says why
        return None


def job_status(job_return: Any, record: Optional[str], started: float) -> str:
    """ok, failed, or skipped (an ok record that was there before the job started: run.py skipped it)."""
    from hydra.core.utils import JobStatus
    if job_return.status != JobStatus.COMPLETED:
        return "failed"
    if record and Path(record).is_file() and Path(record).stat().st_mtime < started:
        return "skipped"
    return "ok"


def submitit_log() -> Optional[str]:
    """The running submitit job's stderr file, if this process is one (importing submitit elsewhere would reset
    the logging set-up: its logger module calls ``logging.config.dictConfig``)."""
    if "submitit" not in sys.modules:
        return None
    try:
        import submitit
        return str(submitit.JobEnvironment().paths.stderr)
    except Exception:                                      # noqa: BLE001 - not a submitit job
        return None


def tail(path: Optional[str], lines: int = TAIL_LINES) -> list[str]:
    """The last non-empty lines of a log (none if it cannot be read)."""
    try:
        text = Path(str(path)).read_text(errors="replace")
    except OSError:
        return []
    kept = [line.rpartition("\r")[2].rstrip() for line in text.splitlines()]
    return [line for line in kept if line.strip()][-lines:]


def read_outcomes(sweep_dir: Path, since: float) -> list[JobOutcome]:
    """The status files of a sweep's jobs that started after ``since``, by job number."""
    outcomes = []
    for path in sweep_dir.rglob(STATUS_FILE):
        try:
            data = json.loads(path.read_text())
            outcome = JobOutcome(**data)
        except (OSError, ValueError, TypeError):
            continue
        if outcome.started >= since - 1:
            outcomes.append(outcome)
    return sorted(outcomes, key=lambda o: o.num)


_SUBMITTED: dict[str, Any] = {}        # submitit jobs this process submitted, by their error log's path


def note_submitted(jobs: Iterable[Any]) -> None:
    """Remember submitit jobs (hizfo/run/slurm_launcher.py), so that the summary can ask whether each ended."""
    for job in jobs:
        _SUBMITTED[str(Path(job.paths.stderr).resolve())] = job


def job_ended(err: Path) -> bool:
    """Whether submitit says the job of this error log ended; a log of a job this process cannot ask about
    (another launcher's) counts as ended, as a finished sweep's are."""
    job = _SUBMITTED.get(str(err.resolve()))
    if job is None:
        return True
    try:
        return bool(job.done())
    except Exception:                                      # noqa: BLE001 - squeue/sacct unreachable: cannot tell
        return True


def lost_jobs(sweep_dir: Path, outcomes: list[JobOutcome], since: float,
              ended: Callable[[Path], bool] = job_ended) -> list[JobOutcome]:
    """Submitit jobs that ended with an error log but no status file (killed, out of memory, a crash in Python);
    a job still running is not lost (its .err exists from its start)."""
    known = {str(Path(o.slurm_log).resolve()) for o in outcomes if o.slurm_log}
    lost = []
    for err in sorted((sweep_dir / ".submitit").glob("*/*_log.err")):
        if str(err.resolve()) in known or err.stat().st_mtime < since - 1 or not ended(err):
            continue
        lost.append(JobOutcome(num=-1, overrides=[], status="failed", slurm_log=str(err),
                               error=f"the job ended without a status (killed, or crashed): see {err.parent.name}"))
    return lost


def _short(path: Optional[str]) -> str:
    if not path:
        return "-"
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def format_summary(sweep_dir: Path, outcomes: list[JobOutcome]) -> list[str]:
    """The summary's lines: a count, then one line per job (and a failed job's error lines)."""
    counts = {s: sum(o.status == s for o in outcomes) for s in ("ok", "failed", "skipped")}
    lines = [f"sweep summary: {len(outcomes)} jobs: {counts['ok']} ok, {counts['failed']} failed, "
             f"{counts['skipped']} skipped ({_short(str(sweep_dir))})"]
    for o in outcomes:
        number = f"#{o.num}" if o.num >= 0 else "#?"
        lines.append(f"  {number:<4} {o.status:<7} {' '.join(o.overrides) or '(no overrides)'}")
        written = o.record is not None and Path(o.record).is_file()
        lines.append(f"       record: {_short(o.record)}{'' if written else ' (none written)'}")
        if o.status != "failed":
            continue
        if o.error:
            lines.append(f"       error: {o.error}")
        lines.append(f"       log: {_short(o.error_log)} (last lines):")
        lines.extend(f"       | {line}" for line in tail(o.error_log) or ["(empty)"])
    return lines


@dataclass
class SweepWatch:
    """A sweep this process submitted: where its jobs write, when it began, whether its summary was printed."""
    sweep_dir: Path
    started: float
    printed: bool = False
    failed: int = 0

    def report(self, out: TextIO = sys.stdout) -> None:
        """Print the summary (once)."""
        if self.printed:
            return
        outcomes = read_outcomes(self.sweep_dir, self.started)
        outcomes += lost_jobs(self.sweep_dir, outcomes, self.started)
        self.failed = sum(o.status == "failed" for o in outcomes)
        self.printed = True
        print("\n".join(format_summary(self.sweep_dir, outcomes)), file=out, flush=True)


_WATCHES: list[SweepWatch] = []


def sweep_active() -> bool:
    """Whether this process submitted a sweep (its summary will report the jobs' errors)."""
    return bool(_WATCHES)


def finish_sweeps(code: int) -> int:
    """Print the summary of every sweep not yet summarised; the exit status, 1 if a job failed (else ``code``)."""
    failed = 0
    while _WATCHES:
        watch = _WATCHES.pop(0)
        watch.report()
        failed += watch.failed
    return 1 if failed and code == 0 else code


def refuse_unchecked_slurm(config: DictConfig) -> None:
    """``hydra/launcher=submitit_slurm`` chosen directly: no pre-flight, requeue or timeouts. One line, exit 2."""
    target = str(OmegaConf.select(config, "hydra.launcher._target_", default="") or "")
    callbacks = OmegaConf.select(config, "hydra.callbacks", default=None) or {}
    if target.endswith("SlurmLauncher") and "slurm_preflight" not in callbacks:
        print("error: hydra/launcher=submitit_slurm: use launcher=slurm instead (it adds the pre-flight checks, "
              "the requeue settings and the timeouts; docs/slurm.md)", file=sys.stderr, flush=True)
        raise SystemExit(2)


def _reports() -> bool:
    """Whether this process logs and summarises a sweep's jobs: rank 0 of a job that several processes run
    (``torchrun run.py -m``, or a Slurm job of several tasks), and every one-process job."""
    from hizfo.core.distributed import launched_rank
    return launched_rank() == 0


class SweepSummary(_HydraCallback):
    """Hydra callback: tee each job's output into its log, record each job's outcome, summarise the sweep."""

    def __init__(self, tail_lines: int = TAIL_LINES) -> None:
        self.tail_lines = tail_lines
        self._started = 0.0
        self._streams: Optional[tuple[TextIO, TextIO, TextIO]] = None

    def __getstate__(self) -> dict[str, Any]:
        """Without the open log: submitit pickles the launcher, callbacks included, to requeue a preempted job."""
        return {**self.__dict__, "_streams": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        refuse_unchecked_slurm(config)
        if not _reports():                          # rank 0 alone reports a sweep that every rank runs
            logging.getLogger("hydra").setLevel(logging.WARNING)      # Hydra's "Launching N jobs" lines too
            return
        _WATCHES.append(SweepWatch(sweep_dir=Path(str(config.hydra.sweep.dir)), started=time.time()))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        for watch in _WATCHES:
            watch.report()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._started = time.time()
        if not _reports():
            return
        path = job_log_path(config)
        path.parent.mkdir(parents=True, exist_ok=True)
        log = open(path, "a", encoding="utf-8")           # closed in on_job_end
        self._streams = (sys.stdout, sys.stderr, log)
        sys.stdout, sys.stderr = Tee(sys.stdout, log), Tee(sys.stderr, log)  # type: ignore[assignment]

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if self._streams is not None:
            sys.stdout, sys.stderr, log = self._streams
            log.close()
            self._streams = None
        from hydra.types import RunMode
        if OmegaConf.select(config, "hydra.mode", default=None) != RunMode.MULTIRUN or not _reports():
            return
        overrides = list(job_return.overrides or [])
        record = record_path_of(job_return.cfg, overrides)
        status = job_status(job_return, record, self._started)
        error = None
        if status == "failed":
            from hizfo.errors import one_line
            error = one_line(job_return._return_value)
        outcome = JobOutcome(num=int(config.hydra.job.num), overrides=overrides, status=status, record=record,
                             error=error, log=str(job_log_path(config)), slurm_log=submitit_log(),
                             started=self._started, seconds=round(time.time() - self._started, 1))
        out = Path(str(config.hydra.runtime.output_dir)) / STATUS_FILE
        out.write_text(json.dumps(asdict(outcome), indent=1))
