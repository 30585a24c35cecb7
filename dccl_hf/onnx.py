"""Export a `CompressedEmbedding` or a compressed transformers model to ONNX, keeping the packed codes.

The file stores the codes packed (uint8) and the codebook, and unpacks the looked-up rows in the graph, so it is
as small as the compressed module. `export_onnx` runs either of PyTorch's exporters (`dynamo=True`, the
default, or the TorchScript one), with batch and sequence dimensions dynamic, and checks the file with
onnxruntime when it is installed: the file must run and reproduce the module's outputs on the example inputs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dccl_hf.artifacts import LIBRARY_NAME
from dccl_hf.embedding import CompressedEmbedding
from dccl_hf.files import sibling_temporary
from dccl_hf.integration import QUANT_METHOD

logger = logging.getLogger(__name__)

#: The opset written by default: the lowest that both exporters and onnxruntime handle for every model tested.
DEFAULT_OPSET = 18
#: Largest absolute difference between onnxruntime's outputs and PyTorch's that the check accepts.
CHECK_TOLERANCE = 1e-4
#: Shape of the token ids used when no example inputs are given.
DEFAULT_IDS_SHAPE = (2, 8)

ExampleInputs = torch.Tensor | Mapping[str, torch.Tensor]


class _TensorOutputs(nn.Module):
    """Calls the model with named inputs given positionally and returns its tensor outputs as a tuple.

    Exporters need positional tensors in and tensors out; a transformers model returns a `ModelOutput`
    (and, unless told otherwise, a key-value cache that has no ONNX form).
    """

    def __init__(self, model: nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(_named_tensors(self.model(**self.call_kwargs(tensors))).values())

    def call_kwargs(self, tensors: tuple[torch.Tensor, ...]) -> dict[str, Any]:
        """The model's keyword arguments: the named tensors, a `ModelOutput` and no key-value cache."""
        kwargs: dict[str, Any] = dict(zip(self.input_names, tensors, strict=True))
        if _is_transformers_model(self.model):
            kwargs["return_dict"] = True
            if getattr(self.model.config, "use_cache", None) is not None:
                kwargs["use_cache"] = False
        return kwargs


def export_onnx(
    model_or_module: nn.Module,
    path: str | os.PathLike[str],
    example_inputs: ExampleInputs | None = None,
    *,
    dynamo: bool = True,
    opset_version: int = DEFAULT_OPSET,
    check: bool = True,
) -> Path:
    """Write `model_or_module` to the ONNX file `path` and return the path.

    `example_inputs` are token ids (a tensor; a transformers model also gets an all-ones ``attention_mask``)
    or named model inputs (``{"input_ids": ..., "attention_mask": ...}``); by default, random ids of shape
    (2, 8) below the vocabulary size. Their first two dimensions (batch, sequence) are dynamic in the file, and
    the graph's inputs and outputs carry their names (``input_ids``, ``attention_mask``; ``logits``,
    ``last_hidden_state``…, or ``embeddings`` for a `CompressedEmbedding`). `dynamo` picks PyTorch's exporter (`torch.export`-based, or False for the TorchScript one). With
    `check` and onnxruntime installed, the file is run on the example inputs and must match PyTorch within
    `CHECK_TOLERANCE`, else nothing is written and a `ValueError` says by how much it differs.
    The module is exported in evaluation mode and left in the mode it had.
    """
    if not isinstance(model_or_module, nn.Module):
        raise TypeError(f"export_onnx exports a torch.nn.Module, got {type(model_or_module).__name__}.")
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"the ONNX file name must end with .onnx, got {path}.")
    inputs = _named_inputs(model_or_module, example_inputs)
    was_training = model_or_module.training
    model_or_module.eval()
    try:
        wrapper = _TensorOutputs(model_or_module, list(inputs)).eval()
        with torch.no_grad():
            expected = _named_tensors(model_or_module(**wrapper.call_kwargs(tuple(inputs.values()))))
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = sibling_temporary(path)
        try:
            _run_exporter(
                wrapper,
                tuple(inputs.values()),
                list(expected),
                temporary,
                dynamo=dynamo,
                opset_version=opset_version,
            )
            if check:
                _check_with_onnxruntime(temporary, inputs, expected, dynamo=dynamo)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    finally:
        model_or_module.train(was_training)
    logger.info("wrote %s (%.1f MB, opset %d)", path, path.stat().st_size / 1e6, opset_version)
    return path


def _run_exporter(
    wrapper: _TensorOutputs,
    args: tuple[torch.Tensor, ...],
    output_names: list[str],
    path: Path,
    *,
    dynamo: bool,
    opset_version: int,
) -> None:
    names = wrapper.input_names
    if dynamo:
        dims = [{axis: torch.export.Dim.DYNAMIC for axis in range(min(arg.ndim, 2))} for arg in args]
        shapes: dict[str, Any] = {"dynamic_shapes": (tuple(dims),)}
    else:
        axes = {
            name: {0: "batch", 1: "sequence"} for name, arg in zip(names, args, strict=True) if arg.ndim >= 2
        }
        axes |= {name: {0: "batch"} for name, arg in zip(names, args, strict=True) if arg.ndim == 1}
        # Folding would store the tied head's unpacked codes, (V, M) int64, instead of computing them from the
        # packed ones; onnxruntime folds constants itself when it loads the file.
        shapes = {"dynamic_axes": axes, "do_constant_folding": False}
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            dynamo=dynamo,
            opset_version=opset_version,
            input_names=names,
            output_names=output_names,
            external_data=False,
            **shapes,
        )


def _check_with_onnxruntime(
    path: Path, inputs: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], *, dynamo: bool
) -> None:
    """Run the file on `inputs` with onnxruntime (when installed) and compare with PyTorch's outputs."""
    try:
        import onnxruntime
    except ImportError:
        logger.info("onnxruntime is not installed: the ONNX file was not checked")
        return
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(list(expected), {name: tensor.cpu().numpy() for name, tensor in inputs.items()})
    for (name, reference), actual in zip(expected.items(), outputs, strict=True):
        difference = (
            (torch.from_numpy(actual) - reference.cpu()).abs().max().item() if reference.numel() else 0.0
        )
        logger.info("onnxruntime output %s differs from PyTorch by at most %.3g", name, difference)
        if not difference <= CHECK_TOLERANCE:
            raise ValueError(
                f"onnxruntime's output {name!r} differs from PyTorch's by {difference:.3g} (tolerance "
                f"{CHECK_TOLERANCE}), so the file was not written; try dynamo={not dynamo} or another opset_version."
            )


def _named_inputs(model: nn.Module, example_inputs: ExampleInputs | None) -> dict[str, torch.Tensor]:
    if example_inputs is None:
        vocab = _vocab_size(model)
        example_inputs = torch.randint(vocab, DEFAULT_IDS_SHAPE, generator=torch.Generator().manual_seed(0))
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = {"input_ids": example_inputs}
        if _is_transformers_model(model):
            # Served models get a mask; without one some models trace ops that have no ONNX form (aten::diff).
            example_inputs["attention_mask"] = torch.ones_like(example_inputs["input_ids"])
    if not isinstance(example_inputs, Mapping) or not all(
        isinstance(name, str) and isinstance(value, torch.Tensor) for name, value in example_inputs.items()
    ):
        raise TypeError(
            "example_inputs must be a tensor of token ids or a mapping of input names to tensors, "
            f"got {type(example_inputs).__name__}."
        )
    if not example_inputs:
        raise ValueError("example_inputs is empty: give at least the token ids.")
    if isinstance(model, CompressedEmbedding) and list(example_inputs) != ["input_ids"]:
        raise ValueError(
            f"a CompressedEmbedding takes one input, the token ids; got inputs {sorted(example_inputs)}."
        )
    return dict(example_inputs)


def _vocab_size(model: nn.Module) -> int:
    if isinstance(model, CompressedEmbedding):
        return model.num_embeddings
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if not isinstance(vocab, int):
        raise ValueError(
            f"cannot tell the vocabulary size of {type(model).__name__}: pass example_inputs (token ids)."
        )
    return vocab


def _is_transformers_model(model: nn.Module) -> bool:
    return hasattr(model, "config") and hasattr(model, "can_generate")


def _named_tensors(output: Any) -> dict[str, torch.Tensor]:
    """The tensors of a module's output by name: a `ModelOutput`'s keys (the cache and other non-tensors
    dropped), ``embeddings`` for a lone tensor, ``output_<i>`` for the items of a tuple."""
    if isinstance(output, torch.Tensor):
        return {"embeddings": output}
    if isinstance(output, Mapping):
        items = list(output.items())
    elif isinstance(output, tuple | list):
        items = [(f"output_{index}", value) for index, value in enumerate(output)]
    else:
        raise TypeError(
            f"cannot export a module that returns {type(output).__name__}; it must return tensors."
        )
    return {name: value for name, value in items if isinstance(value, torch.Tensor)}


def load_compressed(directory: str | os.PathLike[str]) -> nn.Module:
    """What `dccl-hf export-onnx` exports from a local directory: a `CompressedEmbedding` artifact, or a
    transformers model saved with compressed embeddings (its class from the config's ``architectures``)."""
    path = Path(directory)
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{path} has no readable config.json ({error}); give a directory saved by dccl_hf."
        ) from error
    if isinstance(config, dict) and config.get("library_name") == LIBRARY_NAME:
        return CompressedEmbedding.from_pretrained(path)
    quantization = config.get("quantization_config") if isinstance(config, dict) else None
    if not isinstance(quantization, dict) or quantization.get("quant_method") != QUANT_METHOD:
        raise ValueError(
            f"{path} is neither a dccl_hf artifact nor a model with dccl-compressed embeddings; compress it "
            "first (`dccl-hf compress`, or resize_with_codes and save_pretrained)."
        )
    import transformers

    architectures = config.get("architectures") or ["AutoModel"]
    model_class = getattr(transformers, architectures[0], None)
    if model_class is None:
        raise ValueError(
            f"transformers has no model class {architectures[0]!r} (from {path / 'config.json'})."
        )
    return model_class.from_pretrained(path)
