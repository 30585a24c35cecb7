"""Tiny text fixtures for tests: a word-level BERT tokenizer over a word list, random sentences of its words, and
the configuration of a tiny BERT to read them."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from transformers import BertConfig, BertTokenizerFast

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
#: A small everyday vocabulary for sentences that tiny models can tell apart.
WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "big", "red", "blue", "ran", "fast", "house", "tree"]


def word_tokenizer(directory: Path, words: Sequence[str]) -> BertTokenizerFast:
    """A BERT tokenizer whose vocabulary is the special tokens followed by `words` (vocab.txt in `directory`)."""
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join([*SPECIAL_TOKENS, *words]) + "\n", encoding="utf-8")
    return BertTokenizerFast(vocab=str(vocab))


def word_sentences(words: Sequence[str], count: int, *, seed: int = 0, max_words: int = 9) -> list[str]:
    """`count` sentences of 3 to `max_words` words drawn from `words`, reproducibly from `seed`."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(words, k=rng.randint(3, max_words))) for _ in range(count)]


def bert_config(vocab_size: int, **overrides: object) -> BertConfig:
    """A one-layer BERT of width 16 (2 heads, feed-forward 32, 32 positions), with `overrides` applied."""
    settings: dict[str, object] = {
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 32,
    }
    return BertConfig(vocab_size=vocab_size, **(settings | overrides))
