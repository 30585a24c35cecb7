"""Crash-safe file writes: everything dccl_hf writes lands by rename, never half-written.

A directory (an artifact) is replaced whole. Its new version is written into a hidden sibling
``.NAME.<pid>-<hex>.staging``, flushed, renamed ``….ready`` (complete), then swapped with ``NAME`` in one
``renameat2(RENAME_EXCHANGE)`` where the system has it; elsewhere ``NAME`` is renamed ``….old`` and ``….ready``
renamed ``NAME``. A version on its way out is renamed ``….trash`` before it is deleted. So ``NAME`` holds a
complete old or new version at every instant, except between the two renames of the fallback, when a complete
``….ready`` is waiting: :func:`recover_directory` (run by every save and load) renames it into place and deletes
what crashed processes left behind.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import re
import secrets
import shutil
import stat
import sys
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

STAGING, READY, OLD, TRASH = "staging", "ready", "old", "trash"
# Linux <linux/fcntl.h> and <linux/fs.h>.
AT_FDCWD = -100
RENAME_EXCHANGE = 2
# Directories that a save of the same target is writing right now: a save nested in another writes into them.
_active_stagings: set[Path] = set()


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
def staged_directory(target: str | Path, *, replaceable: Collection[str] = ()) -> Iterator[Path]:
    """Yield an empty staging directory next to `target`; on success it replaces `target` whole.

    Entries of an existing `target` named in `replaceable` belong to the version being replaced and go with it;
    its other files and symbolic links are carried into the new version (hard links), and another
    subdirectory is an error raised before anything is written. On error `target` is unchanged. A save into
    a directory that another save is staging writes into it directly (the outer save publishes it).
    """
    target = Path(target).resolve()
    if target in _active_stagings:
        yield target
        return
    recover_directory(target)
    check_replaceable(target, replaceable)
    target.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{secrets.token_hex(6)}"
    staging = _sibling(target, STAGING, token)
    staging.mkdir()
    _active_stagings.add(staging)
    try:
        yield staging
        _carry_over(target, staging, replaceable)
        _publish(staging, target, token)
    finally:  # after a failed publish: the unpublished (or, past the swap, the replaced) version
        _active_stagings.discard(staging)
        for leftover in (staging, _sibling(target, READY, token)):
            shutil.rmtree(leftover, ignore_errors=True)


def _sibling(target: Path, state: str, token: str) -> Path:
    return target.with_name(f".{target.name}.{token}.{state}")


def check_replaceable(target: Path, replaceable: Collection[str]) -> None:
    """Refuse, before anything is written, a target that cannot be replaced whole without losing something:
    a file, a mount point, the working directory, or a directory holding a subdirectory not in `replaceable`."""
    if not target.exists():
        return
    if not target.is_dir():
        raise NotADirectoryError(f"cannot save an artifact to {target}: it exists and is not a directory.")
    if os.path.ismount(target):
        raise ValueError(
            f"cannot save an artifact to {target}: it is a mount point, which cannot be renamed, and an artifact "
            "directory is replaced whole; save into a subdirectory instead."
        )
    cwd = Path.cwd().resolve()
    if cwd == target or target in cwd.parents:
        raise ValueError(
            f"cannot save an artifact to {target}: it is (or holds) the working directory, and an artifact "
            "directory is replaced whole; save into a subdirectory instead."
        )
    for entry in os.scandir(target):
        if entry.name not in replaceable and entry.is_dir(follow_symlinks=False):
            raise IsADirectoryError(
                f"cannot save an artifact to {target}: it holds the directory {entry.name!r}, which is not part "
                "of an artifact, and an artifact directory is replaced whole; move it out or save elsewhere."
            )


def _carry_over(target: Path, staging: Path, replaceable: Collection[str]) -> None:
    """Hard-link the files of `target` that are not replaceable and not written anew into `staging`."""
    if not target.is_dir():
        return
    for entry in os.scandir(target):
        if entry.name in replaceable or (staging / entry.name).exists():
            continue
        if entry.is_dir(follow_symlinks=False):
            raise IsADirectoryError(f"{entry.path} appeared during the save; nothing was replaced.")
        try:
            os.link(entry.path, staging / entry.name, follow_symlinks=False)
        except (OSError, NotImplementedError):  # no hard links here (or none to symbolic links)
            shutil.copy2(entry.path, staging / entry.name, follow_symlinks=False)


def _publish(staging: Path, target: Path, token: str) -> None:
    """Flush `staging`, mark it complete, then put it in `target`'s place and delete the version it replaces."""
    for entry in os.scandir(staging):
        if entry.is_file(follow_symlinks=False):
            with open(entry.path, "rb") as file:
                os.fsync(file.fileno())
    if target.is_dir():
        os.chmod(staging, stat.S_IMODE(target.stat().st_mode))
    fsync_directory(staging)
    ready = _sibling(target, READY, token)
    os.rename(staging, ready)
    fsync_directory(target.parent)
    trash = _sibling(target, TRASH, token)
    if not target.exists():
        os.rename(ready, target)
    elif _rename_exchange(ready, target):
        os.rename(ready, trash)
    else:
        old = _sibling(target, OLD, token)
        os.rename(target, old)
        try:
            fsync_directory(target.parent)
            os.rename(ready, target)
        except BaseException:
            os.rename(old, target)  # the old version goes back
            raise
        os.rename(old, trash)
    fsync_directory(target.parent)
    shutil.rmtree(trash, ignore_errors=True)
    logger.info("Saved %s to %s", ", ".join(sorted(os.listdir(target))), target)


def _rename_exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2``); False where the system or file system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(error, os.strerror(error), str(first), None, str(second))


@functools.cache
def _renameat2() -> ctypes._CFuncPtr | None:
    """glibc's ``renameat2`` (2.28 and later), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


def recover_directory(target: str | Path) -> None:
    """Finish or discard replacements of `target` that a crash interrupted; best effort, never raises.

    Only hidden siblings named by :func:`staged_directory` whose process is gone are touched (and
    ``.NAME.<hex>.tmp`` directories, the staging of earlier dccl_hf versions). If `target` is missing, the
    newest complete version (``ready``, else ``old``) is renamed into its place; every other leftover is deleted.
    """
    try:
        target = Path(target).resolve()
        leftovers = _crash_leftovers(target)
        if not leftovers:
            return
        if not target.exists():
            complete = [path for path, state in leftovers if state == READY] or [
                path for path, state in leftovers if state == OLD
            ]
            if complete:
                newest = max(complete, key=lambda path: path.stat().st_mtime_ns)
                os.rename(newest, target)
                fsync_directory(target.parent)
                logger.warning("Restored %s from %s, left by an interrupted save.", target, newest.name)
                leftovers = [(path, state) for path, state in leftovers if path != newest]
        for path, state in leftovers:
            if state in (READY, OLD):  # never leave a half-deleted version under a name that gets restored
                trash = path.with_name(path.name.removesuffix(state) + TRASH)
                os.rename(path, trash)
                path = trash
            shutil.rmtree(path)
            logger.info("Deleted %s, left by an interrupted save.", path)
    except (OSError, ValueError) as error:  # ValueError: a path no file system accepts
        logger.warning("Could not clean up after an interrupted save of %s: %s", target, error)


def _crash_leftovers(target: Path) -> list[tuple[Path, str]]:
    """The siblings of `target` that interrupted saves left, with their state, skipping those of live saves."""
    pattern = re.compile(
        re.escape(f".{target.name}.")
        + rf"(?:(?P<pid>\d+)-[0-9a-f]{{12}}\.(?P<state>{STAGING}|{READY}|{OLD}|{TRASH})|[0-9a-f]{{12}}\.tmp)"
    )
    if not target.parent.is_dir():
        return []
    leftovers = []
    for entry in os.scandir(target.parent):
        match = pattern.fullmatch(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        pid = match["pid"]
        if pid is not None and _process_alive(int(pid)):
            continue
        leftovers.append((Path(entry.path), match["state"] or STAGING))
    return leftovers


def _process_alive(pid: int) -> bool:
    """Whether process `pid` may still be running (always True where that cannot be asked safely)."""
    if os.name != "posix" or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, under another user
        return True
    return True


def open_together(directory: Path, names: Sequence[str]) -> dict[str, BinaryIO | None]:
    """Open the files `names` of `directory` for reading, all from the same version of a directory replaced
    whole by :func:`staged_directory`, so that a concurrent save never pairs an old file with a new one.

    A name that is not a regular file maps to None. Files are opened relative to one handle on the directory;
    if one is missing because a save swapped that version out meanwhile, all are opened again.
    """
    if os.open not in os.supports_dir_fd:
        return {name: _open_regular(directory / name) for name in names}
    for _ in range(9):
        version, files = _open_version(directory, names)
        if all(files.values()) or _same_file(version, directory):
            return files
        for file in files.values():
            if file is not None:
                file.close()
    return _open_version(directory, names)[1]


def _open_version(directory: Path, names: Sequence[str]) -> tuple[os.stat_result, dict[str, BinaryIO | None]]:
    """The directory's identity and its files `names`, opened relative to one handle on it."""
    descriptor = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        return os.fstat(descriptor), {name: _open_regular(name, descriptor) for name in names}
    finally:
        os.close(descriptor)


def _open_regular(path: str | Path, dir_fd: int | None = None) -> BinaryIO | None:
    try:
        descriptor = os.open(path, os.O_RDONLY, dir_fd=dir_fd)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        return None
    return os.fdopen(descriptor, "rb")


def _same_file(status: os.stat_result, path: Path) -> bool:
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    return (current.st_dev, current.st_ino) == (status.st_dev, status.st_ino)


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
