"""`is_integer`: counts and indices are ints, and a bool is not one."""

from __future__ import annotations

import numpy as np
import pytest

from dccl_hf.checks import is_integer


@pytest.mark.parametrize(("value", "expected"), [(3, True), (0, True), (-2, True), (True, False), (False, False),
                                                 (3.0, False), ("3", False), (None, False), (np.int64(3), False)])  # fmt: skip
def test_is_integer(value: object, expected: bool) -> None:
    assert is_integer(value) is expected
