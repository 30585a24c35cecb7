"""Tests for `embedding_sensitivity` on tiny random BERTs with a word-level tokenizer and on a linear toy model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tiny_text import word_sentences, word_tokenizer
from torch import nn
from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizerFast

from dccl_hf.fidelity.sensitivity import embedding_sensitivity

WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "big", "red", "blue", "ran", "fast", "house", "tree"]
HIDDEN = 16
QUIET = {"progress": False}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> BertTokenizerFast:
    return word_tokenizer(tmp_path_factory.mktemp("tokenizer"), WORDS)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return word_sentences(WORDS, 20)


def bert_config(vocab_size: int) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        initializer_range=0.5,
    )


@pytest.fixture
def bert(tokenizer: BertTokenizerFast) -> BertModel:
    torch.manual_seed(0)
    return BertModel(bert_config(len(tokenizer))).eval()


class LinearModel(nn.Module):
    """Hidden states = embeddings · Wᵀ, so the sensitivity E[JᵀJ] is exactly WᵀW (dim × dim)."""

    def __init__(self, vocab_size: int, dim: int, outputs: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.mix = nn.Linear(dim, outputs, bias=False)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def forward(self, input_ids: torch.Tensor, output_hidden_states: bool = False, **_: object) -> object:
        return SimpleNamespace(hidden_states=(self.mix(self.embed(input_ids)),))


def check_metric(metric: torch.Tensor, dim: int = HIDDEN) -> None:
    """(dim, dim) float64, symmetric, positive semi-definite, trace dim."""
    assert metric.shape == (dim, dim)
    assert metric.dtype == torch.float64
    torch.testing.assert_close(metric, metric.T, rtol=0, atol=1e-12)
    eigenvalues = torch.linalg.eigvalsh(metric)
    assert float(eigenvalues.min()) > -1e-9 * float(eigenvalues.max())
    assert float(metric.trace()) == pytest.approx(dim, rel=1e-9)


@pytest.mark.parametrize("output", ["hidden", "pooled"])
def test_a_layernorm_after_the_embeddings_ignores_the_mean_direction(
    bert: BertModel, tokenizer: BertTokenizerFast, texts: list[str], output: str
) -> None:
    metric = embedding_sensitivity(bert, tokenizer, texts, output=output, batch_size=8, **QUIET)
    check_metric(metric)
    ones = torch.ones(HIDDEN, dtype=torch.float64) / HIDDEN**0.5
    mean_eigenvalue = float(metric.trace()) / HIDDEN
    assert float(ones @ metric @ ones) / mean_eigenvalue < 1e-3
    # ... and not every direction is ignored: the metric is not degenerate beyond the mean direction.
    assert int((torch.linalg.eigvalsh(metric) > 1e-3 * mean_eigenvalue).sum()) == HIDDEN - 1


def test_logits_of_a_model_with_an_lm_head(tokenizer: BertTokenizerFast, texts: list[str]) -> None:
    torch.manual_seed(0)
    model = BertForMaskedLM(bert_config(len(tokenizer))).eval()
    metric = embedding_sensitivity(model, tokenizer, texts, output="logits", **QUIET)
    check_metric(metric)
    ones = torch.ones(HIDDEN, dtype=torch.float64) / HIDDEN**0.5
    assert float(ones @ metric @ ones) < 1e-3
    hidden = embedding_sensitivity(model, tokenizer, texts, output="hidden", **QUIET)
    assert not torch.allclose(metric, hidden, atol=1e-2)


def test_the_estimate_converges_to_the_jacobian_product(
    tokenizer: BertTokenizerFast, texts: list[str]
) -> None:
    torch.manual_seed(0)
    model = LinearModel(len(tokenizer), 4, 6)
    weight = model.mix.weight.detach().double()
    expected = weight.T @ weight
    expected *= 4 / expected.trace()
    metric = embedding_sensitivity(model, tokenizer, texts, probes=32, **QUIET)
    check_metric(metric, 4)
    assert float(torch.linalg.matrix_norm(metric - expected) / torch.linalg.matrix_norm(expected)) < 0.1


def test_the_seed_determines_the_result(
    bert: BertModel, tokenizer: BertTokenizerFast, texts: list[str]
) -> None:
    bert.train()  # dropout must be off while measuring, or reruns would differ
    runs = [embedding_sensitivity(bert, tokenizer, texts, seed=seed, **QUIET) for seed in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


class RecordingTokenizer:
    """A tokenizer that records the texts it is called on."""

    def __init__(self, tokenizer: BertTokenizerFast) -> None:
        self.tokenizer = tokenizer
        self.texts: list[str] = []

    def __call__(self, texts: list[str], **options: object) -> object:
        self.texts.extend(texts)
        return self.tokenizer(texts, **options)


def test_max_texts_are_drawn_by_seed(bert: BertModel, tokenizer: BertTokenizerFast, texts: list[str]) -> None:
    reads = []
    for seed in (0, 1):
        recording = RecordingTokenizer(tokenizer)
        embedding_sensitivity(bert, recording, texts, max_texts=5, batch_size=2, seed=seed, **QUIET)
        reads.append(recording.texts)
    for read in reads:
        assert len(read) == 5
        assert len(set(read)) == 5
        assert set(read) <= set(texts)
        assert [len(text) for text in read] == sorted(len(text) for text in read)  # batches of similar length
    assert reads[0] != reads[1]
    recording = RecordingTokenizer(tokenizer)
    everything = embedding_sensitivity(bert, recording, texts, max_texts=len(texts), **QUIET)
    assert sorted(recording.texts) == sorted(texts)
    assert torch.equal(everything, embedding_sensitivity(bert, tokenizer, texts, **QUIET))


@pytest.mark.parametrize("output", ["hidden", "logits"], ids=["success", "error"])
def test_the_model_is_left_as_it_was(
    bert: BertModel, tokenizer: BertTokenizerFast, texts: list[str], output: str
) -> None:
    """Training mode, requires_grad flags and hooks are restored, and no gradient reaches a parameter."""
    bert.train()
    bert.get_input_embeddings().weight.requires_grad_(False)
    bert.pooler.dense.bias.requires_grad_(False)
    flags = {name: parameter.requires_grad for name, parameter in bert.named_parameters()}
    state = {name: value.clone() for name, value in bert.state_dict().items()}
    if output == "logits":  # BertModel has no LM head: fails after the hook is in place
        with pytest.raises(ValueError, match="logits"):
            embedding_sensitivity(bert, tokenizer, texts, output=output, **QUIET)
    else:
        embedding_sensitivity(bert, tokenizer, texts, output=output, **QUIET)
    assert bert.training
    assert all(module.training for module in bert.modules())
    assert {name: parameter.requires_grad for name, parameter in bert.named_parameters()} == flags
    assert all(parameter.grad is None for parameter in bert.parameters())
    assert not bert.get_input_embeddings()._forward_hooks
    for name, value in bert.state_dict().items():
        assert torch.equal(value, state[name]), name


@pytest.mark.parametrize(
    ("texts", "options", "message"),
    [
        ([], {}, "non-empty list of strings"),
        ("the cat sat", {}, "non-empty list of strings"),
        ((text for text in ["the cat"]), {}, "non-empty list of strings"),
        (["the cat"], {"output": "attention"}, r"output must be one of .*'attention'"),
        (["the cat"], {"probes": 0}, "probes, max_texts and batch_size must be ≥ 1"),
        (["the cat"], {"max_texts": 0}, "probes, max_texts and batch_size must be ≥ 1"),
    ],
    ids=["empty", "bare-string", "generator", "unknown-output", "no-probes", "no-texts"],
)
def test_bad_inputs_are_clear_errors(
    bert: BertModel, tokenizer: BertTokenizerFast, texts: object, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        embedding_sensitivity(bert, tokenizer, texts, **options, **QUIET)  # type: ignore[arg-type]


def test_it_works_under_no_grad(bert: BertModel, tokenizer: BertTokenizerFast, texts: list[str]) -> None:
    """Models are often modified under torch.no_grad(); the backward passes must still run."""
    expected = embedding_sensitivity(bert, tokenizer, texts, **QUIET)
    with torch.no_grad():
        measured = embedding_sensitivity(bert, tokenizer, texts, **QUIET)
        assert not torch.is_grad_enabled()
    assert torch.equal(measured, expected)
