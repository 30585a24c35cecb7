"""Swapping a transformers model's input embeddings (and a tied LM head) for compositional codes.

`resize_with_codes` is the user entry point (also `PreTrainedModel.resize_with_codes` after `import dccl_hf`);
`compress_modules` / `decompress_modules` are the module surgery it shares with the `from_pretrained` quantizer
and `model.dequantize()`. Modules are always found through `get_input_embeddings` / `get_output_embeddings`
and addressed by their names in `named_modules()`, never by a hard-coded attribute path.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub.utils import HFValidationError, validate_repo_id
from torch import nn

from dccl_hf._compat import allow_dtype_casts
from dccl_hf.checks import is_integer
from dccl_hf.embedding import CompressedEmbedding
from dccl_hf.fidelity.calibration import (
    Calibration,
    Tokenizer,
    calibration_texts,
    token_counts,
)
from dccl_hf.fidelity.distill import distill_codebook
from dccl_hf.fidelity.head import DEFAULT_FLOOR, head_second_moment, tied_head_weights
from dccl_hf.fidelity.sensitivity import embedding_sensitivity
from dccl_hf.integration import QUANT_METHOD
from dccl_hf.integration.config import DcclConfig
from dccl_hf.integration.embeddings import (
    TransformedCompressedEmbedding,
    check_compressible,
    compressed_like,
    empty_compressed_like,
)
from dccl_hf.integration.guard import skip_guards_in_load_state_dict
from dccl_hf.integration.layer import CompressedLMHead
from dccl_hf.integration.tying import follow_input_embeddings
from dccl_hf.learning import compress
from dccl_hf.learning.additive import beam_search
from dccl_hf.metrics import reconstruction_report

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

#: Beam width used to encode the mean embedding for rows added by `new_num_tokens`.
MEAN_ROW_BEAM = 16

#: Seconds of code learning for a tied head calibrated on texts, unless `time_budget` is given: the table of a
#: small LM (SmolLM2-135M: 49,152×576 at M=128, K=16) is learned in minutes on 2 CPU cores, and the whole call
#: (head metric, codes, distillation) stays within about 20 minutes there.
TIED_HEAD_COMPRESS_BUDGET = 600.0
#: Distillation defaults for a tied head: its error shows in the logits only, so the loss is the KL divergence of
#: the next-token distributions; batches are small because every token carries a vocabulary of logits, and the
#: run is held to a time budget (unless `steps` or `time_budget` are given).
TIED_HEAD_DISTILLATION: dict[str, Any] = {"loss": "logits", "batch_size": 8, "time_budget": 300.0}

#: Reconstruction figures kept in the quantization config (and shown on the model card).
METRIC_KEYS = ("mean_euclidean_distance", "max_distance", "relative_squared_error", "mean_cosine_similarity")


def resize_with_codes(
    model: PreTrainedModel,
    num_codebooks: int | CompressedEmbedding | None = None,
    codebook_size: int | None = None,
    *,
    new_num_tokens: int | None = None,
    tokenizer: Tokenizer | None = None,
    calibration: Calibration | None = None,
    distill: bool | None = None,
    distill_options: dict[str, Any] | None = None,
    sensitivity: bool | None = None,
    sensitivity_options: dict[str, Any] | None = None,
    **compress_options: Any,
) -> CompressedEmbedding:
    """Replace `model`'s input embeddings by a `CompressedEmbedding` and return it.

    With a `calibration` corpus (texts, a text file, or token counts) and the model's `tokenizer`, rows are
    weighted by token frequency (`dccl_hf.fidelity.row_weights_from_calibration`). When texts are given, the
    codes are learned under what the model sees of the table's error, measured on them (`sensitivity=False`
    skips it, `sensitivity_options` go to the measurement): for untied embeddings the model's sensitivity to
    its input embeddings (`dccl_hf.fidelity.embedding_sensitivity`); for a head tied to them, which reads every
    row at every position, the second moment of the hidden states the head receives
    (`dccl_hf.fidelity.head_second_moment`), every row weighted by a floor plus its frequency
    (`dccl_hf.fidelity.tied_head_weights`, ``sensitivity_options={"floor": ...}``). The codebook is then
    distilled against a frozen copy of the original model on them (`distill=False` skips it; `distill_options`
    go to `dccl_hf.fidelity.distill_codebook`). Distillation holds both models in memory.

    - ``resize_with_codes(model, M, K, **compress_options)`` learns codes from the model's own embedding matrix
      with `dccl_hf.compress` (options such as ``weights``, ``seed``, ``time_budget`` go to it);
    - ``resize_with_codes(model, compressed)`` swaps in a `CompressedEmbedding` learned earlier, whose
      (num_embeddings, embedding_dim) must match the model's embeddings;
    - ``resize_with_codes(model, new_num_tokens=N)`` resizes an already compressed model.

    With `new_num_tokens` the vocabulary is resized in the same call: rows are dropped from the end or added
    with the codes of the mean embedding. A head tied to the input embeddings becomes a `CompressedLMHead`
    sharing the same codes and codebook; an untied head stays dense (and is resized like
    `resize_token_embeddings` does). The model's config gains a `DcclConfig` quantization config, so
    `save_pretrained` / `from_pretrained` (after ``import dccl_hf``) round-trip it.
    """
    current = model.get_input_embeddings()
    if current is None:
        raise ValueError(f"{type(model).__name__} has no input embeddings (get_input_embeddings() is None).")
    check_compressible(current)
    dense = None if isinstance(current, CompressedEmbedding) else _dense_weight(current)
    texts = calibration_texts(calibration) if calibration is not None else None
    head = model.get_output_embeddings()
    head_is_tied = head is not None and _is_tied(model, head, current, _module_names(model))
    # Options that only mean something when new codes are learned here.
    learning_only = sorted(compress_options) + [
        name
        for name, value in (("sensitivity", sensitivity), ("sensitivity_options", sensitivity_options))
        if value
    ]
    if isinstance(num_codebooks, CompressedEmbedding):
        if codebook_size is not None or learning_only:
            raise TypeError(
                "Pass either a CompressedEmbedding or num_codebooks/codebook_size with compress options, not both."
            )
        compressed = _check_matches(num_codebooks, current)
    elif num_codebooks is None and codebook_size is None:
        if dense is not None:
            raise ValueError(
                "The model's input embeddings are not compressed yet: pass num_codebooks and codebook_size "
                "(e.g. model.resize_with_codes(32, 16)) or a CompressedEmbedding."
            )
        if learning_only:
            raise TypeError(f"Options {learning_only} only apply when learning new codes.")
        if new_num_tokens is None:
            return current
        compressed = current
    else:
        if num_codebooks is None or codebook_size is None:
            raise TypeError(
                "Pass both num_codebooks and codebook_size, e.g. model.resize_with_codes(32, 16)."
            )
        if dense is None:
            raise ValueError(
                "The model's input embeddings are already compressed; call model.dequantize() first to learn "
                "new codes, or pass only new_num_tokens to resize them."
            )
        if calibration is not None:
            compress_options |= {
                "tokenizer": tokenizer,
                "calibration": calibration if texts is None else texts,
            }
        if sensitivity is None:
            sensitivity = texts is not None
        if sensitivity:
            if texts is None or tokenizer is None or "metric" in compress_options:
                raise ValueError(
                    "sensitivity=True measures the model on calibration texts: pass tokenizer=... and "
                    "calibration=[...texts], and no metric=."
                )
            compress_options |= _sensitivity_options(
                model, current, head_is_tied, tokenizer, texts, compress_options, sensitivity_options
            )
        if head_is_tied and texts is not None:
            compress_options.setdefault("time_budget", TIED_HEAD_COMPRESS_BUDGET)
        compress_options.setdefault("padding_idx", getattr(current, "padding_idx", None))
        compressed = compress(dense.detach(), num_codebooks, codebook_size, **compress_options)
    if distill is None:
        distill = texts is not None and dense is not None
    if distill and (texts is None or tokenizer is None or dense is None):
        raise ValueError(
            "Codebook distillation needs calibration texts, the model's tokenizer and a dense model to learn "
            "from: pass tokenizer=... and calibration=[...texts] when compressing, or distill=False."
        )
    teacher = copy.deepcopy(model).eval() if distill else None
    if dense is not None:
        compressed = compressed.to(device=dense.device, dtype=dense.dtype)
        compressed.codebook.requires_grad_(current.weight.requires_grad)
        metrics = reconstruction_metrics(dense, compressed)
    else:
        metrics = None
    if new_num_tokens is not None:
        mean_row = dense.mean(0) if dense is not None else _mean_row(compressed)
        compressed = resize_compressed(compressed, new_num_tokens, mean_row)
    compressed = compressed_like(current, compressed)
    config = compress_modules(model, compressed)
    if teacher is not None:
        options = (TIED_HEAD_DISTILLATION if head_is_tied else {}) | (distill_options or {})
        if "steps" in (distill_options or {}):
            options.pop("time_budget", None)
        distill_codebook(teacher, model, tokenizer, texts, **options)
        metrics = reconstruction_metrics(dense, compressed)
    if metrics is not None:
        config.reconstruction = metrics
    return compressed


def _sensitivity_options(
    model: PreTrainedModel,
    current: nn.Module,
    head_is_tied: bool,
    tokenizer: Tokenizer,
    texts: list[str],
    compress_options: dict[str, Any],
    sensitivity_options: dict[str, Any] | None,
) -> dict[str, Any]:
    """The `compress` options that learn the table under what the model sees of its error.

    Untied: the metric of the model's sensitivity to its input embeddings (`embedding_sensitivity`), rows
    weighted by frequency. A head tied to the table reads every row at every position: the metric is the second
    moment of the hidden states the head receives (`head_second_moment`) and every row gets a floor weight
    beside its frequency (`tied_head_weights`; ``sensitivity_options={"floor": ...}`` sets it, the other
    options go to `head_second_moment`).
    """
    options = {"progress": compress_options.get("progress", True)} | (sensitivity_options or {})
    if not head_is_tied:
        return {"metric": embedding_sensitivity(model, tokenizer, texts, **options)}
    if "weights" in compress_options:
        raise TypeError("For a tied head, row weights come from the calibration texts: pass no weights=.")
    floor = options.pop("floor", DEFAULT_FLOOR)
    counts = token_counts(tokenizer, texts, _dense_weight(current).shape[0], progress=options["progress"])
    result = {
        "metric": head_second_moment(model, tokenizer, texts, **options),
        "weights": tied_head_weights(counts, floor=floor),
        "calibration": None,
    }
    if compress_options.get("method", "additive") == "additive":
        result["objective"] = compress_options.get("objective", "squared")  # as calibration weights get it
    return result


def compress_modules(model: PreTrainedModel, compressed: CompressedEmbedding) -> DcclConfig:
    """Install `compressed` as the input embeddings, tie the head if it was tied, and mark the model quantized."""
    head = model.get_output_embeddings()
    embedding_name, head_name = _install_input_embeddings(model, compressed)
    if head is not None and head_name is None and _dense_weight(head).shape[0] != compressed.num_embeddings:
        _resize_dense_head(model, head, compressed.num_embeddings)
    model.config.get_text_config().vocab_size = compressed.num_embeddings
    previous = getattr(model.config, "quantization_config", None)
    config = DcclConfig(
        num_codebooks=compressed.num_codebooks,
        codebook_size=compressed.codebook_size,
        modules=[embedding_name],
        tied_heads={head_name: embedding_name} if head_name else {},
        base_model=_base_model(model, previous),
        reconstruction=getattr(previous, "reconstruction", None),
    )
    _attach_quantizer(model, config)
    return config


def build_compressed_modules(model: PreTrainedModel, config: DcclConfig) -> None:
    """Replace the input embeddings by an empty compressed module for `from_pretrained` to fill.

    The model may be another class than the one saved (e.g. `AutoModel` on a causal-LM checkpoint), so module
    names are matched with or without the base-model prefix, a head is compressed when *this* model ties it,
    and `config` is updated to this model's names.
    """
    names = _module_names(model)
    current = model.get_input_embeddings()
    current_name = names[id(current)]
    prefix = f"{model.base_model_prefix}." if model.base_model_prefix else ""
    aliases = {current_name, current_name.removeprefix(prefix), prefix + current_name}
    if len(config.modules) != 1:
        raise ValueError(
            f"quantization_config.modules lists {config.modules}, but a dccl_hf checkpoint compresses exactly one "
            f"module, the input embeddings ({current_name}), and names a tied head in tied_heads: the checkpoint's "
            "config.json was edited or is damaged; restore it, or compress the original model again."
        )
    if config.modules[0] not in aliases:
        raise ValueError(
            f"This checkpoint compresses {config.modules}, but dccl_hf only rebuilds the input embeddings "
            f"({current_name} in {type(model).__name__}); load it with the model class it was saved from."
        )
    compressed = empty_compressed_like(
        current, config.num_codebooks, config.codebook_size, _dense_weight(current)
    )
    embedding_name, head_name = _install_input_embeddings(model, compressed)
    config.modules = [embedding_name]
    config.tied_heads = {head_name: embedding_name} if head_name else {}
    config.shared_head = bool(head_name)


def init_compressed_modules(model: PreTrainedModel) -> PreTrainedModel:
    """Ready a dense model built from a dccl checkpoint's config for that checkpoint's weights; returns it.

    For loaders other than `from_pretrained` (which does this itself): accelerate's ``init_empty_weights()`` +
    ``AutoModel*.from_config(config)`` then ``load_checkpoint_and_dispatch(model, folder, device_map=...)``, or
    plain `load_state_dict`. The modules named by ``model.config.quantization_config`` become empty compressed
    ones on the model's device (the meta device included), and the model gets the dccl quantizer, as if loaded.
    """
    config = getattr(model.config, "quantization_config", None)
    if isinstance(config, dict) and config.get("quant_method") == QUANT_METHOD:
        config = DcclConfig.from_dict(config)
    if not isinstance(config, DcclConfig):
        raise ValueError(
            f"{type(model).__name__}'s config has no dccl quantization_config: build the model from the config of "
            "a dccl-compressed checkpoint (AutoConfig.from_pretrained(folder)), or compress it with "
            "model.resize_with_codes(...)."
        )
    if isinstance(model.get_input_embeddings(), CompressedEmbedding):
        raise ValueError(f"{type(model).__name__} is already compressed.")
    build_compressed_modules(model, config)
    _attach_quantizer(model, config)
    return model


def _install_input_embeddings(
    model: PreTrainedModel, compressed: CompressedEmbedding
) -> tuple[str, str | None]:
    """Set `compressed` as input embeddings and, if the head is tied to them, a `CompressedLMHead` on it.

    Returns the names of the embedding module and of the tied head (None when the head is untied or absent).
    """
    current = model.get_input_embeddings()
    head = model.get_output_embeddings()
    names = _module_names(model)
    embedding_name = names[id(current)]
    head_name = names[id(head)] if head is not None and _is_tied(model, head, current, names) else None
    tied_keys = _tied_keys_without(model, embedding_name, head_name)
    shared = _modules_sharing(model, current, embedding_name)
    model.set_input_embeddings(compressed)
    separate = sorted(
        name
        for name, module in model.named_modules(remove_duplicate=False)
        if module is compressed and name not in shared
    )
    if separate:
        model.set_input_embeddings(current)
        raise ValueError(
            f"{type(model).__name__}.set_input_embeddings also replaces {separate}, which hold their own table, "
            f"not {embedding_name}'s (e.g. an encoder-decoder with untied embeddings): dccl_hf compresses one "
            "table and would silently discard the others. Tie them first or compress a model that shares them."
        )
    if head_name is not None:
        compressed_head = CompressedLMHead(compressed, bias=_head_bias(head, compressed))
        follow_input_embeddings(model, compressed_head, embedding_name)
        model.set_output_embeddings(compressed_head)
    _set_tied_keys(model, tied_keys)
    return embedding_name, head_name


def decompress_modules(model: PreTrainedModel, config: DcclConfig, dtype: torch.dtype | None = None) -> None:
    """Turn the compressed modules back into dense `nn.Embedding` / tied `nn.Linear` ones."""
    for name in config.modules:
        compressed = model.get_submodule(name)
        dense = compressed.to_embedding()
        if dtype is not None:
            dense = dense.to(dtype)
        dense.weight.requires_grad_(compressed.codebook.requires_grad)
        _replace(model, name, compressed, dense)
        for head_name, source in config.tied_heads.items():
            if source != name:
                continue
            head = model.get_submodule(head_name)
            linear = nn.Linear(
                dense.embedding_dim,
                dense.num_embeddings,
                bias=head.bias is not None,
                device=dense.weight.device,
                dtype=dense.weight.dtype,
            )
            linear.weight = dense.weight
            if head.bias is not None:
                linear.bias = head.bias
            _replace(model, head_name, head, linear)
    for _, module in _pretrained_submodels(model):
        module.__dict__.pop("_tied_weights_keys", None)
    for _, module in _pretrained_submodels(model):
        module.all_tied_weights_keys = module.get_expanded_tied_weights_keys(all_submodels=True)
    model.tie_weights()


def resize_compressed(
    compressed: CompressedEmbedding, new_num_tokens: int, mean_row: torch.Tensor
) -> CompressedEmbedding:
    """Drop rows from the end, or add rows whose codes encode `mean_row`; the codebook is kept."""
    if not is_integer(new_num_tokens) or new_num_tokens < 1:
        raise ValueError(f"new_num_tokens must be a positive integer, got {new_num_tokens!r}.")
    codes = compressed.codes
    if new_num_tokens > compressed.num_embeddings:
        codebook = compressed.codebook.detach().float()
        mean_codes = beam_search(mean_row.to(codebook)[None], codebook, MEAN_ROW_BEAM)
        codes = torch.cat([codes, mean_codes.expand(new_num_tokens - compressed.num_embeddings, -1)])
    padding_idx = compressed.padding_idx
    if padding_idx is not None and padding_idx >= new_num_tokens:
        padding_idx = None
    resized = CompressedEmbedding.from_codes(
        codes[:new_num_tokens], compressed.codebook.detach(), padding_idx
    )
    resized.codebook.requires_grad_(compressed.codebook.requires_grad)
    return resized


def reconstruction_metrics(dense: torch.Tensor, compressed: CompressedEmbedding) -> dict[str, float]:
    """The finite distance and similarity figures of `dccl_hf.metrics.reconstruction_report`, for the config,
    over the rows both tables have (a resize adds rows without an original or drops some)."""
    if isinstance(compressed, TransformedCompressedEmbedding):  # compare the tables, before scale or norm
        compressed = CompressedEmbedding.from_codes(
            compressed.codes, compressed.codebook.detach(), compressed.padding_idx
        )
    rows = min(dense.shape[0], compressed.num_embeddings)
    if rows != compressed.num_embeddings:  # only drops rows, so the mean row it would add rows with is unused
        compressed = resize_compressed(compressed, rows, dense.mean(0))
    report = reconstruction_report(dense[:rows].detach(), compressed).to_dict()
    return {key: float(report[key]) for key in METRIC_KEYS if math.isfinite(report[key])}


def is_compressed(model: nn.Module) -> bool:
    """Whether `model` carries dccl compression (a `DcclConfig` quantization config)."""
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    return isinstance(config, DcclConfig)


def _modules_sharing(model: PreTrainedModel, embedding: nn.Module, embedding_name: str) -> set[str]:
    """Names of the modules that are `embedding`, or whose weight is its weight or tied to it by the model
    (directly or through other tied weights)."""
    tied = {key.removesuffix(".weight") for key in _tied_weights(model, f"{embedding_name}.weight")}
    return {
        name
        for name, module in model.named_modules(remove_duplicate=False)
        if module is embedding or name in tied or _shares_weight(module, embedding)
    }


def _shares_weight(module: nn.Module, embedding: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return weight is not None and weight is getattr(embedding, "weight", None)


def _is_tied(model: PreTrainedModel, head: nn.Module, embedding: nn.Module, names: dict[int, str]) -> bool:
    """Whether `head` shares `embedding`'s table: already compressed, the same weight, or tied by the model's
    mapping (inside `from_pretrained` the weights are tied only after loading)."""
    if isinstance(head, CompressedLMHead):
        return True
    if _shares_weight(head, embedding):
        return True
    return f"{names[id(head)]}.weight" in _tied_weights(model, f"{names[id(embedding)]}.weight")


def _tied_weights(model: PreTrainedModel, weight: str) -> set[str]:
    """`weight` and the weights the model's mapping ties to it, directly or through others (an encoder's and a
    decoder's embeddings and the head all tied to ``shared``)."""
    tied, grown = {weight}, True
    while grown:
        grown = False
        for pair in model.all_tied_weights_keys.items():
            if tied.intersection(pair) and not tied.issuperset(pair):
                tied.update(pair)
                grown = True
    return tied


def _attach_quantizer(model: PreTrainedModel, config: DcclConfig) -> None:
    """Give a model compressed in memory what `from_pretrained` gives a loaded one (dequantize, Trainer, save)."""
    from dccl_hf.integration.quantizer import DcclHfQuantizer

    skip_guards_in_load_state_dict(model)
    model.config.quantization_config = config
    model.hf_quantizer = DcclHfQuantizer(config, pre_quantized=True)
    model.quantization_method = QUANT_METHOD
    allow_dtype_casts(model)


def _dense_weight(module: nn.Module) -> torch.Tensor:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise TypeError(
            f"Expected a dense embedding with a 2-D weight (e.g. nn.Embedding), got {type(module).__name__}."
        )
    return weight


def _check_matches(compressed: CompressedEmbedding, current: nn.Module) -> CompressedEmbedding:
    shape = (
        (current.num_embeddings, current.embedding_dim)
        if isinstance(current, CompressedEmbedding)
        else tuple(_dense_weight(current).shape)
    )
    if (compressed.num_embeddings, compressed.embedding_dim) != shape:
        raise ValueError(
            f"The CompressedEmbedding has shape ({compressed.num_embeddings}, {compressed.embedding_dim}) but the "
            f"model's input embeddings have shape {shape}; compress the model's own embedding matrix "
            "(model.get_input_embeddings().weight) or resize the model first."
        )
    return compressed


def _mean_row(compressed: CompressedEmbedding) -> torch.Tensor:
    """Mean of the decoded rows, from codeword counts: Σ_m Σ_k (count_mk / V) A_mk, without decoding V rows."""
    offsets = (
        torch.arange(compressed.num_codebooks, device=compressed.packed_codes.device)
        * compressed.codebook_size
    )
    flat = (compressed.codes + offsets).reshape(-1)
    counts = torch.bincount(flat, minlength=compressed.num_codebooks * compressed.codebook_size)
    codebook = compressed.codebook.detach().reshape(-1, compressed.embedding_dim)
    return (counts.to(codebook) @ codebook) / compressed.num_embeddings


def _module_names(model: nn.Module) -> dict[int, str]:
    return {id(module): name for name, module in model.named_modules(remove_duplicate=False)}


def _replace(model: PreTrainedModel, name: str, old: nn.Module, new: nn.Module) -> None:
    """Install `new` where `old` is, through the model's embedding setters when `old` is one of those."""
    if model.get_input_embeddings() is old:
        model.set_input_embeddings(new)
    elif model.get_output_embeddings() is old:
        model.set_output_embeddings(new)
    else:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)


def _head_bias(head: nn.Module, compressed: CompressedEmbedding) -> nn.Parameter | None:
    bias = getattr(head, "bias", None)
    if bias is None or bias.shape[0] == compressed.num_embeddings:
        return bias
    resized = torch.zeros(compressed.num_embeddings, dtype=bias.dtype, device=bias.device)
    keep = min(bias.shape[0], compressed.num_embeddings)
    resized[:keep] = bias.detach()[:keep]
    return nn.Parameter(resized, requires_grad=bias.requires_grad)


def _resize_dense_head(model: PreTrainedModel, head: nn.Module, new_num_tokens: int) -> None:
    """Resize an untied dense head the way `resize_token_embeddings` does."""
    new_head = model._get_resized_lm_head(head, new_num_tokens, mean_resizing=True)
    new_head.requires_grad_(head.weight.requires_grad)
    model.set_output_embeddings(new_head)


def _pretrained_submodels(model: nn.Module) -> Iterator[tuple[str, PreTrainedModel]]:
    """`model` and the transformers models nested in it (a composite model's text and vision models), by name."""
    from transformers import PreTrainedModel  # imported late: see dccl_hf.integration

    return ((name, module) for name, module in model.named_modules() if isinstance(module, PreTrainedModel))


def _tied_keys_without(
    model: PreTrainedModel, embedding_name: str, head_name: str | None
) -> list[tuple[PreTrainedModel, dict[str, str], dict[str, str]]]:
    """Each sub-model's tied-weight mappings with the head-weight ↔ embedding-weight pair left out.

    Computed before the swap (expanding a mapping looks the dense weights up) and applied after it. Pairs that
    tie another embedding to the input embeddings (an encoder-decoder's ``encoder.embed_tokens`` to ``shared``)
    are kept and turned into codebook and codes pairs by `_set_tied_keys` if the swap shared the module.
    """
    removed = {f"{embedding_name}.weight"} | ({f"{head_name}.weight"} if head_name else set())
    head_weight = {f"{head_name}.weight"} if head_name else set()
    result = []
    for prefix, module in _pretrained_submodels(model):
        full = f"{prefix}." if prefix else ""

        def keep(item: tuple[str, str], full: str = full) -> bool:
            pair = {full + item[0], full + item[1]}
            return not pair & removed or (len(pair & removed) == 1 and not pair & head_weight)

        own = dict(filter(keep, module.get_expanded_tied_weights_keys(all_submodels=False).items()))
        merged = dict(filter(keep, getattr(module, "all_tied_weights_keys", {}).items()))
        result.append((module, own, merged))
    return result


def _set_tied_keys(
    model: PreTrainedModel, tied_keys: list[tuple[PreTrainedModel, dict[str, str], dict[str, str]]]
) -> None:
    for module, own, merged in tied_keys:
        module._tied_weights_keys = _compressed_tied_keys(module, own)
        module.all_tied_weights_keys = _compressed_tied_keys(module, merged)


def _compressed_tied_keys(module: nn.Module, tied: dict[str, str]) -> dict[str, str]:
    """`tied` with weight pairs between two names of one `CompressedEmbedding` turned into codebook pairs (the
    codes, a buffer, are deduplicated by `alias_keys`); pairs to a weight that no longer exists are dropped."""
    result = {}
    for target, source in tied.items():
        modules = [_submodule_of(module, key) for key in (target, source)]
        if isinstance(modules[0], CompressedEmbedding) and modules[0] is modules[1]:
            result[f"{target.removesuffix('.weight')}.codebook"] = (
                f"{source.removesuffix('.weight')}.codebook"
            )
        elif not any(isinstance(found, CompressedEmbedding) for found in modules):
            result[target] = source
    return result


def compressed_aliases(model: nn.Module, config: DcclConfig) -> list[str]:
    """Second names of compressed modules (``encoder.embed_tokens`` sharing ``shared``). Their codebook is tied
    (`_compressed_tied_keys`) and stored once; their codes, a buffer, are saved under each name, because
    transformers ties parameters only and would fill a buffer missing from the checkpoint with garbage."""
    compressed = {id(model.get_submodule(name)): name for name in config.modules}
    return [
        name
        for name, module in model.named_modules(remove_duplicate=False)
        if compressed.get(id(module), name) != name
    ]


def _submodule_of(module: nn.Module, key: str) -> nn.Module | None:
    """The module owning parameter `key` (e.g. ``encoder.embed_tokens.weight``), or None if there is none."""
    try:
        return module.get_submodule(key.rpartition(".")[0])
    except AttributeError:
        return None


def _base_model(model: PreTrainedModel, previous: object) -> str | None:
    """The Hub repo the model came from, if its `name_or_path` is a repo id rather than a local directory."""
    if isinstance(previous, DcclConfig) and previous.base_model:
        return previous.base_model
    name = getattr(model.config, "_name_or_path", "") or ""
    if not name or os.path.exists(name):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name
