"""`DcclHfQuantizer`: lets plain `AutoModel*.from_pretrained` load a dccl-compressed checkpoint.

transformers builds the dense model on the meta device, then calls `_process_model_before_weight_loading`;
there the modules named by the checkpoint's `DcclConfig` are swapped for empty compressed ones, so the
checkpoint's packed codes and codebooks load straight into them. `register()` makes ``quant_method: "dccl"``
known to transformers and adds `resize_with_codes` to every `PreTrainedModel`; ``import dccl_hf`` has it called
once transformers defines `PreTrainedModel`.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

import torch
from transformers.quantizers import HfQuantizer
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)

from dccl_hf._compat import allow_dtype_casts
from dccl_hf.embedding import CompressedEmbedding
from dccl_hf.integration import QUANT_METHOD
from dccl_hf.integration.config import DcclConfig
from dccl_hf.integration.guard import guard_key_patterns, guard_tensors, skip_guards_in_load_state_dict
from dccl_hf.integration.model import (
    build_compressed_modules,
    compressed_aliases,
    decompress_modules,
    resize_with_codes,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)


class DcclHfQuantizer(HfQuantizer):
    """Rebuilds compressed embeddings (and tied compressed heads) before a dccl checkpoint's weights load."""

    def __init__(self, quantization_config: DcclConfig, **kwargs: Any) -> None:
        if not kwargs.get("pre_quantized", True):
            raise ValueError(
                "quant_method='dccl' loads checkpoints that are already compressed. To compress a dense model, "
                "load it normally, then call model.resize_with_codes(num_codebooks, codebook_size)."
            )
        super().__init__(quantization_config, **kwargs)

    def _process_model_before_weight_loading(self, model: PreTrainedModel, **kwargs: Any) -> PreTrainedModel:
        build_compressed_modules(model, self.quantization_config)
        guards = guard_key_patterns(model, self.quantization_config)
        model._keys_to_ignore_on_load_unexpected = (
            set(model._keys_to_ignore_on_load_unexpected or ()) | guards
        )
        skip_guards_in_load_state_dict(model)
        return model

    def _process_model_after_weight_loading(self, model: PreTrainedModel, **kwargs: Any) -> PreTrainedModel:
        _check_compressed_tensors_loaded(model)
        allow_dtype_casts(model)
        return model

    def _dequantize(self, model: PreTrainedModel, dtype: torch.dtype | str | None = None) -> PreTrainedModel:
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        decompress_modules(model, self.quantization_config, dtype)
        return model

    def get_state_dict_and_metadata(
        self, model: PreTrainedModel
    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The state dict `save_pretrained` (and so `push_to_hub`) writes: the model's, plus the load guards.

        The codes of a compressed module reached under several names are saved under each (transformers
        dedupes tied parameters only, here the codebook); the copies keep its shared-tensor check quiet."""
        state_dict = model.state_dict()
        for alias in compressed_aliases(model, self.quantization_config):
            state_dict[f"{alias}.packed_codes"] = state_dict[f"{alias}.packed_codes"].clone()
        return {**state_dict, **guard_tensors(model, self.quantization_config)}, {}

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_qat_trainable(self) -> bool:
        """The codebooks are ordinary parameters, so `Trainer` may fine-tune the model without adapters."""
        return True


def _check_compressed_tensors_loaded(model: PreTrainedModel) -> None:
    """Refuse codes or codebooks the checkpoint did not provide. transformers fills a missing tensor, or one whose
    size does not match (what ``ignore_mismatched_sizes=True`` allows), with uninitialised memory that its
    ``_init_weights`` knows nothing of; only the tensors it loaded carry its ``_is_hf_initialized`` mark."""
    for module_name, module in model.named_modules():
        if not isinstance(module, CompressedEmbedding):
            continue
        for tensor_name in ("codebook", "packed_codes"):
            tensor = getattr(module, tensor_name)
            if tensor.device.type != "meta" and not getattr(tensor, "_is_hf_initialized", False):
                raise ValueError(
                    f"the checkpoint has no '{module_name}.{tensor_name}' of shape {tuple(tensor.shape)} (missing, "
                    "or of another size than its quantization_config implies); its codes and codebooks cannot be "
                    "re-initialised. Save the compressed model again."
                )


def register() -> None:
    """Make ``quant_method: "dccl"`` loadable and add `resize_with_codes` to `PreTrainedModel`; idempotent."""
    from transformers import PreTrainedModel  # imported late: see dccl_hf.integration

    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(DcclConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(DcclHfQuantizer)
    PreTrainedModel.resize_with_codes = resize_with_codes
    if not hasattr(PreTrainedModel.resize_token_embeddings, "__dccl_original__"):
        PreTrainedModel.resize_token_embeddings = _resize_token_embeddings(
            PreTrainedModel.resize_token_embeddings
        )
    from dccl_hf.integration.card import patch_push_to_hub

    patch_push_to_hub()


def _resize_token_embeddings(original: Any) -> Any:
    """Wrap `resize_token_embeddings` so that it also resizes compressed embeddings (by codes)."""

    @functools.wraps(original)
    def resize_token_embeddings(
        self: PreTrainedModel,
        new_num_tokens: int | None = None,
        pad_to_multiple_of: int | None = None,
        mean_resizing: bool = True,
    ) -> Any:
        embeddings = self.get_input_embeddings()
        if not isinstance(embeddings, CompressedEmbedding):
            return original(self, new_num_tokens, pad_to_multiple_of, mean_resizing)
        if new_num_tokens is None and pad_to_multiple_of is None:
            return embeddings
        target = embeddings.num_embeddings if new_num_tokens is None else new_num_tokens
        if pad_to_multiple_of is not None:
            target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
        return resize_with_codes(self, new_num_tokens=target)

    resize_token_embeddings.__dccl_original__ = original
    return resize_token_embeddings
