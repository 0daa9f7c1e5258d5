"""The device's clock: wait for queued work before a wall-clock timer reads it."""
from __future__ import annotations

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a wall-clock timer around GPU work needs this at both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
