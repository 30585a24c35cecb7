"""Tests for codebook distillation on a tiny random BERT: the held-out loss falls and only the codebook changes."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from tiny_text import bert_config, word_sentences, word_tokenizer
from torch import nn
from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizerFast, PreTrainedModel

from dccl_hf.embedding import CompressedEmbedding
from dccl_hf.fidelity.distill import DistillationReport, distill_codebook

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "big",
    "red",
    "blue",
    "ran",
    "fast",
    "slow",
    "house",
    "tree",
    "river",
    "under",
    "over",
    "near",
    "far",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> BertTokenizerFast:
    return word_tokenizer(tmp_path_factory.mktemp("tokenizer"), WORDS)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return word_sentences(WORDS, 60)


def _config(vocab_size: int) -> BertConfig:
    return bert_config(
        vocab_size, hidden_size=32, num_hidden_layers=2, intermediate_size=64, initializer_range=0.2
    )


def _compressed_copy(model: PreTrainedModel) -> PreTrainedModel:
    """The model with its input embeddings replaced by codes that can represent every row, and a noisy codebook."""
    torch.manual_seed(0)
    weight = model.get_input_embeddings().weight.detach()
    num_codebooks, codebook_size = 2, 32
    codes = torch.stack(
        [torch.arange(weight.shape[0]), torch.randint(codebook_size, (weight.shape[0],))], dim=1
    )
    one_hot = nn.functional.one_hot(codes, codebook_size).reshape(weight.shape[0], -1).float()
    codebook = torch.linalg.lstsq(one_hot, weight).solution.reshape(num_codebooks, codebook_size, -1)
    codebook += 0.1 * torch.randn_like(codebook)
    student = copy.deepcopy(model)
    student.set_input_embeddings(CompressedEmbedding.from_codes(codes, codebook))
    return student


def _frozen_state(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    return {
        name: value.clone() for name, value in model.state_dict().items() if not name.endswith("codebook")
    }


@pytest.mark.parametrize(
    ("model_class", "loss"), [(BertModel, "hidden"), (BertModel, "pooled"), (BertForMaskedLM, "logits")]
)
def test_distillation_lowers_held_out_loss_and_changes_only_the_codebook(
    tokenizer: BertTokenizerFast, texts: list[str], model_class: type[PreTrainedModel], loss: str
) -> None:
    torch.manual_seed(0)
    original = model_class(_config(len(tokenizer)))
    compressed = _compressed_copy(original)
    compressed.train()
    frozen = _frozen_state(compressed)
    codebook = compressed.get_input_embeddings().codebook.detach().clone()
    requires_grad = {name: p.requires_grad for name, p in compressed.named_parameters()}

    report = distill_codebook(
        original,
        compressed,
        tokenizer,
        texts,
        loss=loss,
        steps=40,
        batch_size=8,
        held_out_fraction=0.25,
        lr=0.02,
        eval_every=10,
        progress=False,
    )

    assert isinstance(report, DistillationReport)
    assert report.held_out_texts == 15
    assert report.train_texts == 45
    assert report.best_held_out_loss < 0.8 * report.initial_held_out_loss
    assert not torch.equal(compressed.get_input_embeddings().codebook.detach(), codebook)
    for name, value in _frozen_state(compressed).items():
        assert torch.equal(value, frozen[name]), name
    assert {name: p.requires_grad for name, p in compressed.named_parameters()} == requires_grad
    assert compressed.training
    assert str(report).startswith(f"codebook distillation ({loss} loss)")


def test_best_codebook_is_restored_and_time_budget_stops(
    tokenizer: BertTokenizerFast, texts: list[str]
) -> None:
    torch.manual_seed(0)
    original = BertModel(_config(len(tokenizer)))
    compressed = _compressed_copy(original)
    report = distill_codebook(
        original,
        compressed,
        tokenizer,
        texts,
        time_budget=0.5,
        batch_size=8,
        lr=0.05,
        eval_every=2,
        progress=False,
    )
    assert report.stop_reason in {"time budget", "no held-out improvement"}
    again = distill_codebook(
        original, compressed, tokenizer, texts, steps=1, lr=1e-12, eval_every=1, progress=False
    )
    assert again.initial_held_out_loss == pytest.approx(report.best_held_out_loss, rel=1e-4)


class PadRecorder:
    """A tokenizer whose `pad` records the token ids of every batch it pads."""

    def __init__(self, tokenizer: BertTokenizerFast) -> None:
        self.tokenizer = tokenizer
        self.batches: list[list[list[int]]] = []

    def __call__(self, *args: object, **kwargs: object) -> object:
        return self.tokenizer(*args, **kwargs)

    def pad(self, encodings: list[dict[str, list[int]]], **kwargs: object) -> object:
        self.batches.append([encoding["input_ids"] for encoding in encodings])
        return self.tokenizer.pad(encodings, **kwargs)


def test_default_run_is_one_pass_over_batches_of_similar_length(
    tokenizer: BertTokenizerFast, texts: list[str]
) -> None:
    torch.manual_seed(0)
    original = BertModel(_config(len(tokenizer)))
    recorder = PadRecorder(tokenizer)
    report = distill_codebook(
        original,
        _compressed_copy(original),
        recorder,
        texts,
        batch_size=8,
        held_out_fraction=0.25,
        progress=False,
    )
    held_out, train = recorder.batches[:2], recorder.batches[2:]
    assert [len(batch) for batch in held_out] == [8, 7]
    assert report.steps == len(train) == 6  # 45 training texts in batches of 8: one pass
    every_text = tokenizer(texts, truncation=True, max_length=128)["input_ids"]
    seen = [ids for batch in recorder.batches for ids in batch]
    assert sorted(seen) == sorted(every_text)  # each text once: held out or in one training batch
    lengths = sorted([len(ids) for ids in batch] for batch in train)
    for shorter, longer in itertools.pairwise(lengths):
        assert max(shorter) <= min(longer)  # batches are cut from the texts sorted by length


def test_inputs_are_validated(tokenizer: BertTokenizerFast, texts: list[str]) -> None:
    original = BertModel(_config(len(tokenizer)))
    compressed = _compressed_copy(original)
    with pytest.raises(TypeError, match="not a CompressedEmbedding"):
        distill_codebook(original, copy.deepcopy(original), tokenizer, texts, progress=False)
    with pytest.raises(ValueError, match="uncompressed model"):
        distill_codebook(compressed, _compressed_copy(original), tokenizer, texts, progress=False)
    with pytest.raises(ValueError, match="different models"):
        distill_codebook(compressed, compressed, tokenizer, texts, progress=False)
    with pytest.raises(ValueError, match="loss must be one of"):
        distill_codebook(original, compressed, tokenizer, texts, loss="mse", progress=False)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="list of strings"):
        distill_codebook(original, compressed, tokenizer, "one text", progress=False)
    with pytest.raises(ValueError, match="at least 2 texts"):
        distill_codebook(original, compressed, tokenizer, ["one text"], progress=False)
    with pytest.raises(ValueError, match="held_out_fraction"):
        distill_codebook(original, compressed, tokenizer, texts, held_out_fraction=1.0, progress=False)
    with pytest.raises(ValueError, match="steps"):
        distill_codebook(original, compressed, tokenizer, texts, steps=0, progress=False)
    with pytest.raises(ValueError, match="loss='logits' needs"):
        distill_codebook(original, compressed, tokenizer, texts, loss="logits", steps=1, progress=False)
