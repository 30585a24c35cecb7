"""Fault suite for artifacts: a save killed (SIGKILL) at each of its renames and fsyncs leaves the old or the new
artifact, complete, and nothing behind once loaded; corrupted config.json and model.safetensors (random bit flips
and truncations) are always an `ArtifactError` naming the file, or an identical load, never a different module."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dccl_hf import CompressedEmbedding, cli, files
from dccl_hf.artifacts import CONFIG_NAME, WEIGHTS_NAME, ArtifactError
from dccl_hf.formats import save_reference
from dccl_hf.readers import load_vocab

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="kills forked children (POSIX only)")

#: The write points a save passes: every one is a place to be killed at.
WRITE_POINTS = ("rename", "replace", "fsync")
CHILD_TIMEOUT = 120.0


def make_module(seed: int, num_embeddings: int = 30) -> CompressedEmbedding:
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(16, (num_embeddings, 3), generator=generator)
    return CompressedEmbedding.from_codes(codes, torch.randn(3, 16, 4, generator=generator), padding_idx=seed)


def same(first: CompressedEmbedding, second: CompressedEmbedding) -> bool:
    return (
        torch.equal(first.packed_codes, second.packed_codes)
        and torch.equal(first.codebook, second.codebook)
        and first.codebook.dtype == second.codebook.dtype
        and first.padding_idx == second.padding_idx
    )


def killed_at(point: int, action: Callable[[], None], *, exchange: bool) -> bool:
    """Run `action` in a forked child that SIGKILLs itself instead of making its `point`-th rename, replace,
    directory swap or fsync; True if it was killed, False if it finished with fewer write points."""
    child = os.fork()
    if child == 0:  # pragma: no cover (the child never returns to pytest)
        try:
            counter = itertools.count(1)

            def lethal(original: Callable[..., Any]) -> Callable[..., Any]:
                def call(*args: Any, **kwargs: Any) -> Any:
                    if next(counter) == point:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return original(*args, **kwargs)

                return call

            for name in WRITE_POINTS:
                setattr(os, name, lethal(getattr(os, name)))
            files._rename_exchange = lethal(
                files._rename_exchange if exchange else lambda first, second: False
            )
            action()
            os._exit(0)
        except BaseException:
            os._exit(1)
    deadline = time.monotonic() + CHILD_TIMEOUT
    while (status := os.waitpid(child, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            pytest.fail(f"the save killed at write point {point} hung")
        time.sleep(0.01)
    if os.WIFSIGNALED(status[1]):
        assert os.WTERMSIG(status[1]) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status[1]) == 0, f"the save failed at write point {point} instead of being killed"
    return False


def kill_at_every_write_point(
    reset: Callable[[], None], action: Callable[[], None], check: Callable[[], str], *, exchange: bool
) -> list[str]:
    """Kill `action` at write point 1, 2, … until it completes; after each run, `check` says which artifact
    the directory holds. Returns those answers, one per write point and one for the completed run."""
    outcomes = []
    point = 0
    while True:
        point += 1
        reset()
        was_killed = killed_at(point, action, exchange=exchange)
        outcomes.append(check())
        if not was_killed:
            return outcomes


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "two-renames"])
def test_save_pretrained_killed_at_any_write_point_leaves_old_or_new(tmp_path: Path, exchange: bool) -> None:
    directory = tmp_path / "artifact"
    old, new = make_module(seed=1), make_module(seed=2, num_embeddings=50)

    def reset() -> None:
        shutil.rmtree(directory, ignore_errors=True)
        old.save_pretrained(directory)

    def check() -> str:
        loaded = CompressedEmbedding.from_pretrained(directory)  # recovers, then loads strictly
        assert [path.name for path in tmp_path.iterdir()] == ["artifact"], "a save left files behind"
        assert sorted(path.name for path in directory.iterdir()) == ["README.md", CONFIG_NAME, WEIGHTS_NAME]
        return "old" if same(loaded, old) else "new" if same(loaded, new) else "neither"

    outcomes = kill_at_every_write_point(
        reset, lambda: new.save_pretrained(directory), check, exchange=exchange
    )
    assert len(outcomes) > 10
    assert set(outcomes) == {"old", "new"}
    assert outcomes[-1] == "new"
    assert outcomes == sorted(outcomes, key=["old", "new"].index), (
        "a later kill went back to the old artifact"
    )


def test_cli_import_overwrite_killed_at_any_write_point_pairs_codes_with_their_words(tmp_path: Path) -> None:
    output = tmp_path / "out" / "artifact"
    references = {}
    for name, seed in (("old", 1), ("new", 2)):
        references[name] = (make_module(seed), [f"{name}{row}" for row in range(30)])
        save_reference(references[name][0], tmp_path / name, words=references[name][1])

    def import_(name: str, *extra: str) -> None:
        code = cli.main(["import", str(tmp_path / name), "-o", str(output), "--codebook-size", "16", *extra])
        assert code == 0

    def reset() -> None:
        shutil.rmtree(output.parent, ignore_errors=True)
        import_("old")

    def check() -> str:
        loaded = CompressedEmbedding.from_pretrained(output)
        # The -o lock of a killed run stays (empty, unlocked by the OS) for the next run to take over.
        left = sorted(path.name for path in output.parent.iterdir() if path.name != ".artifact.dccl-hf.lock")
        assert left == ["artifact"], "a save left files behind"
        for name, (module, words) in references.items():
            if torch.equal(loaded.packed_codes, module.packed_codes):
                assert load_vocab(output) == words, "codes of one artifact with the words of another"
                return name
        return "neither"

    outcomes = kill_at_every_write_point(reset, lambda: import_("new", "--overwrite"), check, exchange=True)
    assert set(outcomes) == {"old", "new"}
    assert outcomes[-1] == "new"


@pytest.fixture(scope="module")
def pristine() -> tuple[CompressedEmbedding, dict[str, bytes]]:
    module = make_module(seed=3)
    with tempfile.TemporaryDirectory() as directory:
        module.save_pretrained(directory)
        return module, {name: (Path(directory) / name).read_bytes() for name in (CONFIG_NAME, WEIGHTS_NAME)}


def load_corrupted(pristine: tuple[CompressedEmbedding, dict[str, bytes]], name: str, data: bytes) -> None:
    """Write the artifact with `name` replaced by `data`: its load must fail naming `name`, or be identical."""
    module, contents = pristine
    with tempfile.TemporaryDirectory() as directory:
        for filename, original in contents.items():
            (Path(directory) / filename).write_bytes(data if filename == name else original)
        try:
            loaded = CompressedEmbedding.from_pretrained(directory)
        except ArtifactError as error:
            problem = str(error)
        else:
            assert same(loaded, module), f"a corrupted {name} loaded as a different module"
            return
    assert name in problem, f"the error does not name {name}: {problem}"


FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(name=st.sampled_from([CONFIG_NAME, WEIGHTS_NAME]), data=st.data())
def test_a_bit_flip_is_an_error_naming_the_file_or_harmless(
    pristine: tuple[CompressedEmbedding, dict[str, bytes]], name: str, data: st.DataObject
) -> None:
    original = pristine[1][name]
    header_end = 8 + int.from_bytes(original[:8], "little") if name == WEIGHTS_NAME else len(original)
    bit = data.draw(st.integers(0, 8 * header_end - 1) | st.integers(0, 8 * len(original) - 1), label="bit")
    corrupted = bytearray(original)
    corrupted[bit // 8] ^= 1 << (bit % 8)
    load_corrupted(pristine, name, bytes(corrupted))


@FAST
@given(name=st.sampled_from([CONFIG_NAME, WEIGHTS_NAME]), data=st.data())
def test_a_truncation_is_an_error_naming_the_file_or_harmless(
    pristine: tuple[CompressedEmbedding, dict[str, bytes]], name: str, data: st.DataObject
) -> None:
    original = pristine[1][name]
    length = data.draw(st.integers(0, len(original) - 1), label="length")
    load_corrupted(pristine, name, original[:length])
