"""Tests for `smallest_codes`: candidates are tried smallest first and the first one meeting the target wins."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_text import WORDS, bert_config, word_sentences, word_tokenizer
from transformers import BertModel, BertTokenizerFast

import dccl_hf.integration.model as integration_model
from dccl_hf.fidelity.budget import sentence_embeddings, smallest_codes, stored_bytes


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[BertModel, BertTokenizerFast, list[str]]:
    tokenizer = word_tokenizer(tmp_path_factory.mktemp("tokenizer"), WORDS)
    torch.manual_seed(0)
    config = bert_config(len(tokenizer), max_position_embeddings=16, initializer_range=0.2)
    texts = word_sentences(WORDS, 20, max_words=8)
    return BertModel(config).eval(), tokenizer, texts


def test_sentence_embeddings_are_mean_pooled_per_text_in_the_order_given(
    setup: tuple[BertModel, BertTokenizerFast, list[str]],
) -> None:
    model, tokenizer, texts = setup
    pooled = sentence_embeddings(model, tokenizer, texts, batch_size=3)
    for index in (0, 7, len(texts) - 1):
        batch = tokenizer(texts[index], return_tensors="pt")
        with torch.no_grad():
            alone = model(**batch).last_hidden_state[0].mean(dim=0)
        torch.testing.assert_close(pooled[index], alone, atol=1e-5, rtol=1e-5)


def test_smallest_candidate_meeting_the_target_wins(
    setup: tuple[BertModel, BertTokenizerFast, list[str]],
) -> None:
    model, tokenizer, texts = setup
    original = {name: value.clone() for name, value in model.state_dict().items()}
    candidates = [(8, 16), (1, 2)]
    _, tried = smallest_codes(
        model,
        tokenizer,
        texts,
        target=1.0,
        candidates=candidates,
        distill=False,
        max_iterations=2,
        progress=False,
    )
    assert [(r.num_codebooks, r.codebook_size) for r in tried] == [(1, 2), (8, 16)]
    assert tried[0].mean_cosine < tried[1].mean_cosine
    assert tried[0].stored_bytes == stored_bytes(len(tokenizer), 16, 1, 2, torch.float16)
    target = (tried[0].mean_cosine + tried[1].mean_cosine) / 2
    winner, results = smallest_codes(
        model,
        tokenizer,
        texts,
        target=target,
        candidates=candidates,
        distill=False,
        max_iterations=2,
        progress=False,
    )
    assert winner is not None
    assert (winner.num_codebooks, winner.codebook_size) == (8, 16)
    assert len(results) == 2
    assert results[-1].mean_cosine >= target
    assert all(torch.equal(value, original[name]) for name, value in model.state_dict().items())


def test_unreachable_target_returns_none(setup: tuple[BertModel, BertTokenizerFast, list[str]]) -> None:
    model, tokenizer, texts = setup
    winner, results = smallest_codes(
        model, tokenizer, texts, target=1.0, candidates=[(1, 2)], distill_options={"steps": 2}, max_iterations=1,
        progress=False,
    )  # fmt: skip
    assert winner is None
    assert results[0].mean_cosine < 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": 1.5}, "target"),
        ({"eval_fraction": 0.0}, "eval_fraction"),
        ({"candidates": []}, "at least one"),
        ({"candidates": [(0, 16)]}, "num_codebooks"),
    ],
)
def test_bad_arguments_are_rejected(
    setup: tuple[BertModel, BertTokenizerFast, list[str]], kwargs: dict[str, object], message: str
) -> None:
    model, tokenizer, texts = setup
    with pytest.raises(ValueError, match=message):
        smallest_codes(model, tokenizer, texts, progress=False, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 4 texts"):
        smallest_codes(model, tokenizer, texts[:2], progress=False)


def test_codes_are_calibrated_like_compress_with_calibration(
    setup: tuple[BertModel, BertTokenizerFast, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The candidates get the training texts as `calibration=` (hence the squared objective), not bare `weights=`,
    and never the held-out texts they are scored on."""
    model, tokenizer, texts = setup
    calls: list[dict[str, object]] = []
    compress = integration_model.compress

    def recording_compress(matrix: torch.Tensor, *args: object, **kwargs: object) -> object:
        calls.append(kwargs)
        return compress(matrix, *args, **kwargs)

    monkeypatch.setattr(integration_model, "compress", recording_compress)
    smallest_codes(
        model, tokenizer, texts, candidates=[(2, 4)], distill=False, max_iterations=1, progress=False
    )
    (kwargs,) = calls
    assert "weights" not in kwargs
    assert kwargs["tokenizer"] is tokenizer
    calibration = kwargs["calibration"]
    assert isinstance(calibration, list)
    assert len(calibration) == len(texts) - round(0.2 * len(texts))
    assert set(calibration) <= set(texts)


def test_half_precision_models_are_compressed_in_their_dtype(
    setup: tuple[BertModel, BertTokenizerFast, list[str]],
) -> None:
    model, tokenizer, texts = setup
    half = copy.deepcopy(model).to(torch.bfloat16)
    winner, results = smallest_codes(
        half,
        tokenizer,
        texts,
        target=0.01,
        candidates=[(2, 4)],
        distill=False,
        max_iterations=1,
        progress=False,
    )
    assert winner is not None
    assert winner.codebook.dtype == torch.bfloat16
    assert len(results) == 1
    assert results[0].mean_cosine > 0
