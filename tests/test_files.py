"""Crash-safe writes: files that belong together are all written before any replaces its predecessor; a
staged directory replaces its target whole, and what a crash leaves is restored or deleted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dccl_hf import files
from dccl_hf.files import recover_directory, staged_directory, write_files_atomic


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


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def make_version(directory: Path, text: str) -> Path:
    directory.mkdir()
    (directory / "config.json").write_text(text)
    return directory


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "two-renames"])
def test_a_staged_directory_replaces_its_target_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:
        monkeypatch.setattr(files, "_rename_exchange", lambda first, second: False)
    target = tmp_path / "artifact"
    for version in ("old", "new"):
        with staged_directory(target, replaceable={"config.json", "vocab.txt"}) as staging:
            (staging / "config.json").write_text(version)
        if version == "old":
            (target / "vocab.txt").write_text("stale")
            (target / "notes.txt").write_text("kept")
    assert sorted(path.name for path in target.iterdir()) == ["config.json", "notes.txt"]
    assert (target / "config.json").read_text() == "new"
    assert [path.name for path in tmp_path.iterdir()] == ["artifact"]


def test_a_save_nested_in_a_staging_writes_into_it(tmp_path: Path) -> None:
    with staged_directory(tmp_path / "artifact") as outer:
        with staged_directory(outer) as inner:
            assert inner == outer
            (inner / "config.json").write_text("x")
        assert sorted(path.name for path in tmp_path.iterdir()) == [outer.name]
    assert (tmp_path / "artifact" / "config.json").read_text() == "x"


def test_recovery_restores_a_complete_version_and_deletes_what_crashes_left(tmp_path: Path) -> None:
    target = tmp_path / "artifact"
    pid = dead_pid()
    make_version(tmp_path / f".artifact.{pid}-{'a' * 12}.ready", "new")
    make_version(tmp_path / f".artifact.{pid}-{'a' * 12}.old", "old")
    make_version(tmp_path / f".artifact.{pid}-{'b' * 12}.staging", "partial")
    make_version(tmp_path / f".artifact.{'c' * 12}.tmp", "earlier dccl_hf staging")
    live = make_version(tmp_path / f".artifact.{os.getpid()}-{'d' * 12}.staging", "being written")
    foreign = [
        make_version(tmp_path / f".other.{pid}-{'a' * 12}.ready", "another target's"),
        make_version(tmp_path / f".artifact.{pid}-{'a' * 12}.ready.bak", "not our name"),
    ]
    recover_directory(target)
    assert (target / "config.json").read_text() == "new"
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["artifact", live.name, *(path.name for path in foreign)]
    )
    recover_directory(target)  # with the target present, leftovers are deleted, never promoted
    assert (target / "config.json").read_text() == "new"


def test_recovery_falls_back_to_the_old_version(tmp_path: Path) -> None:
    make_version(tmp_path / f".artifact.{dead_pid()}-{'a' * 12}.old", "old")
    recover_directory(tmp_path / "artifact")
    assert (tmp_path / "artifact" / "config.json").read_text() == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["artifact"]


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "two-renames"])
def test_a_failed_publish_keeps_the_old_version_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    target = make_version(tmp_path / "artifact", "old")
    rename = os.rename

    def fail(*args: object) -> bool:
        raise OSError("disk gone")

    def refuse_the_last_step(source: object, destination: object) -> None:
        if Path(destination) == target and Path(source).name.endswith(".ready"):
            fail()
        rename(source, destination)

    if exchange:
        monkeypatch.setattr(files, "_rename_exchange", fail)
    else:
        monkeypatch.setattr(files, "_rename_exchange", lambda first, second: False)
        monkeypatch.setattr(os, "rename", refuse_the_last_step)
    with (
        pytest.raises(OSError, match="disk gone"),
        staged_directory(target, replaceable={"config.json"}) as staging,
    ):
        (staging / "config.json").write_text("new")
    assert (target / "config.json").read_text() == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["artifact"]


def test_a_mount_point_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = make_version(tmp_path / "volume", "old")
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == target)
    with pytest.raises(ValueError, match="mount point"), staged_directory(target):
        pytest.fail("staged a directory that cannot replace its target")
    assert [path.name for path in tmp_path.iterdir()] == ["volume"]
