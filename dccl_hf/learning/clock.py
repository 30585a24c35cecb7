"""Wall-clock readings that charge queued device work to the step that queued it."""

from __future__ import annotations

import time

import torch


def device_clock(device: torch.device) -> float:
    """`time.monotonic()` once `device` has finished its queued work: CUDA kernels run asynchronously, so a
    reading without a synchronisation would charge them to whichever later step waits for them, and the time
    budget's cost estimates (beam search vs the rest of a round) would be wrong."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.monotonic()
