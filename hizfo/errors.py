"""Errors that mean "the user asked for something that cannot work": run.py prints them as one line."""


class ConfigError(ValueError):
    """A config value is out of range or names something that does not exist."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"loss is {loss} at step {step}: training stopped")
        self.step = step
        self.loss = loss
