"""Crash-safe writes: files that belong together are all written before any replaces its predecessor."""

from __future__ import annotations

from pathlib import Path

import pytest

from dccl_hf.files import write_files_atomic


def test_files_replace_their_predecessors_together(tmp_path: Path) -> None:
    first, second = tmp_path / "a.codebook.npy", tmp_path / "a.codes"
    first.write_bytes(b"old codebook")
    second.write_bytes(b"old codes")
    write_files_atomic({first: b"new codebook", second: b"new codes"})
    assert (first.read_bytes(), second.read_bytes()) == (b"new codebook", b"new codes")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.codebook.npy", "a.codes"]


def test_a_failed_write_changes_nothing_and_leaves_no_temporaries(tmp_path: Path) -> None:
    first = tmp_path / "a.codebook.npy"
    first.write_bytes(b"old codebook")
    blocker = tmp_path / "not-a-directory"
    blocker.write_bytes(b"")
    with pytest.raises(FileExistsError):
        write_files_atomic({first: b"new codebook", blocker / "a.codes": b"new codes"})
    assert first.read_bytes() == b"old codebook"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.codebook.npy", "not-a-directory"]
