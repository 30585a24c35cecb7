"""Tiny text fixtures for tests: a word-level BERT tokenizer over a word list, and random sentences of its words."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from transformers import BertTokenizerFast

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def word_tokenizer(directory: Path, words: Sequence[str]) -> BertTokenizerFast:
    """A BERT tokenizer whose vocabulary is the special tokens followed by `words` (vocab.txt in `directory`)."""
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join([*SPECIAL_TOKENS, *words]) + "\n", encoding="utf-8")
    return BertTokenizerFast(vocab=str(vocab))


def word_sentences(words: Sequence[str], count: int, *, seed: int = 0, max_words: int = 9) -> list[str]:
    """`count` sentences of 3 to `max_words` words drawn from `words`, reproducibly from `seed`."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(words, k=rng.randint(3, max_words))) for _ in range(count)]
