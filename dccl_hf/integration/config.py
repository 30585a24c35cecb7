"""`DcclConfig`: the `quantization_config` a compressed transformers model carries in its `config.json`.

It names the compressed embedding modules and the LM heads that share their codes, so that
`from_pretrained` (through `DcclHfQuantizer`) can rebuild the same modules before the weights load.
"""

from __future__ import annotations

from typing import Any

from transformers.utils.quantization_config import QuantizationConfigMixin

from dccl_hf.checks import is_integer
from dccl_hf.integration import QUANT_METHOD
from dccl_hf.packing import bits_per_code


class DcclConfig(QuantizationConfigMixin):
    """Compositional-code compression of a model's embedding tables.

    Args:
        num_codebooks: M, codes per row.
        codebook_size: K, codewords per codebook (a power of two).
        modules: names (as in `model.named_modules()`) of the compressed embedding modules.
        tied_heads: ``{head module name: embedding module name}`` for output layers that share an embedding's
            codes and codebook instead of storing a dense weight.
        base_model: the Hub repo id the model was compressed from, for the model card.
        reconstruction: reconstruction metrics measured at compression time, for the model card.
    """

    def __init__(
        self,
        num_codebooks: int,
        codebook_size: int,
        modules: list[str] | None = None,
        tied_heads: dict[str, str] | None = None,
        base_model: str | None = None,
        reconstruction: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("shared_head", None)
        kwargs.pop("bits_per_row", None)
        method = kwargs.pop("quant_method", QUANT_METHOD)
        if method != QUANT_METHOD:
            raise ValueError(f"DcclConfig is for quant_method={QUANT_METHOD!r}, got {method!r}.")
        if kwargs:
            raise TypeError(f"Unknown DcclConfig fields: {sorted(kwargs)}.")
        if not is_integer(num_codebooks) or num_codebooks < 1:
            raise ValueError(f"num_codebooks must be a positive integer, got {num_codebooks!r}.")
        self.quant_method = QUANT_METHOD
        self.num_codebooks = num_codebooks
        self.codebook_size = codebook_size
        self.bits_per_row = num_codebooks * bits_per_code(codebook_size)
        self.modules = list(modules or [])
        self.tied_heads = dict(tied_heads or {})
        unknown = sorted(set(self.tied_heads.values()) - set(self.modules))
        if unknown:
            raise ValueError(
                f"tied_heads {self.tied_heads} refer to embeddings that are not in modules {self.modules}: {unknown}; "
                "a saved quantization_config names the compressed embedding in both (was config.json edited?)."
            )
        self.shared_head = bool(self.tied_heads)
        self.base_model = base_model
        self.reconstruction = dict(reconstruction or {})
