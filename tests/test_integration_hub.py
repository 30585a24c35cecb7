"""push_to_hub of a compressed transformers model to the loopback Hub (LFS and regular uploads), the model
card, and from_pretrained(repo_id) online and offline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from hub_server import HubServer
from huggingface_hub import ModelCard, hf_hub_download
from safetensors import safe_open
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, PreTrainedModel

import dccl_hf
from dccl_hf import CompressedEmbedding
from dccl_hf.integration.card import model_card

VOCAB, HIDDEN, M, K = 96, 16, 4, 32


@pytest.fixture(scope="module")
def model() -> PreTrainedModel:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=1, n_head=2, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    model = GPT2LMHeadModel(config).eval()
    model.config._name_or_path = "dccl-tester/tiny-gpt2"  # as if loaded from the Hub: the card's base_model
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(K, (VOCAB, M), generator=generator)
    codebook = torch.randn(M, K, HIDDEN, generator=generator) * 0.02
    dccl_hf.resize_with_codes(model, CompressedEmbedding.from_codes(codes, codebook))
    return model


def logits(model: PreTrainedModel) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.arange(12).reshape(2, 6)).logits


def read_card(hub_server: HubServer, repo_id: str) -> tuple[dict, str]:
    text = hub_server.files(repo_id)["README.md"].content.decode()
    _, header, body = text.split("---\n", 2)
    return yaml.safe_load(header), body


def test_push_to_hub_uploads_a_loadable_checkpoint_and_card(
    model: PreTrainedModel, hub_server: HubServer, tmp_path: Path
) -> None:
    model.push_to_hub("dccl-tester/compressed-gpt2")
    files = hub_server.files("dccl-tester/compressed-gpt2")
    assert {"config.json", "model.safetensors", "README.md", "generation_config.json"} <= set(files)
    assert files["model.safetensors"].lfs_sha256 is not None
    assert ("PUT", f"/lfs-objects/{files['model.safetensors'].lfs_sha256}") in hub_server.state.requests
    metadata, body = read_card(hub_server, "dccl-tester/compressed-gpt2")
    assert metadata["base_model"] == "dccl-tester/tiny-gpt2"
    assert metadata["base_model_relation"] == "quantized"
    assert {"dccl", "embedding-compression"} <= set(metadata["tags"])
    embedding = model.get_input_embeddings()
    assert f"| Codebooks M | {M} |" in body
    assert f"| Codewords per codebook K | {K} |" in body
    assert f"| Bits per row M·log2 K | {embedding.bits_per_row} |" in body
    assert f"{embedding.compression_ratio:.1f}×" in body
    assert "Relative squared error" in body
    snippet = body.split("```python\n", 1)[1]
    assert snippet.startswith("import dccl_hf")
    assert 'AutoModelForCausalLM.from_pretrained("dccl-tester/compressed-gpt2")' in snippet
    assert "size-mismatch error" in body  # loading without `import dccl_hf` fails loudly
    loaded = AutoModelForCausalLM.from_pretrained("dccl-tester/compressed-gpt2", cache_dir=tmp_path)
    assert torch.equal(logits(loaded), logits(model))
    checkpoint = hf_hub_download("dccl-tester/compressed-gpt2", "model.safetensors", cache_dir=tmp_path)
    with safe_open(checkpoint, "pt") as file:
        assert file.get_slice("transformer.wte.weight").get_shape() == [0]  # the load guard was uploaded


def test_from_pretrained_offline_from_the_cache(
    model: PreTrainedModel, hub_server: HubServer, tmp_path: Path, go_offline: Callable[[], None]
) -> None:
    model.push_to_hub("dccl-tester/compressed-offline")
    online = AutoModelForCausalLM.from_pretrained("dccl-tester/compressed-offline", cache_dir=tmp_path)
    requests_before = len(hub_server.state.requests)
    go_offline()
    offline = AutoModelForCausalLM.from_pretrained("dccl-tester/compressed-offline", cache_dir=tmp_path)
    assert len(hub_server.state.requests) == requests_before
    assert torch.equal(logits(offline), logits(online))
    assert torch.equal(logits(offline), logits(model))


def test_push_with_regular_uploads_only(
    model: PreTrainedModel, hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_server.state, "force_upload_mode", "regular")
    model.push_to_hub("dccl-tester/compressed-regular", commit_message="regular upload")
    files = hub_server.files("dccl-tester/compressed-regular")
    assert all(stored.lfs_sha256 is None for stored in files.values())
    loaded = AutoModelForCausalLM.from_pretrained("dccl-tester/compressed-regular", cache_dir=tmp_path)
    assert torch.equal(logits(loaded), logits(model))


def test_card_without_a_known_base_model_and_with_an_explicit_one(model: PreTrainedModel) -> None:
    card = model_card(model, "someone/x", base_model="openai-community/gpt2", tags=["extra"])
    assert card.data.base_model == "openai-community/gpt2"
    assert card.data.to_dict()["base_model_relation"] == "quantized"
    assert card.data.tags == ["dccl", "embedding-compression", "extra"]
    assert isinstance(ModelCard(str(card)), ModelCard)


def test_dense_models_push_as_before(hub_server: HubServer) -> None:
    torch.manual_seed(0)
    dense = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=1, n_head=2, n_positions=16))
    dense.push_to_hub("dccl-tester/dense-gpt2")
    files = hub_server.files("dccl-tester/dense-gpt2")
    assert "model.safetensors" in files
    metadata, _ = read_card(hub_server, "dccl-tester/dense-gpt2")
    assert "dccl" not in (metadata.get("tags") or [])
    with pytest.raises(TypeError, match="only accepted for dccl-compressed models"):
        dense.push_to_hub("dccl-tester/dense-gpt2", base_model="openai-community/gpt2")
