"""CompressedLMHead: logits and gradients equal those of the dense tied head, without a V×D matrix."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import llama_config

from dccl_hf import CompressedEmbedding
from dccl_hf.integration import layer as layer_module
from dccl_hf.integration.layer import CompressedLMHead


def make_embedding(
    vocab: int = 50,
    dim: int = 8,
    num_codebooks: int = 3,
    codebook_size: int = 4,
    padding_idx: int | None = None,
) -> CompressedEmbedding:
    generator = torch.Generator().manual_seed(vocab * 31 + dim)
    codes = torch.randint(codebook_size, (vocab, num_codebooks), generator=generator)
    codebook = torch.randn(num_codebooks, codebook_size, dim, generator=generator, dtype=torch.float64)
    return CompressedEmbedding.from_codes(codes, codebook, padding_idx=padding_idx)


def dense_logits(
    embedding: CompressedEmbedding, hidden: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    logits = hidden @ embedding.reconstruct().T
    return logits if bias is None else logits + bias


@settings(max_examples=25, deadline=None)
@given(
    vocab=st.integers(1, 40),
    dim=st.integers(1, 6),
    num_codebooks=st.integers(1, 4),
    bits=st.integers(1, 4),
    tokens=st.integers(0, 5),
    padding=st.booleans(),
    with_bias=st.booleans(),
)
def test_logits_and_gradients_match_the_dense_head(
    vocab: int, dim: int, num_codebooks: int, bits: int, tokens: int, padding: bool, with_bias: bool
) -> None:
    embedding = make_embedding(
        vocab, dim, num_codebooks, 2**bits, padding_idx=vocab // 2 if padding else None
    )
    bias = torch.nn.Parameter(torch.randn(vocab, dtype=torch.float64)) if with_bias else None
    head = CompressedLMHead(embedding, bias)
    hidden = torch.randn(2, tokens, dim, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, tokens, vocab, dtype=torch.float64)

    out = head(hidden)
    assert out.shape == (2, tokens, vocab)
    out.backward(upstream)
    grads = [hidden.grad, embedding.codebook.grad] + ([bias.grad] if with_bias else [])
    hidden.grad, embedding.codebook.grad = None, None
    if with_bias:
        bias.grad = None

    expected = dense_logits(embedding, hidden, bias)
    torch.testing.assert_close(out, expected)
    expected.backward(upstream)
    expected_grads = [hidden.grad, embedding.codebook.grad] + ([bias.grad] if with_bias else [])
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_backward_blocks_cover_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layer_module, "ONE_HOT_BLOCK_ELEMENTS", 7)  # blocks of 1 row with M·K = 12
    monkeypatch.setattr(layer_module, "GATHER_ROWS_PER_CHUNK", 2)
    monkeypatch.setattr(layer_module, "SCORE_TOKENS_PER_CHUNK", 2)
    embedding = make_embedding(vocab=9, padding_idx=4)
    hidden = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    head = CompressedLMHead(embedding)
    assert torch.autograd.gradcheck(head, (hidden,))
    assert torch.autograd.gradcheck(
        lambda codebook: CompressedLMHead(embedding)(hidden), (embedding.codebook,)
    )


def test_padding_row_logit_is_the_bias() -> None:
    embedding = make_embedding(padding_idx=3)
    bias = torch.nn.Parameter(torch.randn(50, dtype=torch.float64))
    out = CompressedLMHead(embedding, bias)(torch.randn(4, 8, dtype=torch.float64))
    torch.testing.assert_close(out[:, 3], bias[3].expand(4))


def test_head_follows_the_embedding_through_copies_and_dtype_changes() -> None:
    embedding = make_embedding().float()
    pair = torch.nn.ModuleDict({"embedding": embedding, "head": CompressedLMHead(embedding)})
    assert [name for name, _ in pair.named_parameters()] == ["embedding.codebook"]
    clone = copy.deepcopy(pair)
    assert clone["head"].embedding is clone["embedding"]
    clone.to(torch.bfloat16)
    hidden = torch.randn(2, 8)
    out = clone["head"](hidden.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), pair["head"](hidden), atol=0.1, rtol=0.05)
    assert clone["embedding"].packed_codes.dtype == torch.uint8


def test_bad_inputs_are_clear_errors() -> None:
    embedding = make_embedding()
    with pytest.raises(ValueError, match=r"bias must have shape \(50,\)"):
        CompressedLMHead(embedding, torch.nn.Parameter(torch.zeros(49)))
    with pytest.raises(TypeError, match="ties to a CompressedEmbedding"):
        CompressedLMHead(torch.nn.Embedding(50, 8))
    with pytest.raises(ValueError, match="must end with dimension 8"):
        CompressedLMHead(embedding)(torch.zeros(2, 7, dtype=torch.float64))
    assert "out_features=50" in repr(CompressedLMHead(embedding))


class _Logits(torch.nn.Module):
    """A causal LM as ids → logits, the signature tracing and export take."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def tiny_tied_llama(padding_idx: int) -> torch.nn.Module:
    from transformers import LlamaForCausalLM

    from dccl_hf.integration.model import resize_with_codes

    config = llama_config(40, 16, num_hidden_layers=1, max_position_embeddings=16, pad_token_id=padding_idx)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(1)
    codes = torch.randint(256, (40, 4), generator=generator)
    embedding = CompressedEmbedding.from_codes(
        codes, torch.randn(4, 256, 16, generator=generator), padding_idx=padding_idx
    )
    resize_with_codes(model, embedding)
    assert isinstance(model.get_output_embeddings(), CompressedLMHead)
    return _Logits(model)


@pytest.mark.parametrize("tokens", [1, 16])  # the score path, the decoded path
@pytest.mark.parametrize("capture", ["jit.trace", "export"])
def test_traced_and_exported_tied_llama_keep_the_padding_logit(tokens: int, capture: str) -> None:
    model = tiny_tied_llama(padding_idx=3)
    ids = torch.randint(4, 40, (1, tokens), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(ids)
    # Captured with gradients enabled: the head's autograd function is recorded as it computes.
    if capture == "jit.trace":
        captured = torch.jit.trace(model, (ids,), check_trace=False)
    else:
        captured = torch.export.export(model, (ids,)).module()
    with torch.no_grad():
        got = captured(ids)
    assert model.model.lm_head.uses_decoded_path(tokens) == (tokens == 16)
    torch.testing.assert_close(expected[..., 3], torch.zeros_like(expected[..., 3]))
    torch.testing.assert_close(got, expected)


class _TiedPair(torch.nn.Module):
    """An embedding and the head tied to it, as a model holds them (the codebook is a parameter here)."""

    def __init__(self, embedding: CompressedEmbedding) -> None:
        super().__init__()
        self.embedding = embedding
        self.head = CompressedLMHead(embedding)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.head(hidden_states)


@pytest.mark.parametrize("codebook_size", [2, 8, 16, 256])
@pytest.mark.parametrize("tokens", [1, 16])
def test_onnx_export_of_the_head_keeps_the_padding_logit(codebook_size: int, tokens: int) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    generator = torch.Generator().manual_seed(codebook_size)
    codes = torch.randint(codebook_size, (40, 4), generator=generator)
    embedding = CompressedEmbedding.from_codes(
        codes, torch.randn(4, codebook_size, 16, generator=generator), padding_idx=3
    )
    pair = _TiedPair(embedding)
    hidden = torch.randn(tokens, 16, generator=generator)
    with torch.no_grad():
        expected = pair(hidden)
    buffer = io.BytesIO()
    torch.onnx.export(pair, (hidden,), buffer, dynamo=False, opset_version=18, input_names=["hidden"])
    session = onnxruntime.InferenceSession(buffer.getvalue())
    got = torch.from_numpy(session.run(None, {"hidden": hidden.numpy()})[0])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.count_nonzero(got[:, 3]) == 0
