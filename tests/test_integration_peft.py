"""PEFT on compressed models (tiny random Llama): LoRA on attention, modules_to_save on the embeddings with a tied
compressed head, trainable_token_indices and AutoPeftModel, each working or failing with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel, get_peft_model
from tiny_models import compressed_llama
from tiny_text import WORDS, word_tokenizer
from transformers import AutoModelForCausalLM, PreTrainedModel

import dccl_hf  # noqa: F401  (registers the "dccl" quantizer)
from dccl_hf import CompressedEmbedding
from dccl_hf._compat import peft_active_copy

VOCAB, HIDDEN = 120, 32
IDS = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))


def build(tied: bool = True) -> PreTrainedModel:
    return compressed_llama(VOCAB, HIDDEN, tied=tied)


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("base")
    build().save_pretrained(folder)
    return folder


def train_step(model: torch.nn.Module) -> None:
    """One large SGD step on the trainable parameters, so that trained and frozen copies differ clearly."""
    model.train()
    model(IDS, labels=IDS).loss.backward()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad and parameter.grad is not None:
                parameter -= 0.5 * parameter.grad
    model.eval()


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def test_lora_on_attention_trains_adapters_and_reloads(base_folder: Path, tmp_path: Path) -> None:
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_folder), LoraConfig(target_modules=["q_proj", "v_proj"])
    )
    embedding = model.get_input_embeddings()
    assert isinstance(embedding, CompressedEmbedding)
    assert not embedding.codebook.requires_grad
    train_step(model)
    expected = logits(model)
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_folder), tmp_path)
    torch.testing.assert_close(logits(reloaded), expected)


def test_modules_to_save_trains_one_table_for_both_tied_sides(base_folder: Path, tmp_path: Path) -> None:
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_folder),
        LoraConfig(target_modules=["q_proj"], modules_to_save=["embed_tokens"]),
    )
    wrapper = model.get_input_embeddings()
    trained, frozen = wrapper.modules_to_save["default"], wrapper.original_module
    train_step(model)
    assert not torch.equal(trained.codebook, frozen.codebook)
    expected = logits(model)
    assert model.get_output_embeddings().embedding is trained  # the head reads the trained copy
    with model.disable_adapter():
        logits(model)
        assert model.get_output_embeddings().embedding is frozen
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_folder), tmp_path)
    torch.testing.assert_close(logits(reloaded), expected)
    assert (
        reloaded.get_output_embeddings().embedding
        is reloaded.get_input_embeddings().modules_to_save["default"]
    )


def test_replacing_the_tied_embedding_by_something_unreadable_is_an_error() -> None:
    model = build()
    model.model.embed_tokens = torch.nn.Embedding(VOCAB, HIDDEN)
    with pytest.raises(RuntimeError, match=r"tied to model\.embed_tokens, which is now a Embedding"):
        logits(model)


def test_trainable_token_indices_names_the_alternative(base_folder: Path) -> None:
    base = AutoModelForCausalLM.from_pretrained(base_folder)
    with pytest.raises(AttributeError, match=r'no dense .weight.*modules_to_save=\["embed_tokens"\]'):
        get_peft_model(base, LoraConfig(target_modules=["q_proj"], trainable_token_indices=[3, 4]))


def test_auto_peft_model_loads_a_compressed_base(base_folder: Path, tmp_path: Path) -> None:
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_folder), LoraConfig(target_modules=["q_proj"])
    )
    train_step(model)
    model.save_pretrained(tmp_path)
    loaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(logits(loaded), logits(model))
    word_tokenizer(tmp_path, WORDS).save_pretrained(tmp_path)  # AutoPeft then compares the table's rows
    with pytest.raises(AttributeError, match=r"PeftModel\.from_pretrained\(base, adapter_folder\)"):
        AutoPeftModelForCausalLM.from_pretrained(tmp_path)


def test_peft_active_copy_reads_the_wrapper(base_folder: Path) -> None:
    """Pins the undocumented ModulesToSaveWrapper attributes dccl_hf._compat relies on."""
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_folder),
        LoraConfig(target_modules=["q_proj"], modules_to_save=["embed_tokens"]),
    )
    wrapper = model.get_input_embeddings()
    assert peft_active_copy(wrapper) is wrapper.modules_to_save["default"]
    with model.disable_adapter():
        assert peft_active_copy(wrapper) is wrapper.original_module
    assert peft_active_copy(torch.nn.Linear(2, 2)) is None
