"""Atomic, resumable checkpoints for long learning runs, in one process or data-parallel."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import socket
from pathlib import Path
from types import TracebackType
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None

import torch

from dccl_hf.files import write_file_atomic
from dccl_hf.learning.distributed import gather_rows, rank_and_size, together

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
LOCK_SUFFIX = ".lock"
#: The key under which a saved state carries the SHA-256 of its own contents.
CHECKSUM_KEY = "state_sha256"

#: Job entries that fingerprint data rather than name a setting, and what they stand for in messages.
FINGERPRINTS = {
    "matrix_sha256": "the matrix's values (matrix_sha256)",
    "weights_sum": "the row weights (weights_sum: weights, calibration or padding_idx)",
    "metric_sum": "the metric (metric_sum)",
}


class Checkpointer:
    """Keeps the latest state of a run in `directory/checkpoint.pt`, replaced atomically on every save.

    A killed process leaves either the previous checkpoint or the new one, never a torn file.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / CHECKPOINT_FILE

    def lock(self) -> RunLock:
        """The lock a run holds on this checkpoint file while it runs, so that no other process writes it."""
        return RunLock(self.path.with_suffix(LOCK_SUFFIX))

    def load(self) -> dict[str, Any] | None:
        """The last saved state (tensors on CPU), or None when there is none."""
        state = self._read(self.path)
        if state is not None:
            logger.info("Resuming from checkpoint %s", self.path)
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write `state` (tensors, numbers, strings, lists and dicts of them) atomically."""
        buffer = io.BytesIO()
        torch.save({**state, CHECKSUM_KEY: state_digest(state)}, buffer)
        write_file_atomic(self.path, buffer.getvalue())

    def _read(self, path: Path) -> dict[str, Any] | None:
        if not path.exists():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(
                f"Checkpoint {path} is unreadable ({error}); delete it to start the run over."
            ) from error
        checksum = state.pop(CHECKSUM_KEY, None) if isinstance(state, dict) else None
        if checksum is None or checksum != state_digest(state):
            raise ValueError(
                f"Checkpoint {path} is damaged or was modified (its contents do not match the checksum it was "
                "saved with); delete it to start the run over."
            )
        return state


def state_digest(value: Any) -> str:
    """SHA-256 of a checkpoint state's contents (tensors' dtypes, shapes and bytes; numbers; strings; nested
    dicts, lists and tuples in order), independent of how torch serialises them."""
    digest = hashlib.sha256()
    _update_digest(digest, value)
    return digest.hexdigest()


def _update_digest(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"tensor {data.dtype} {tuple(value.shape)};".encode())
        digest.update(memoryview(data.view(torch.uint8).numpy()))  # hashed in place, not copied
    elif isinstance(value, dict):
        digest.update(f"dict {len(value)};".encode())
        for key, item in value.items():
            _update_digest(digest, key)
            _update_digest(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__} {len(value)};".encode())
        for item in value:
            _update_digest(digest, item)
    else:
        digest.update(f"{type(value).__name__} {value!r};".encode())


class RunLock:
    """An exclusive claim of one process on a run's files: `path` is locked (`flock`) while the run holds it and
    names the holder's process id and host. The operating system drops the lock when its process dies, so the
    lock of a killed run is taken over by the next one; a live holder's lock is a clear error."""

    def __init__(self, path: str | os.PathLike[str], what: str | None = None) -> None:
        self.path = Path(path)
        self.what = what or str(self.path.parent)
        self.descriptor: int | None = None

    def __enter__(self) -> RunLock:
        if fcntl is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(descriptor, 4096).decode(errors="replace")
                os.close(descriptor)
                raise ValueError(
                    f"{self.what} is in use by another run ({_describe_holder(holder)}, lock file {self.path}); "
                    "wait for it to finish or stop it, or use another directory."
                ) from None
            except OSError as error:  # a file system without locks (some network mounts)
                os.close(descriptor)
                logger.warning(
                    "Cannot lock %s (%s): a concurrent run would not be detected.", self.path, error
                )
                return self
            if _same_file(descriptor, self.path):
                break
            os.close(descriptor)  # the holder released and removed it between our open and our lock: retry
        os.ftruncate(descriptor, 0)
        os.write(descriptor, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        self.descriptor = descriptor
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.descriptor is None:
            return
        self.path.unlink(missing_ok=True)  # while still locked, so that no other run locks the removed file
        os.close(self.descriptor)
        self.descriptor = None


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(descriptor), os.stat(path))
    except FileNotFoundError:
        return False


def _describe_holder(holder: str) -> str:
    try:
        owner = json.loads(holder)
        return f"process {owner['pid']} on {owner['host']}"
    except (ValueError, TypeError, KeyError):
        return "a process starting up"


class JobCheckpointer(Checkpointer):
    """A `Checkpointer` that stamps every state with its job (settings and data fingerprints) and refuses to
    resume a different job, or a directory holding another layout's checkpoints (one process or N ranks)."""

    def __init__(self, directory: str | os.PathLike[str], job: dict[str, Any]) -> None:
        super().__init__(directory)
        self.job = job

    def load(self) -> dict[str, Any] | None:
        state = super().load()
        if state is None:
            self._refuse_other_layouts()
        return state

    def save(self, state: dict[str, Any]) -> None:
        super().save({**state, "job": self.job})

    def _is_own(self, name: str) -> bool:
        """Whether the checkpoint file `name` belongs to this run's layout."""
        return name == self.path.name

    def _read(self, path: Path) -> dict[str, Any] | None:
        state = super()._read(path)
        if state is None:
            return None
        saved = state.get("job")
        if saved != self.job:
            if isinstance(saved, dict):
                differences = "; ".join(
                    f"{FINGERPRINTS[key]} differ"
                    if key in FINGERPRINTS
                    else f"{key}: checkpoint {saved.get(key)!r}, now {value!r}"
                    for key, value in self.job.items()
                    if saved.get(key) != value
                )
            else:
                differences = "it was not written by dccl_hf.compress"
            raise ValueError(
                f"The checkpoint {path} belongs to a different job ({differences}). Use another "
                f"checkpoint directory, or delete {self._own_files()} to start this job over."
            )
        return state

    def _own_files(self) -> str:
        """The files to delete for this job to start over, as a user would be told."""
        return str(self.path)

    def _refuse_other_layouts(self) -> None:
        """Starting over beside another layout's checkpoints would leave two runs' files mixed in one directory."""
        others = sorted(
            path.name for path in self.directory.glob("checkpoint*.pt") if not self._is_own(path.name)
        )
        if others:
            _, size = rank_and_size()
            raise ValueError(
                f"{self.directory} holds checkpoints of a run with another number of processes ({', '.join(others)}); "
                f"this run has {size}. Resume it with as many processes as wrote them, or use another directory."
            )


class ShardCheckpointer(JobCheckpointer):
    """One checkpoint file per rank of a data-parallel run, resumed at a round every rank saved.

    Ranks save independently, so a run killed while some ranks have saved a round and others not leaves them a
    round apart: each rank keeps its previous state as well, and on resume every rank loads the latest round all
    ranks have (or all start over), which becomes its latest file again. The job (including the rank, the number
    of ranks and the shard's fingerprint) is per rank.
    """

    def __init__(self, directory: str | os.PathLike[str], job: dict[str, Any], device: torch.device) -> None:
        super().__init__(directory, job)
        rank, _ = rank_and_size()
        self.path = self.directory / self._file_name(rank)
        self.previous = self.directory / self._file_name(rank, previous=True)
        self.device = device

    @staticmethod
    def _file_name(rank: int | str, *, previous: bool = False) -> str:
        """Rank `rank`'s latest (or previous) checkpoint file; rank "*" gives every rank's as a glob pattern."""
        return f"checkpoint-rank{rank}-of-{rank_and_size()[1]}{'.previous' if previous else ''}.pt"

    def load(self) -> dict[str, Any] | None:
        with together(self.device):  # a rank whose checkpoint is unreadable or another job's stops every rank
            states, files = {}, {}
            for path in (self.previous, self.path):
                state = self._read(path)
                if state is not None:
                    states[int(state["iteration"])], files[int(state["iteration"])] = state, path
            if not states:
                self._refuse_other_layouts()
        saved = torch.full((1, 2), -1, dtype=torch.int64, device=self.device)
        saved[0, : len(states)] = torch.tensor(sorted(states), dtype=torch.int64)
        every_rank = gather_rows(saved).tolist()
        common = set.intersection(*({value for value in rank if value >= 0} for rank in every_rank))
        if not common:
            if any(value >= 0 for rank in every_rank for value in rank):
                logger.warning("No round saved by every rank (%s); starting over.", every_rank)
            return None
        iteration = max(common)
        if files[iteration] == self.previous:
            # The newer round is abandoned: were it kept as the latest file, the next save would move it over
            # the round every rank resumed from.
            os.replace(self.previous, self.path)
        logger.info("Resuming every rank from round %d (%s)", iteration, self.path)
        return states[iteration]

    def save(self, state: dict[str, Any]) -> None:
        if self.path.exists():
            os.replace(self.path, self.previous)
        super().save(state)

    def _own_files(self) -> str:
        latest, previous = (
            self.directory / self._file_name("*"),
            self.directory / self._file_name("*", previous=True),
        )
        return f"every rank's files {latest} and {previous}"

    def _is_own(self, name: str) -> bool:
        """Any rank's files of a run with this number of ranks (a rank may not have saved yet when others have)."""
        return re.fullmatch(rf"checkpoint-rank\d+-of-{rank_and_size()[1]}(\.previous)?\.pt", name) is not None
