"""Tests for calibration row weights: frequent rows weigh more, unseen rows stay positive, inputs are validated."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_text import word_tokenizer
from transformers import BertTokenizerFast

from dccl_hf.fidelity.calibration import (
    calibration_texts,
    row_weights_from_calibration,
    token_counts,
    weights_from_counts,
    word_counts,
    zipf_weights,
)

WORDS = ["the", "cat", "dog", "sat", "on", "mat", "a", "big", "red", "unseen", "never"]
TEXTS = ["the cat sat on the mat", "the dog sat on a mat", "the big red dog", "the cat"]


@pytest.fixture
def tokenizer(tmp_path: Path) -> BertTokenizerFast:
    return word_tokenizer(tmp_path, WORDS)


def test_counts_include_special_tokens_and_words(tokenizer: BertTokenizerFast) -> None:
    counts = token_counts(tokenizer, TEXTS, len(tokenizer), progress=False)
    assert counts[tokenizer.convert_tokens_to_ids("the")] == 5
    assert counts[tokenizer.cls_token_id] == len(TEXTS)
    assert counts[tokenizer.sep_token_id] == len(TEXTS)
    assert counts[tokenizer.convert_tokens_to_ids("unseen")] == 0
    assert counts.sum() == sum(len(tokenizer(text)["input_ids"]) for text in TEXTS)


def test_weights_favour_frequent_tokens_and_keep_unseen_positive(tokenizer: BertTokenizerFast) -> None:
    weights = row_weights_from_calibration(tokenizer, TEXTS, len(tokenizer), progress=False)
    ids = tokenizer.convert_tokens_to_ids(["the", "cat", "big", "unseen"])
    the, cat, big, unseen = (float(weights[i]) for i in ids)
    assert the > cat > big > unseen > 0
    assert weights.dtype == torch.float32
    assert torch.isclose(weights.mean(), torch.tensor(1.0))


def test_all_calibration_forms_give_the_same_weights(tokenizer: BertTokenizerFast, tmp_path: Path) -> None:
    vocab_size = len(tokenizer)
    expected = row_weights_from_calibration(tokenizer, TEXTS, vocab_size, progress=False)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n\n", encoding="utf-8")
    counts = token_counts(tokenizer, iter(TEXTS), vocab_size, progress=False)
    mapping = {i: int(c) for i, c in enumerate(counts.tolist()) if c}
    for calibration in (corpus, str(corpus), mapping, counts, counts.to(torch.int32)):
        weights = row_weights_from_calibration(tokenizer, calibration, vocab_size, progress=False)
        torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(
        row_weights_from_calibration(None, mapping, vocab_size, progress=False), expected
    )


def test_default_weights_are_smoothed_counts_to_the_three_quarters_normalised() -> None:
    counts = torch.tensor([0.0, 3.0, 1.0, 0.0, 7.0, 1.0])
    flattened = (counts + 1.0) ** 0.75
    torch.testing.assert_close(weights_from_counts(counts), flattened / flattened.mean())


def test_power_flattens_and_smoothing_lifts_unseen_rows() -> None:
    counts = torch.tensor([1000.0, 10.0, 0.0])
    steep = weights_from_counts(counts, smoothing=1.0, power=1.0)
    flat = weights_from_counts(counts, smoothing=1.0, power=0.5)
    assert steep[0] / steep[2] > flat[0] / flat[2] > 1
    more_smoothing = weights_from_counts(counts, smoothing=100.0, power=1.0)
    assert more_smoothing[2] / more_smoothing[0] > steep[2] / steep[0]


def test_zipf_weights_decrease_with_rank() -> None:
    weights = zipf_weights(1000)
    assert weights.shape == (1000,)
    assert bool((weights[1:] < weights[:-1]).all())
    assert float(weights.min()) > 0


@pytest.mark.parametrize(
    ("calibration", "error", "message"),
    [
        ("no such file.txt", FileNotFoundError, "pass \\[text\\]"),
        (torch.ones(3), ValueError, "shape"),
        (torch.full((len(WORDS) + 5,), -1.0), ValueError, "non-negative"),
        ({999: 3}, ValueError, "token ids"),
        ([1, 2], TypeError, "must be strings"),
        ([], ValueError, "empty"),
        (3.5, TypeError, "calibration must be"),
    ],
)
def test_bad_calibration_is_rejected(
    tokenizer: BertTokenizerFast, calibration: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        token_counts(tokenizer, calibration, len(tokenizer), progress=False)  # type: ignore[arg-type]


def test_texts_need_a_tokenizer_and_ids_must_fit(tokenizer: BertTokenizerFast) -> None:
    with pytest.raises(ValueError, match="need a tokenizer"):
        token_counts(None, TEXTS, len(tokenizer), progress=False)
    with pytest.raises(ValueError, match="belongs to this model"):
        token_counts(tokenizer, TEXTS, 5, progress=False)
    with pytest.raises(
        ValueError, match=r"must be in \[0, 10\), got -1\."
    ):  # the offending id, not the largest
        token_counts(None, {3: 2, -1: 1}, 10, progress=False)
    with pytest.raises(ValueError, match="vocab_size"):
        token_counts(tokenizer, TEXTS, 0, progress=False)


@pytest.mark.parametrize(("smoothing", "power"), [(0.0, 1.0), (1.0, 0.0), (1.0, 1.5)])
def test_bad_weighting_parameters_are_rejected(smoothing: float, power: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        weights_from_counts(torch.ones(4), smoothing=smoothing, power=power)


def test_calibration_texts_for_distillation(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("first text\n\nsecond text\n", encoding="utf-8")
    assert calibration_texts(corpus) == ["first text", "second text"]
    assert calibration_texts(iter(TEXTS)) == TEXTS
    assert calibration_texts({1: 2}) is None
    assert calibration_texts(torch.ones(3)) is None


def test_word_counts_for_word_tables(tmp_path: Path) -> None:
    vocabulary = ["the", ",", "cat", "don't", "dog"]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The cat, the DOG.\nDon't stop\n", encoding="utf-8")
    counts = word_counts(vocabulary, corpus)
    assert counts.tolist() == [2.0, 1.0, 1.0, 1.0, 1.0]
    assert word_counts(vocabulary, ["The cat"], lowercase=False).tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    weights = weights_from_counts(counts)
    assert float(weights[0]) > float(weights[2]) > 0
    assert word_counts(["a", "b", "a"], ["a a b"]).tolist() == [2.0, 1.0, 2.0]  # a repeated word: every row
    with pytest.raises(ValueError, match="calibration corpus is empty"):
        word_counts(vocabulary, ["", "   "])
    with pytest.raises(ValueError, match="vocabulary is empty"):
        word_counts([], ["text"])
