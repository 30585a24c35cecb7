"""resize_with_codes on tiny random GPT-2, Llama (tied and untied) and BERT-MLM models: swap, tied head,
save → from_pretrained in a fresh process, generate, dequantize, bf16, resizing, Trainer, errors."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tiny_models import llama_config
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaForCausalLM,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
)

import dccl_hf
from dccl_hf import CompressedEmbedding
from dccl_hf.integration.config import DcclConfig
from dccl_hf.integration.guard import IMPORT_HINT_KEY
from dccl_hf.integration.layer import CompressedLMHead

VOCAB, HIDDEN = 120, 32
KINDS = ["gpt2", "llama-tied", "llama-untied", "bert"]
AUTO = {
    "gpt2": "AutoModelForCausalLM",
    "llama-tied": "AutoModelForCausalLM",
    "llama-untied": "AutoModelForCausalLM",
}
AUTO["bert"] = "AutoModelForMaskedLM"
#: High bit rate for these tables: M·K > V, so the learned codes reproduce the tiny tables almost exactly.
HIGH_RATE = {"num_codebooks": 4, "codebook_size": 64, "progress": False, "max_iterations": 3, "seed": 0}


def build(kind: str) -> PreTrainedModel:
    torch.manual_seed(0)
    if kind == "gpt2":
        config = GPT2Config(
            vocab_size=VOCAB,
            n_embd=HIDDEN,
            n_layer=2,
            n_head=2,
            n_positions=32,
            bos_token_id=0,
            eos_token_id=0,
        )
        return GPT2LMHeadModel(config).eval()
    if kind.startswith("llama"):
        config = llama_config(VOCAB, HIDDEN, tied=kind == "llama-tied", bos_token_id=1, eos_token_id=2)
        return LlamaForCausalLM(config).eval()
    model = BertForMaskedLM(
        BertConfig(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=32,
        )
    ).eval()
    with torch.no_grad():
        model.get_output_embeddings().bias.normal_()  # a non-trivial head bias must survive
    return model


def input_ids() -> torch.Tensor:
    return torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))


def logits(model: PreTrainedModel) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids()).logits


@pytest.fixture(scope="module")
def compressed() -> dict[str, tuple[torch.Tensor, PreTrainedModel]]:
    """Each kind: (dense logits, model compressed at a high bit rate)."""
    result = {}
    for kind in KINDS:
        model = build(kind)
        dense = logits(model)
        returned = model.resize_with_codes(**HIGH_RATE)
        assert returned is model.get_input_embeddings()
        result[kind] = (dense, model)
    return result


@pytest.mark.parametrize("kind", KINDS)
def test_compressed_logits_match_dense(compressed: dict, kind: str) -> None:
    dense, model = compressed[kind]
    embedding = model.get_input_embeddings()
    assert isinstance(embedding, CompressedEmbedding)
    assert (embedding.num_codebooks, embedding.codebook_size) == (4, 64)
    torch.testing.assert_close(logits(model), dense, atol=1e-3, rtol=1e-3)
    head = model.get_output_embeddings()
    config = model.config.quantization_config
    assert isinstance(config, DcclConfig)
    assert config.to_dict()["quant_method"] == "dccl"
    if kind == "llama-untied":
        assert type(head) is nn.Linear
        assert not config.shared_head
    else:
        assert isinstance(head, CompressedLMHead)
        assert head.embedding is embedding
        assert config.shared_head
    assert config.reconstruction["relative_squared_error"] < 1e-6


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_plain_function_and_precompressed_module(compressed: dict, kind: str) -> None:
    _, model = compressed[kind]
    fresh = build(kind)
    swapped = dccl_hf.resize_with_codes(fresh, copy.deepcopy(model.get_input_embeddings()))
    assert swapped is fresh.get_input_embeddings()
    torch.testing.assert_close(logits(fresh), logits(model))


def test_checkpoint_holds_codes_not_dense_tables(compressed: dict, tmp_path: Path) -> None:
    for kind in KINDS:
        _, model = compressed[kind]
        model.save_pretrained(tmp_path / kind)
        saved = json.loads((tmp_path / kind / "config.json").read_text())["quantization_config"]
        assert saved["quant_method"] == "dccl"
        assert (saved["num_codebooks"], saved["codebook_size"]) == (4, 64)
        assert saved["shared_head"] is (kind != "llama-untied")
        with safe_open(tmp_path / kind / "model.safetensors", "pt") as file:
            shapes = {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}  # noqa: SIM118
        (embedding_name,) = saved["modules"]
        assert shapes[f"{embedding_name}.packed_codes"] == (VOCAB, 3)  # 4 codes × 6 bits
        assert shapes[f"{embedding_name}.codebook"] == (4, 64, HIDDEN)
        dense_tables = sorted(
            key for key, shape in shapes.items() if shape in {(VOCAB, HIDDEN), (HIDDEN, VOCAB)}
        )
        assert dense_tables == (["lm_head.weight"] if kind == "llama-untied" else [])
        # Load guards: empty tensors under the dense weight name (so plain transformers fails) and a hint key.
        guards = {f"{embedding_name}.weight", IMPORT_HINT_KEY}
        assert {key: shapes[key] for key in guards} == dict.fromkeys(guards, (0,))
        assert sum(math.prod(shapes[key]) for key in guards) <= 4  # no dense data in the guards
        assert not guards & set(model.state_dict())  # only the saved checkpoint carries them
        checkpoint = load_file(tmp_path / kind / "model.safetensors")
        assert model.load_state_dict(checkpoint, strict=False).unexpected_keys == []  # as Trainer resumes


def test_from_pretrained_in_a_fresh_process(compressed: dict, tmp_path: Path) -> None:
    expected = {}
    for kind in KINDS:
        _, model = compressed[kind]
        model.save_pretrained(tmp_path / kind)
        expected[kind] = logits(model)
    torch.save(input_ids(), tmp_path / "ids.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        import dccl_hf
        import transformers
        root = sys.argv[1]
        ids = torch.load(root + "/ids.pt")
        out = {{}}
        for kind, auto in {AUTO!r}.items():
            model = getattr(transformers, auto).from_pretrained(root + "/" + kind)
            head = type(model.get_output_embeddings()).__name__
            with torch.no_grad():
                out[kind] = (model(ids).logits, type(model.get_input_embeddings()).__name__, head)
            if kind == "gpt2":
                out["generated"] = model.generate(ids[:, :4], max_new_tokens=5, do_sample=False)
        torch.save(out, root + "/out.pt")
        """
    )
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        check=True,
        env=environment,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert "LOAD REPORT" not in run.stderr  # the load guards are expected keys: no unexpected/missing report
    out = torch.load(tmp_path / "out.pt")
    for kind in KINDS:
        reloaded, embedding_type, head_type = out[kind]
        assert torch.equal(reloaded, expected[kind]), kind
        assert embedding_type == "CompressedEmbedding"
        assert head_type == ("Linear" if kind == "llama-untied" else "CompressedLMHead")
    gpt2 = compressed["gpt2"][1]
    assert torch.equal(out["generated"], gpt2.generate(input_ids()[:, :4], max_new_tokens=5, do_sample=False))


def test_plain_transformers_refuses_the_checkpoint_without_import(compressed: dict, tmp_path: Path) -> None:
    for kind in KINDS:
        compressed[kind][1].save_pretrained(tmp_path / kind)
    script = textwrap.dedent(
        f"""
        import json, logging, sys
        import transformers
        assert "dccl_hf" not in sys.modules
        root = sys.argv[1]
        messages = []
        handler = logging.Handler()
        handler.emit = lambda record: messages.append(record.getMessage())
        logging.getLogger("transformers").addHandler(handler)
        out = {{}}
        for kind, auto in {AUTO!r}.items():
            for name in (auto, "AutoModel"):
                messages.clear()
                try:
                    getattr(transformers, name).from_pretrained(root + "/" + kind)
                except RuntimeError as error:
                    out[kind + "/" + name] = "\\n".join([str(error), *messages])
                else:
                    out[kind + "/" + name] = None
        assert "dccl_hf" not in sys.modules
        print(json.dumps(out))
        """
    )
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        check=True,
        env=environment,
        timeout=300,
        capture_output=True,
        text=True,
    )
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(out) == 2 * len(KINDS)
    for key, message in out.items():
        assert message is not None, f"{key} loaded without dccl_hf"
        assert "ignore_mismatched_sizes" in message, key
        assert "import_dccl_hf" in message, key  # the hint key, listed in the load report
        assert "torch.Size([0])" in message, key


@pytest.mark.parametrize("kind", ["gpt2", "llama-tied", "llama-untied"])
def test_generate_matches_the_dequantized_model(compressed: dict, kind: str) -> None:
    _, model = compressed[kind]
    prompt = input_ids()[:, :4]
    generated = model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert generated.shape == (2, 10)
    dense = copy.deepcopy(model).dequantize()
    assert torch.equal(dense.generate(prompt, max_new_tokens=6, do_sample=False), generated)


@pytest.mark.parametrize("kind", KINDS)
def test_dequantize_returns_an_ordinary_dense_model(compressed: dict, kind: str, tmp_path: Path) -> None:
    _, model = compressed[kind]
    expected = logits(model)
    dense = copy.deepcopy(model).dequantize()
    embedding, head = dense.get_input_embeddings(), dense.get_output_embeddings()
    assert type(embedding) is nn.Embedding
    assert type(head) is nn.Linear
    assert (head.weight is embedding.weight) is (kind != "llama-untied")
    assert getattr(dense.config, "quantization_config", None) is None
    torch.testing.assert_close(logits(dense), expected)
    dense.save_pretrained(tmp_path)
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())
    with safe_open(tmp_path / "model.safetensors", "pt") as file:
        assert IMPORT_HINT_KEY not in file.keys()  # noqa: SIM118
        assert all(file.get_slice(key).get_shape() != [0] for key in file.keys())  # noqa: SIM118
    auto = AutoModelForMaskedLM if kind == "bert" else AutoModelForCausalLM
    torch.testing.assert_close(logits(auto.from_pretrained(tmp_path)), expected)


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_half_precision_load_keeps_integer_codes(compressed: dict, kind: str, tmp_path: Path) -> None:
    _, model = compressed[kind]
    model.save_pretrained(tmp_path)
    auto = AutoModelForMaskedLM if kind == "bert" else AutoModelForCausalLM
    for dtype in (torch.bfloat16, torch.float16):
        loaded = auto.from_pretrained(tmp_path, dtype=dtype)
        embedding = loaded.get_input_embeddings()
        assert embedding.codebook.dtype == dtype
        assert embedding.packed_codes.dtype == torch.uint8
        assert torch.equal(embedding.codes, model.get_input_embeddings().codes)
        torch.testing.assert_close(logits(loaded).float(), logits(model), atol=0.1, rtol=0.05)


def test_base_model_class_loads_a_head_model_checkpoint(compressed: dict, tmp_path: Path) -> None:
    _, model = compressed["gpt2"]
    model.save_pretrained(tmp_path)
    base = AutoModel.from_pretrained(tmp_path)
    assert isinstance(base.get_input_embeddings(), CompressedEmbedding)
    with torch.no_grad():
        expected = model.transformer(input_ids()).last_hidden_state
        torch.testing.assert_close(base(input_ids()).last_hidden_state, expected)


@pytest.mark.parametrize("kind", ["gpt2", "llama-untied"])
def test_new_num_tokens_adds_rows_with_the_mean_embedding_codes(kind: str) -> None:
    model = build(kind)
    mean = model.get_input_embeddings().weight.detach().mean(0)
    model.resize_with_codes(**HIGH_RATE, new_num_tokens=VOCAB + 5)
    embedding = model.get_input_embeddings()
    assert embedding.num_embeddings == VOCAB + 5
    assert model.config.vocab_size == VOCAB + 5
    new_codes = embedding.codes[VOCAB:]
    assert torch.equal(new_codes, new_codes[:1].expand(5, -1))
    with torch.no_grad():
        rows = embedding.reconstruct()
    distances = torch.linalg.vector_norm(rows - mean, dim=1)
    assert distances[VOCAB] <= distances[:VOCAB].min()  # the codes encode the mean, not some old row
    out = model(torch.tensor([[VOCAB + 4, 3]])).logits
    assert out.shape == (1, 2, VOCAB + 5)
    assert model.get_output_embeddings().out_features == VOCAB + 5


def test_resize_token_embeddings_resizes_a_compressed_model(compressed: dict) -> None:
    model = copy.deepcopy(compressed["bert"][1])
    before = model.get_input_embeddings().codes
    returned = model.resize_token_embeddings(VOCAB + 3, pad_to_multiple_of=8)
    assert returned is model.get_input_embeddings()
    assert returned.num_embeddings == 128
    assert torch.equal(returned.codes[:VOCAB], before)
    head = model.get_output_embeddings()
    assert head.embedding is returned
    assert head.bias.shape == (128,)
    assert model.cls.predictions.bias is head.bias
    assert model(input_ids()).logits.shape[-1] == 128
    smaller = model.resize_with_codes(new_num_tokens=VOCAB - 20)
    assert smaller.num_embeddings == VOCAB - 20
    assert torch.equal(smaller.codes, before[: VOCAB - 20])


def test_tie_weights_keeps_the_compressed_head(compressed: dict) -> None:
    model = copy.deepcopy(compressed["llama-tied"][1])
    expected = logits(model)
    model.tie_weights()
    assert isinstance(model.get_output_embeddings(), CompressedLMHead)
    assert model.get_output_embeddings().embedding is model.get_input_embeddings()
    torch.testing.assert_close(logits(model), expected)


def test_trainer_fine_tunes_the_codebook_not_the_codes(compressed: dict, tmp_path: Path) -> None:
    model = copy.deepcopy(compressed["gpt2"][1])
    embedding = model.get_input_embeddings()
    codebook, codes = embedding.codebook.detach().clone(), embedding.packed_codes.clone()
    generator = torch.Generator().manual_seed(2)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(VOCAB, (8, 9), generator=generator)]
    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
    )
    Trainer(model=model, args=arguments, train_dataset=data).train()
    assert not torch.equal(embedding.codebook.detach(), codebook)
    assert torch.equal(embedding.packed_codes, codes)


def test_wrong_shapes_and_arguments_are_clear_errors(compressed: dict) -> None:
    model = build("gpt2")
    wrong = CompressedEmbedding(VOCAB + 1, HIDDEN, 4, 16)
    with pytest.raises(ValueError, match=r"shape \(121, 32\).*\(120, 32\)"):
        model.resize_with_codes(wrong)
    with pytest.raises(ValueError, match="not compressed yet"):
        model.resize_with_codes(new_num_tokens=VOCAB + 1)
    with pytest.raises(TypeError, match="both num_codebooks and codebook_size"):
        model.resize_with_codes(16)
    with pytest.raises(TypeError, match="either a CompressedEmbedding"):
        model.resize_with_codes(CompressedEmbedding(VOCAB, HIDDEN, 4, 16), seed=1)
    with pytest.raises(ValueError, match="already compressed"):
        copy.deepcopy(compressed["gpt2"][1]).resize_with_codes(16, 64)
    with pytest.raises(ValueError, match="new_num_tokens must be a positive integer"):
        copy.deepcopy(compressed["gpt2"][1]).resize_with_codes(new_num_tokens=0)


def test_quantization_config_round_trips_and_rejects_bad_fields(tmp_path: Path) -> None:
    config = DcclConfig(4, 64, modules=["model.embed_tokens"], tied_heads={"lm_head": "model.embed_tokens"})
    saved = config.to_dict()
    assert (saved["bits_per_row"], saved["shared_head"]) == (24, True)
    assert DcclConfig.from_dict(saved).to_dict() == saved
    with pytest.raises(ValueError, match="quant_method='dccl'"):
        DcclConfig(4, 64, quant_method="gptq")
    with pytest.raises(TypeError, match="Unknown DcclConfig fields"):
        DcclConfig(4, 64, group_size=2)
    with pytest.raises(
        ValueError, match=r"not in modules \[\]: \['model.embed_tokens'\].*config.json edited"
    ):
        DcclConfig(4, 64, modules=[], tied_heads={"lm_head": "model.embed_tokens"})
    with pytest.raises(ValueError, match="codebook_size must be a power of two"):
        DcclConfig(4, 60)
    build("gpt2").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="resize_with_codes"):
        AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=DcclConfig(4, 16))


def test_an_edited_modules_list_on_a_tied_model_is_named_as_such(compressed: dict, tmp_path: Path) -> None:
    compressed["llama-tied"][1].save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"]["modules"] = ["model.embed_tokens", "lm_head"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"modules lists \['model.embed_tokens', 'lm_head'\].*config.json was edited"
    ):
        AutoModelForCausalLM.from_pretrained(tmp_path)
