"""The device a run uses, its clock (wait for queued work before a wall-clock timer reads it) and the seeding of
every generator a run draws from."""
from __future__ import annotations

import random

import numpy as np
import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a wall-clock timer around GPU work needs this at both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pick_device(choice: str) -> torch.device:
    """``auto``: CUDA when present, else CPU."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's generators from the run's seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
