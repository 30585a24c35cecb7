"""Argument checks shared across modules."""

from __future__ import annotations


def is_integer(value: object) -> bool:
    """Whether `value` is an int and not a bool (which Python counts as an int: `True` is not a codebook count)."""
    return isinstance(value, int) and not isinstance(value, bool)
