"""Learning checkpoints under faults: a kill at every write point resumes to the uninterrupted result, a modified
checkpoint is refused naming its file, and one run at a time holds a checkpoint directory."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dccl_hf.learning import compress
from dccl_hf.learning.checkpoint import Checkpointer, RunLock

# Runs in a fresh interpreter: the uninterrupted run counts the fsync and rename calls, then for each K a forked
# child (single-threaded parent, so forking is safe) is killed with SIGKILL just before its K-th call, and another
# child resumes from what it left.
KILL_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    import torch
    from dccl_hf.learning import compress

    directory, method = sys.argv[1], sys.argv[2]
    iterations = {"additive": 3, "dccl": 4}[method]
    torch.set_num_threads(1)  # no thread pool in the parent, so forking after computing is safe
    calls = [0]
    kill_at = [0]

    def counting(real):
        def wrapper(*args, **kwargs):
            calls[0] += 1
            if calls[0] == kill_at[0]:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        return wrapper

    os.fsync, os.replace, os.rename = (counting(call) for call in (os.fsync, os.replace, os.rename))

    def learn(checkpoint_dir):
        matrix = torch.randn(96, 6, generator=torch.Generator().manual_seed(0))
        return compress(matrix, 3, 8, method=method, max_iterations=iterations, checkpoint_dir=checkpoint_dir,
                        progress=False, device="cpu")

    def in_child(checkpoint_dir, kill, result=None):
        pid = os.fork()
        if pid:
            return os.waitpid(pid, 0)[1]
        calls[0], kill_at[0] = 0, kill
        module = learn(checkpoint_dir)
        if result is not None:
            torch.save({"codes": module.codes, "codebook": module.codebook.detach()}, result)
        os._exit(0)

    expected = learn(os.path.join(directory, "reference"))  # also imports what the children's runs need
    write_points = calls[0]
    killed = []
    for kill in range(1, write_points + 1):
        checkpoint_dir = os.path.join(directory, f"run{kill}")
        killed.append(os.WIFSIGNALED(in_child(checkpoint_dir, kill)))
        result = os.path.join(directory, f"result{kill}.pt")
        assert in_child(checkpoint_dir, 0, result) == 0, kill
        resumed = torch.load(result)
        assert torch.equal(resumed["codes"], expected.codes), kill
        assert torch.equal(resumed["codebook"], expected.codebook.detach()), kill
    print(json.dumps({"write_points": write_points, "killed": killed}))
    """
)


@pytest.mark.parametrize("method", ["additive", "dccl"])
def test_a_kill_at_every_checkpoint_write_resumes_to_the_same_result(method: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(tmp_path), method],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["write_points"] >= 6  # fsync and rename of each checkpoint save, and the directory's fsync
    assert all(report["killed"])


def small_run(checkpoint_dir: Path | str, **options: Any) -> Any:
    matrix = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    arguments: dict[str, Any] = {"max_iterations": 1, "progress": False, "device": "cpu", **options}
    return compress(matrix, 2, 4, checkpoint_dir=checkpoint_dir, **arguments)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda state: state.pop("codes"),
        lambda state: state.update(codebook=torch.zeros(1, 4)),
        lambda state: state.update(iteration=7),
    ],
)
def test_a_modified_checkpoint_is_refused_naming_its_file(tamper: Any, tmp_path: Path) -> None:
    small_run(tmp_path)
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    tamper(state)
    torch.save(state, path)
    with pytest.raises(ValueError, match=f"Checkpoint {path} is damaged or was modified"):
        small_run(tmp_path, max_iterations=2)


def test_a_checkpoint_without_its_checksum_is_refused(tmp_path: Path) -> None:
    torch.save({"iteration": 1}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="damaged or was modified"):
        Checkpointer(tmp_path).load()


@pytest.mark.parametrize("directory", ["", "  "])
def test_an_empty_checkpoint_dir_is_refused(
    directory: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="is empty; give a directory"):
        small_run(directory)
    assert list(tmp_path.iterdir()) == []


def test_a_file_as_checkpoint_dir_fails_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dccl_hf.learning as learning

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the matrix was read before checkpoint_dir was checked")

    monkeypatch.setattr(learning, "load_matrix", no_work)
    (tmp_path / "file").write_text("")
    for directory in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(ValueError, match="exists and is not a directory"):
            small_run(directory)


def test_a_live_run_holds_its_checkpoint_directory(tmp_path: Path) -> None:
    with RunLock(tmp_path / "checkpoint.lock"):  # another run of this directory, still running
        with pytest.raises(ValueError, match=rf"{tmp_path} is in use by another run \(process {os.getpid()}"):
            small_run(tmp_path)
        with pytest.raises(ValueError, match="in use by another run"):
            small_run(tmp_path, seed=3)  # a different job would overwrite its checkpoint
    assert not (tmp_path / "checkpoint.pt").exists()
    small_run(tmp_path)  # released: the directory is free again, and the lock file is gone
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_the_lock_of_a_dead_run_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (tmp_path / "checkpoint.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": "here"}))
    module = small_run(tmp_path)
    assert np.isfinite(module.codebook.detach().numpy()).all()
    assert not (tmp_path / "checkpoint.lock").exists()


def test_a_file_system_without_locks_runs_unlocked_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import errno
    import fcntl

    def no_locks(*args: object) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING, logger="dccl_hf"):
        small_run(tmp_path)
    assert "a concurrent run would not be detected" in caplog.text
    assert (tmp_path / "checkpoint.pt").is_file()
