"""Load guards: keep plain transformers from silently loading a dccl checkpoint with random embeddings.

Without ``import dccl_hf`` transformers skips the unknown ``quant_method: "dccl"`` and builds the dense model;
the checkpoint has no ``<embedding>.weight``, so that table would be randomly initialised without an error.
`save_pretrained` therefore also writes, under each compressed embedding's dense weight name, a tensor of shape
(0,): it holds no data and can never match a (rows, dim) weight, so plain transformers stops with a size-mismatch
`RuntimeError` (unless told to re-initialise mismatched weights with ``ignore_mismatched_sizes=True``). A
zero-element tensor named `IMPORT_HINT_KEY` is listed next to it in transformers' load report and tells the
reader what to do. With ``import dccl_hf`` the quantizer marks all of them as expected-unused keys
for `from_pretrained`, and a load-state-dict hook drops them for `load_state_dict` (Trainer resuming a run).
A tied head needs no guard: transformers ties its weight to the (guarded) embedding weight.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import torch

from dccl_hf.integration.config import DcclConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel

#: Checkpoint key of a zero-element tensor whose name shows up in transformers' load report without dccl_hf.
IMPORT_HINT_KEY = "dccl_hf.import_dccl_hf_before_from_pretrained"


def guard_tensors(model: PreTrainedModel, config: DcclConfig) -> dict[str, torch.Tensor]:
    """The zero-element guard tensors to save with `model`'s compressed state dict, by checkpoint key."""
    guards = {}
    for name in config.modules:
        codebook = model.get_submodule(name).codebook
        guards[f"{name}.weight"] = torch.empty(0, dtype=codebook.dtype, device=codebook.device)
    if guards:
        guards[IMPORT_HINT_KEY] = torch.empty(0, dtype=torch.uint8)
    return guards


def guard_key_patterns(model: PreTrainedModel, config: DcclConfig) -> set[str]:
    """Regular expressions matching the guard keys of `config`'s modules, with or without the base-model prefix.

    Meant for `_keys_to_ignore_on_load_unexpected`, so that loading with dccl_hf reports no unexpected keys.
    """
    prefix = f"{model.base_model_prefix}." if model.base_model_prefix else ""
    names = {alias for name in config.modules for alias in (name, name.removeprefix(prefix), prefix + name)}
    keys = {f"{name}.weight" for name in names} | {IMPORT_HINT_KEY}
    return {f"^{re.escape(key)}$" for key in keys}


def skip_guards_in_load_state_dict(model: PreTrainedModel) -> None:
    """Make `model.load_state_dict` drop the guard tensors while the model is compressed; idempotent."""
    if not model.__dict__.get("_dccl_skips_guards", False):
        model.register_load_state_dict_pre_hook(_drop_guards)
        model.__dict__["_dccl_skips_guards"] = True


def _drop_guards(model: PreTrainedModel, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Remove the zero-element guards of the model's compressed modules; a no-op once it is dequantized."""
    config = getattr(model.config, "quantization_config", None)
    if not isinstance(config, DcclConfig):
        return
    for key in (*(f"{name}.weight" for name in config.modules), IMPORT_HINT_KEY):
        guard = state_dict.get(prefix + key)
        if isinstance(guard, torch.Tensor) and guard.numel() == 0:
            del state_dict[prefix + key]
