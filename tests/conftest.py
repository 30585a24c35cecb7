"""Shared fixtures. At import (before any test module imports huggingface_hub) the Hub client is pointed at a
loopback Hub emulator with Xet disabled and a per-session cache, so no test can reach the real Hub."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from hub_server import HubServer

if "huggingface_hub" in sys.modules:
    raise RuntimeError(
        "huggingface_hub was imported before tests/conftest.py could point it at the loopback Hub."
    )

_HUB = HubServer()
_HF_HOME = tempfile.mkdtemp(prefix="dccl_hf-tests-hf-home-")
os.environ.update(
    {
        "HF_ENDPOINT": _HUB.endpoint,
        "HF_HOME": _HF_HOME,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_TOKEN": "hf_loopback_test_token",
    }
)
for variable in (
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "TRANSFORMERS_OFFLINE",
    "HF_HUB_ENABLE_HF_TRANSFER",
):
    os.environ.pop(variable, None)


@pytest.fixture(scope="session")
def hub_server() -> Iterator[HubServer]:
    """The loopback Hub (already the client's endpoint); ``hub_server.state`` has repos, LFS objects, requests."""
    _HUB.start()
    yield _HUB
    _HUB.stop()


@pytest.fixture
def go_offline(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """A function that switches huggingface_hub to offline mode (HF_HUB_OFFLINE=1) for the rest of the test."""
    from huggingface_hub import constants

    def switch() -> None:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    return switch


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the session's Hugging Face cache."""
    shutil.rmtree(_HF_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tests use tiny tensors, which run fastest on one thread (and CI machines are small and shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
