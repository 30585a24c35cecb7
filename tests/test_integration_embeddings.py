"""Embedding classes that do more than a lookup (a scale, a normalisation) keep that behaviour once compressed:
every scaled or normed word-embedding family of transformers, tied and untied heads, before and after
save → from_pretrained, with an exact reconstruction (one codebook holding the table's rows), so outputs must
match the dense model's; unknown classes are refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import transformers
from torch import nn
from transformers import AutoConfig, PreTrainedModel

import dccl_hf  # noqa: F401  (registers resize_with_codes and the "dccl" quantizer)
from dccl_hf import CompressedEmbedding
from dccl_hf.integration.embeddings import (
    NORMED_EMBEDDINGS,
    SCALED_EMBEDDINGS,
    TransformedCompressedEmbedding,
    compressed_like,
)

VOCAB, HIDDEN = 120, 32
#: Small sizes understood by most configs (each config ignores the names it does not use).
SMALL = {
    "vocab_size": VOCAB,
    "hidden_size": HIDDEN,
    "d_model": HIDDEN,
    "intermediate_size": 64,
    "ffn_dim": 64,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "max_position_embeddings": 64,
    "num_layers": 1,
    "num_heads": 2,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "decoder_start_token_id": 2,
}
#: (config model type, model class, extra config values) for one model of each family.
FAMILIES = [
    ("bart", "BartForConditionalGeneration", {}),
    ("bart", "BartForCausalLM", {}),
    ("bigbird_pegasus", "BigBirdPegasusForCausalLM", {}),
    ("biogpt", "BioGptForCausalLM", {}),
    ("blenderbot", "BlenderbotForCausalLM", {}),
    ("embedding_gemma2_text", "EmbeddingGemma2TextModel", {}),
    ("gemma", "GemmaForCausalLM", {}),
    ("gemma2", "Gemma2ForCausalLM", {}),
    ("gemma3_text", "Gemma3ForCausalLM", {}),
    ("gemma4_text", "Gemma4ForCausalLM", {}),
    ("gemma4_unified_text", "Gemma4UnifiedForCausalLM", {}),
    ("inkling_text", "InklingForCausalLM", {}),
    ("m2m_100", "M2M100ForConditionalGeneration", {}),
    ("mbart", "MBartForCausalLM", {}),
    ("muse_glimmer_text", "MuseGlimmerTextModel", {}),
    ("pegasus_x", "PegasusXForConditionalGeneration", {}),
    ("plbart", "PLBartForCausalLM", {}),
    ("seamless_m4t", "SeamlessM4TForTextToText", {}),
    ("seamless_m4t_v2", "SeamlessM4Tv2ForTextToText", {}),
    ("trocr", "TrOCRForCausalLM", {}),
    ("vaultgemma", "VaultGemmaForCausalLM", {}),
    ("xglm", "XGLMForCausalLM", {}),
]


def build(model_type: str, model_class: str, extra: dict, tied: bool) -> PreTrainedModel:
    config = AutoConfig.for_model(model_type, **(SMALL | extra), tie_word_embeddings=tied)
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(config).eval()
    embeddings = model.get_input_embeddings()
    if embeddings.padding_idx is not None:  # a compressed padding row decodes to zeros
        with torch.no_grad():
            embeddings.weight[embeddings.padding_idx] = 0.0
    return model


def exact_codes(embeddings: nn.Embedding) -> CompressedEmbedding:
    """One codebook of K ≥ V codewords holding the table's rows, row i coded i: an exact reconstruction."""
    weight = embeddings.weight.detach()
    codebook = torch.zeros(1, 1 << (weight.shape[0] - 1).bit_length(), weight.shape[1])
    codebook[0, : weight.shape[0]] = weight
    return CompressedEmbedding.from_codes(
        torch.arange(weight.shape[0])[:, None], codebook, embeddings.padding_idx
    )


def outputs(model: PreTrainedModel) -> torch.Tensor:
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    decoder = {"decoder_input_ids": ids} if model.config.is_encoder_decoder else {}
    with torch.no_grad():
        result = model(input_ids=ids, **decoder)
    logits = getattr(result, "logits", None)
    return logits if logits is not None else result.last_hidden_state


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize(("model_type", "model_class", "extra"), FAMILIES, ids=[f[1] for f in FAMILIES])
def test_family_keeps_its_embedding_behaviour(
    model_type: str, model_class: str, extra: dict, tied: bool, tmp_path: Path
) -> None:
    model = build(model_type, model_class, extra, tied)
    dense_class = type(model.get_input_embeddings())
    expected = outputs(model)
    shape = model.get_input_embeddings().weight.shape
    tables = {
        id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding) and m.weight.shape == shape
    }
    if len(tables) > 1:  # an untied encoder-decoder: its encoder and decoder tables differ
        with pytest.raises(ValueError, match="hold their own table"):
            model.resize_with_codes(exact_codes(model.get_input_embeddings()))
        assert type(model.get_input_embeddings()) is dense_class
        return
    model.resize_with_codes(exact_codes(model.get_input_embeddings()))
    compressed = model.get_input_embeddings()
    assert isinstance(compressed, TransformedCompressedEmbedding)
    torch.testing.assert_close(outputs(model), expected, rtol=1e-5, atol=1e-6)
    model.save_pretrained(tmp_path)
    loaded = getattr(transformers, model_class).from_pretrained(tmp_path).eval()
    assert isinstance(loaded.get_input_embeddings(), TransformedCompressedEmbedding)
    torch.testing.assert_close(outputs(loaded), expected, rtol=1e-5, atol=1e-6)
    loaded.dequantize()
    assert type(loaded.get_input_embeddings()) is dense_class
    torch.testing.assert_close(outputs(loaded), expected, rtol=1e-5, atol=1e-6)


def embedding_classes_in_transformers() -> dict[str, str]:
    """Every `nn.Embedding` subclass that transformers' modeling files define, by name: its module."""
    root = Path(transformers.__file__).parent / "models"
    pattern = re.compile(
        r"^class (\w+)\((?:nn\.Embedding|\w+(?:ScaledWordEmbedding|NormedEmbedding))\):", re.M
    )
    found = {}
    for path in sorted(root.glob("*/modeling_*.py")):
        for name in pattern.findall(path.read_text(encoding="utf-8")):
            found[name] = f"transformers.models.{path.parent.name}.{path.stem}"
    return found


TRANSFORMERS_EMBEDDINGS = embedding_classes_in_transformers()
#: Word embeddings with more than a scale or a norm (T5Gemma2 overwrites one token's row with its own parameter).
REFUSED = {"T5Gemma2TextScaledWordEmbedding"}


def test_every_scaled_or_normed_embedding_of_transformers_is_known_or_refused() -> None:
    word_embeddings = {
        name for name in TRANSFORMERS_EMBEDDINGS if name.endswith(("ScaledWordEmbedding", "NormedEmbedding"))
    }
    assert word_embeddings, "no embedding classes found: transformers' layout changed"
    unknown = word_embeddings - SCALED_EMBEDDINGS - NORMED_EMBEDDINGS - REFUSED
    assert not unknown, (
        f"new transformers embedding classes to add to dccl_hf.integration.embeddings: {unknown}"
    )
    assert word_embeddings >= SCALED_EMBEDDINGS | NORMED_EMBEDDINGS


def embedding_class(name: str) -> type[nn.Embedding]:
    module = __import__(TRANSFORMERS_EMBEDDINGS[name], fromlist=[name])
    return getattr(module, name)


@pytest.mark.parametrize("name", sorted(SCALED_EMBEDDINGS | NORMED_EMBEDDINGS))
def test_every_known_class_is_reproduced_by_its_compressed_module(name: str) -> None:
    cls = embedding_class(name)
    torch.manual_seed(0)
    if name in SCALED_EMBEDDINGS:
        dense = cls(VOCAB, HIDDEN, 1, embed_scale=HIDDEN**0.5)
    else:
        dense = cls(VOCAB, HIDDEN, 1, norm_eps=1e-6)
        for parameter in dense.embed_norm.parameters():  # a trained norm, not its ones init
            nn.init.uniform_(parameter, 0.5, 1.5)
    with torch.no_grad():
        dense.weight[1] = 0.0
    ids = torch.randint(0, VOCAB, (3, 5), generator=torch.Generator().manual_seed(1))
    compressed = compressed_like(dense, exact_codes(dense))
    assert isinstance(compressed, TransformedCompressedEmbedding)
    torch.testing.assert_close(compressed(ids), dense(ids))
    restored = compressed.to_embedding()
    assert type(restored) is cls
    torch.testing.assert_close(restored(ids), dense(ids))


class ShiftedEmbedding(nn.Embedding):
    """An embedding class dccl_hf does not know: its forward adds one."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(input_ids) + 1.0


def test_unknown_embedding_class_is_refused_and_the_model_left_unchanged() -> None:
    model = build("gemma", "GemmaForCausalLM", {}, tied=False)
    model.model.embed_tokens = ShiftedEmbedding(VOCAB, HIDDEN)
    with pytest.raises(
        TypeError, match=r"cannot compress ShiftedEmbedding.*does more than an embedding lookup"
    ):
        model.resize_with_codes(2, 16, progress=False, max_iterations=1)
    assert type(model.get_input_embeddings()) is ShiftedEmbedding
    assert not hasattr(model.config, "quantization_config")


def test_embedding_subclass_without_own_forward_is_a_plain_lookup() -> None:
    class Renamed(nn.Embedding):
        pass

    dense = Renamed(VOCAB, HIDDEN)
    compressed = exact_codes(dense)
    assert compressed_like(dense, compressed) is compressed


def test_t5gemma2_embedding_is_refused() -> None:
    dense = embedding_class("T5Gemma2TextScaledWordEmbedding")(VOCAB, HIDDEN, 1, embed_scale=2.0)
    with pytest.raises(TypeError, match="T5Gemma2TextScaledWordEmbedding"):
        compressed_like(dense, exact_codes(dense))


def test_learned_codes_of_a_scaled_model_keep_the_scale() -> None:
    """Through the learning path too (not only a given CompressedEmbedding): BART with scale_embedding=True."""
    model = build("bart", "BartForCausalLM", {"scale_embedding": True}, tied=True)
    expected = outputs(model)
    compressed = model.resize_with_codes(8, 256, progress=False, max_iterations=2, seed=0)
    assert compressed.embed_scale == pytest.approx(HIDDEN**0.5)
    relative = (outputs(model) - expected).norm() / expected.norm()
    assert relative < 0.05
