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


def peft_active_copy(module: nn.Module) -> nn.Module | None:
    """The module a PEFT ``modules_to_save`` wrapper (`peft.utils.other.ModulesToSaveWrapper`) runs, or None if
    `module` is not one: its trained copy for the single active adapter, its original module when adapters are
    disabled or none of its copies is active. Several active copies are an error (there is one head to tie).

    Relies on the wrapper's attributes ``original_module``, ``modules_to_save`` (by adapter name),
    ``active_adapters`` and ``disable_adapters``, which are not documented API.
    """
    copies = getattr(module, "modules_to_save", None)
    original = getattr(module, "original_module", None)
    if not isinstance(copies, nn.ModuleDict) or not isinstance(original, nn.Module):
        return None
    if module.disable_adapters:
        return original
    active = [name for name in module.active_adapters if name in copies]
    if len(active) > 1:
        raise RuntimeError(
            f"A tied compressed LM head follows one embedding, but adapters {active} each train their own copy: "
            "activate one adapter at a time (model.set_adapter(name))."
        )
    return copies[active[0]] if active else original
