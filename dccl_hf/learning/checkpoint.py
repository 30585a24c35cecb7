"""Atomic, resumable checkpoints for long learning runs."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import torch

from dccl_hf.files import write_file_atomic

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"


class Checkpointer:
    """Keeps the latest state of a run in `directory/checkpoint.pt`, replaced atomically on every save.

    A killed process leaves either the previous checkpoint or the new one, never a torn file.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / CHECKPOINT_FILE

    def load(self) -> dict[str, Any] | None:
        """The last saved state (tensors on CPU), or None when there is none."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(
                f"Checkpoint {self.path} is unreadable ({error}); delete it to start the run over."
            ) from error
        logger.info("Resuming from checkpoint %s", self.path)
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write `state` (tensors, numbers, strings, lists and dicts of them) atomically."""
        buffer = io.BytesIO()
        torch.save(state, buffer)
        write_file_atomic(self.path, buffer.getvalue())
