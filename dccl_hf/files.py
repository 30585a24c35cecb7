"""Crash-safe file writes: everything dccl_hf writes lands by rename, never half-written."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

# Published last when a staged directory replaces an existing one: it describes (and checksums) the rest.
LAST_FILE = "config.json"


def sibling_temporary(path: Path) -> Path:
    """A fresh hidden name next to `path`, for staging it."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def write_file_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to a temporary file next to `path`, flush it to disk and rename it into place."""
    write_files_atomic({path: data})


def write_files_atomic(contents: dict[str | os.PathLike[str], bytes]) -> None:
    """Write every file to a temporary next to it and flush them all to disk, then rename them into place one
    after the other (in the given order), so files that belong together are replaced within moments of each
    other and never half-written; the renames are made durable.

    Files get the usual permissions (0o666 less the umask), unlike ``tempfile.mkstemp``'s private 0o600.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for name, data in contents.items():
            path = Path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = sibling_temporary(path)
            staged.append((temporary, path))
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        for temporary, path in staged:
            os.replace(temporary, path)
        for directory in {path.parent for _, path in staged}:
            fsync_directory(directory)
    except BaseException:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
        raise


def fsync_directory(directory: Path) -> None:
    """Make renames inside `directory` durable (POSIX only; elsewhere directories cannot be opened)."""
    if os.name != "posix":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def staged_directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory next to `target`; on success publish its files into `target`.

    A new `target` appears in one rename. An existing one keeps its other files; each staged file replaces its
    namesake by ``os.replace`` once every staged file is complete, ``config.json`` last (it records the SHA-256 of
    the weights, so a crash between two renames is caught at load time). On error nothing in `target` changes.
    """
    target = Path(target).resolve()
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"cannot save an artifact to {target}: it exists and is not a directory.")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = sibling_temporary(target)
    staging.mkdir()
    try:
        yield staging
        names = sorted(path.name for path in staging.iterdir())
        for name in names:
            with open(staging / name, "rb") as file:
                os.fsync(file.fileno())
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():
                raise
            for name in sorted(names, key=lambda name: name == LAST_FILE):
                os.replace(staging / name, target / name)
        fsync_directory(target)
        logger.info("Saved %s to %s", ", ".join(names), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_chunks_atomic(path: str | os.PathLike[str], chunks: Iterable[bytes]) -> None:
    """Like `write_file_atomic` for a file too large to hold in memory: the chunks are written as they come."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = sibling_temporary(path)
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(descriptor, "wb") as file:
            for chunk in chunks:
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        fsync_directory(path.parent)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
