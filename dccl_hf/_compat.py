"""The private or undocumented transformers behaviours dccl_hf relies on, in one place.

Each is pinned by a test in ``tests/test_compat.py`` that fails loudly when an upgrade changes it.
"""

from __future__ import annotations

from torch import nn


def allow_dtype_casts(model: nn.Module) -> None:
    """Let `.half()` / `.float()` cast a compressed model, as they cast a dense one.

    transformers' `PreTrainedModel.half` and `.float` refuse any model whose ``is_quantized`` attribute is true
    (`HfQuantizer.preprocess_model` sets it), because quantized weights are usually packed integers that a cast
    would corrupt. A dccl model's parameters are ordinary float codebooks and its codes a uint8 buffer that
    casts leave alone, so the flag is cleared; ``hf_quantizer`` and ``config.quantization_config`` still mark it
    as a dccl model for `save_pretrained`, `dequantize` and `Trainer`. (``.to(dtype)`` only refuses
    bitsandbytes, GPTQ and Quark models.)
    """
    model.is_quantized = False
