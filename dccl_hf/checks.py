"""Argument checks shared across modules."""

from __future__ import annotations

import numbers
from collections.abc import Sequence


def is_integer(value: object) -> bool:
    """Whether `value` is an int and not a bool (which Python counts as an int: `True` is not a codebook count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def as_integer(value: object) -> object:
    """`value` as a Python int when it is an integer of any kind (numpy's included) other than a bool, else
    unchanged for the caller's own check to refuse: validated once at the public boundary, plain ints after."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


def is_real(value: object) -> bool:
    """Whether `value` is a real number (numpy's included) and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_words(words: Sequence[str]) -> None:
    """Raise `ValueError` unless every word is a string without a newline (so it fits one line of vocab.txt)."""
    for row, word in enumerate(words):
        if not isinstance(word, str):
            raise ValueError(f"Word at row {row} is {type(word).__name__}, not str.")
        if "\n" in word:
            raise ValueError(f"Word at row {row} ({word!r}) contains a newline, which vocab.txt cannot hold.")
