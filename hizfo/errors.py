"""Errors that mean "the user asked for something that cannot work": run.py prints them as one line."""


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``: how a failure is named in a record and on the console."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


class ConfigError(ValueError):
    """A config value is out of range or names something that does not exist."""


class PeerFailed(RuntimeError):
    """Another rank failed a step every rank takes (writing its part of a checkpoint): this rank stops too. Rank 0
    leaves a failed record naming that rank's error, and the failed rank's note (hizfo/run/rank_failures.py) adds
    its traceback where it could be written."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite, or stayed far above where it started (``divergence_factor``)."""

    def __init__(self, step: int, loss: float, reason: str = "is not finite"):
        super().__init__(f"diverged: training loss {loss:.4g} at step {step} {reason}; training stopped")
        self.step = step
        self.loss = loss
