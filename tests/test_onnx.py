"""ONNX export: both PyTorch exporters write files onnxruntime runs, matching PyTorch, with the codes packed."""

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import llama_config
from torch import nn

from dccl_hf import CompressedEmbedding, export_onnx
from dccl_hf.packing import packed_row_bytes

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

VOCAB = 32000
DIM = 32
NUM_CODEBOOKS = 4
PADDING = 0
CODEBOOK_SIZES = [2, 16, 256]
EXPORTERS = [pytest.param(True, id="dynamo"), pytest.param(False, id="torchscript")]


def compressed_embedding(codebook_size: int, scale: float = 1.0) -> CompressedEmbedding:
    generator = torch.Generator().manual_seed(codebook_size)
    codes = torch.randint(codebook_size, (VOCAB, NUM_CODEBOOKS), generator=generator)
    codebook = torch.randn(NUM_CODEBOOKS, codebook_size, DIM, generator=generator) * scale
    return CompressedEmbedding.from_codes(codes, codebook, padding_idx=PADDING)


def build_model(kind: str, codebook_size: int) -> nn.Module:
    from transformers import BertConfig, BertModel, LlamaForCausalLM

    if kind == "bert":
        config = BertConfig(
            vocab_size=VOCAB,
            hidden_size=DIM,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=32,
            pad_token_id=PADDING,
        )
        model = BertModel(config)
    else:
        config = llama_config(VOCAB, DIM, pad_token_id=PADDING, bos_token_id=1, eos_token_id=2)
        model = LlamaForCausalLM(config)
    # Rows of the size transformers initialises them with (std 0.02), so that logits are of order one.
    model.resize_with_codes(compressed_embedding(codebook_size, scale=0.02 / NUM_CODEBOOKS**0.5))
    return model.eval()


def run_onnxruntime(path: Path, ids: torch.Tensor) -> np.ndarray:
    """The file's first output for `ids` (and an all-ones attention mask where the file takes one)."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return session.run(None, {value.name: inputs[value.name].numpy() for value in session.get_inputs()})[0]


def new_ids() -> torch.Tensor:
    """Ids of another shape than the example's (the batch and sequence axes are dynamic), the padding id included."""
    ids = torch.randint(VOCAB, (3, 5), generator=torch.Generator().manual_seed(1))
    ids[0, 0] = ids[2, 4] = PADDING
    return ids


def assert_keeps_packed_codes(path: Path, codebook_size: int) -> None:
    """The file holds the packed uint8 codes and is much smaller than the dense fp32 table."""
    graph = onnx.load(str(path)).graph
    shapes = [
        tuple(tensor.dims) for tensor in graph.initializer if tensor.data_type == onnx.TensorProto.UINT8
    ]
    assert (VOCAB, packed_row_bytes(NUM_CODEBOOKS, codebook_size)) in shapes
    assert path.stat().st_size < VOCAB * DIM * 4 / 2


@pytest.mark.parametrize("codebook_size", CODEBOOK_SIZES)
@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("opset_version", [17, 18])
def test_compressed_embedding_runs_in_onnxruntime(
    tmp_path: Path, codebook_size: int, dynamo: bool, opset_version: int
) -> None:
    module = compressed_embedding(codebook_size)
    path = export_onnx(module, tmp_path / "embedding.onnx", dynamo=dynamo, opset_version=opset_version)
    ids = new_ids()
    actual = run_onnxruntime(path, ids)
    np.testing.assert_allclose(actual, module(ids).detach().numpy(), rtol=0, atol=1e-5)
    assert np.count_nonzero(actual[0, 0]) == 0  # the padding row
    assert_keeps_packed_codes(path, codebook_size)


@pytest.mark.parametrize("codebook_size", CODEBOOK_SIZES)
@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("kind", ["bert", "llama-tied"])
def test_compressed_model_runs_in_onnxruntime(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str, codebook_size: int, dynamo: bool
) -> None:
    if kind == "llama-tied" and not dynamo:
        request.applymarker(
            pytest.mark.xfail(
                reason="the TorchScript exporter records the tied head's token blocks with the example's sizes "
                "(a Split of the traced size fails on other lengths in onnxruntime)",
                strict=True,
            )
        )
    if kind == "llama-tied" and dynamo and codebook_size == 256:
        request.applymarker(
            pytest.mark.xfail(
                reason="the dynamo exporter folds the tied head's byte-table indices at K=256 into an int64 "
                "constant larger than the packed codes, so the file exceeds half the dense table",
                strict=True,
            )
        )
    model = build_model(kind, codebook_size)
    path = export_onnx(model, tmp_path / "model.onnx", dynamo=dynamo)
    ids = new_ids()
    actual = run_onnxruntime(path, ids)
    with torch.no_grad():
        output = model(input_ids=ids)
    expected = output.logits if kind == "llama-tied" else output.last_hidden_state
    np.testing.assert_allclose(actual, expected.numpy(), rtol=0, atol=1e-5)
    assert_keeps_packed_codes(path, codebook_size)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_named_inputs_and_the_lowest_opset(tmp_path: Path, dynamo: bool) -> None:
    model = build_model("bert", 16)
    ids = new_ids()
    inputs = {"input_ids": ids, "attention_mask": (ids != PADDING).long()}
    path = export_onnx(model, tmp_path / "bert.onnx", inputs, dynamo=dynamo, opset_version=17)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [value.name for value in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert session.get_outputs()[0].name == "last_hidden_state"
    with torch.no_grad():
        expected = model(**inputs).last_hidden_state
    actual = session.run(["last_hidden_state"], {name: tensor.numpy() for name, tensor in inputs.items()})[0]
    np.testing.assert_allclose(actual, expected.numpy(), rtol=0, atol=1e-5)


def test_export_keeps_the_training_mode_and_writes_nothing_on_bad_input(tmp_path: Path) -> None:
    module = compressed_embedding(16).train()
    export_onnx(module, tmp_path / "embedding.onnx")
    assert module.training
    with pytest.raises(ValueError, match=r"\.onnx"):
        export_onnx(module, tmp_path / "embedding.bin")
    with pytest.raises(ValueError, match="one input"):
        export_onnx(module, tmp_path / "other.onnx", {"input_ids": new_ids(), "attention_mask": new_ids()})
    with pytest.raises(ValueError, match="vocabulary size"):
        export_onnx(nn.Linear(2, 2), tmp_path / "linear.onnx")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["embedding.onnx"]


def test_a_file_that_does_not_match_pytorch_is_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = compressed_embedding(16)
    original = onnxruntime.InferenceSession.run

    def shifted_run(self: object, *args: object, **kwargs: object) -> list[np.ndarray]:
        return [output + 1e-3 for output in original(self, *args, **kwargs)]

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", shifted_run)
    with pytest.raises(ValueError, match="differs from PyTorch"):
        export_onnx(module, tmp_path / "embedding.onnx")
    assert list(tmp_path.iterdir()) == []


def test_cli_exports_an_artifact_and_a_compressed_model(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from dccl_hf.cli import main

    module = compressed_embedding(16)
    module.save_pretrained(tmp_path / "artifact")
    assert main(["export-onnx", str(tmp_path / "artifact"), "-o", str(tmp_path / "embedding.onnx")]) == 0
    ids = new_ids()
    np.testing.assert_allclose(
        run_onnxruntime(tmp_path / "embedding.onnx", ids), module(ids).detach().numpy(), rtol=0, atol=1e-5
    )

    model = build_model("llama-tied", 16)
    model.save_pretrained(tmp_path / "model")
    arguments = ["export-onnx", str(tmp_path / "model"), "-o", str(tmp_path / "model.onnx"), "--opset", "18"]
    assert main(arguments) == 0
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    np.testing.assert_allclose(
        run_onnxruntime(tmp_path / "model.onnx", ids), expected.numpy(), rtol=0, atol=1e-5
    )
    assert "Wrote" in capsys.readouterr().out

    assert main(arguments) == 2  # the file exists
    assert "--overwrite" in capsys.readouterr().err
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text('{"model_type": "llama"}')
    assert main(["export-onnx", str(tmp_path / "plain"), "-o", str(tmp_path / "plain.onnx")]) == 1
    assert "compress it first" in capsys.readouterr().err
    assert not (tmp_path / "plain.onnx").exists()
