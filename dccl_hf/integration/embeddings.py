"""Input-embedding classes dccl_hf knows how to compress, and how their extra behaviour is kept.

Many transformers models embed with a subclass of `nn.Embedding` whose forward does more than a lookup: BART,
Gemma and two dozen other families multiply the rows by a scale (``*ScaledWordEmbedding``, usually √d), a few
normalise them (``*NormedEmbedding``). Replacing such a module by a plain `CompressedEmbedding` would silently
change every output, so the swap goes through `compressed_like`: a plain lookup (any `nn.Embedding` that keeps
`nn.Embedding.forward`) becomes a `CompressedEmbedding`, a class of `SCALED_EMBEDDINGS` or `NORMED_EMBEDDINGS`
becomes a `TransformedCompressedEmbedding` applying the same scale or normalisation after the compressed lookup,
and any other class is refused with an error. The scale is read from the dense module (which transformers
builds from the model's config, also on the meta device inside `from_pretrained`), and a normalisation module
is moved into the compressed one under the same name, so its weights keep their checkpoint keys.
"""

from __future__ import annotations

import torch
from torch import nn

from dccl_hf.embedding import CompressedEmbedding

#: Classes whose forward is ``nn.Embedding.forward(ids) * embed_scale``. Gemma's keep the scale as a tensor
#: buffer cast to the weight's dtype (and a float copy in ``scalar_embed_scale``); BART's as a Python float.
SCALED_EMBEDDINGS = frozenset(
    {
        "BartScaledWordEmbedding",
        "BigBirdPegasusScaledWordEmbedding",
        "BioGptScaledWordEmbedding",
        "BlenderbotScaledWordEmbedding",
        "DiffusionGemmaTextScaledWordEmbedding",
        "EmbeddingGemma2TextScaledWordEmbedding",
        "Gemma2TextScaledWordEmbedding",
        "Gemma3TextScaledWordEmbedding",
        "Gemma3nTextScaledWordEmbedding",
        "Gemma4TextScaledWordEmbedding",
        "Gemma4UnifiedTextScaledWordEmbedding",
        "GemmaTextScaledWordEmbedding",
        "M2M100ScaledWordEmbedding",
        "MBartScaledWordEmbedding",
        "MiniCPM3ScaledWordEmbedding",
        "NllbMoeScaledWordEmbedding",
        "PLBartScaledWordEmbedding",
        "PPFormulaNetScaledWordEmbedding",
        "PegasusXScaledWordEmbedding",
        "SeamlessM4TScaledWordEmbedding",
        "SeamlessM4Tv2ScaledWordEmbedding",
        "TrOCRScaledWordEmbedding",
        "VaultGemmaTextScaledWordEmbedding",
        "XGLMScaledWordEmbedding",
    }
)
#: Classes whose forward is ``embed_norm(nn.Embedding.forward(ids))``.
NORMED_EMBEDDINGS = frozenset(
    {
        "Inkling2LoopNormedEmbedding",
        "Inkling2NormedEmbedding",
        "InklingNormedEmbedding",
        "MuseGlimmerTextNormedEmbedding",
        "MuseSparkTextNormedEmbedding",
    }
)


class TransformedCompressedEmbedding(CompressedEmbedding):
    """A `CompressedEmbedding` followed by the scale or normalisation of the dense class it replaces.

    `embed_norm` is a submodule (its weights are saved under the same key as in the dense model); the scale and
    the dense class are read again from the dense module whenever the model is built, so they are not saved.
    `to_embedding` returns an instance of the dense class again (for `model.dequantize()`).
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        num_codebooks: int,
        codebook_size: int,
        padding_idx: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(
            num_embeddings, embedding_dim, num_codebooks, codebook_size, padding_idx, dtype, device
        )
        self.dense_class: type[nn.Embedding] = nn.Embedding
        self.embed_scale: float | None = None
        self.scale_in_dtype = False
        self.embed_norm: nn.Module | None = None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = super().forward(input_ids)
        if self.embed_scale is not None:
            rows = rows * self._scale(rows)
        if self.embed_norm is not None:
            rows = self.embed_norm(rows)
        return rows

    def to_embedding(self) -> nn.Embedding:
        """An instance of the replaced dense class with the reconstructed table and the same extra behaviour."""
        with torch.no_grad():
            weight = self.reconstruct()
        dense = self.dense_class.__new__(self.dense_class)
        nn.Embedding.__init__(
            dense, self.num_embeddings, self.embedding_dim, self.padding_idx, _weight=weight
        )
        if self.embed_scale is not None and self.scale_in_dtype:
            dense.scalar_embed_scale = self.embed_scale
            dense.register_buffer("embed_scale", torch.tensor(self.embed_scale, device=weight.device), False)
        elif self.embed_scale is not None:
            dense.embed_scale = self.embed_scale
        if self.embed_norm is not None:
            dense.embed_norm = self.embed_norm
        return dense

    def extra_repr(self) -> str:
        scale = f", embed_scale={self.embed_scale:.6g}" if self.embed_scale is not None else ""
        return f"{super().extra_repr()}{scale}, replaces={self.dense_class.__name__}"

    def _scale(self, rows: torch.Tensor) -> torch.Tensor | float:
        """The scale as the dense class applies it: a tensor cast to the rows' dtype, or a Python float."""
        if self.scale_in_dtype:
            return torch.tensor(self.embed_scale, device=rows.device).to(rows.dtype)
        return self.embed_scale


def check_compressible(dense: nn.Module) -> None:
    """Raise TypeError for an input embedding class whose forward does something dccl_hf does not know."""
    name = type(dense).__name__
    if name in SCALED_EMBEDDINGS or name in NORMED_EMBEDDINGS:
        return
    if isinstance(dense, CompressedEmbedding) or type(dense).forward is nn.Embedding.forward:
        return
    raise TypeError(
        f"dccl_hf cannot compress {name}: its forward does more than an embedding lookup and dccl_hf does not "
        "know what, so a compressed replacement would silently change the model's outputs. Known classes: "
        "plain nn.Embedding lookups, dccl_hf.integration.embeddings.SCALED_EMBEDDINGS and NORMED_EMBEDDINGS. "
        "Please report the model class with your transformers version."
    )


def compressed_like(dense: nn.Module, compressed: CompressedEmbedding) -> CompressedEmbedding:
    """`compressed`'s codes and codebook in a module that behaves like `dense` beyond its lookup.

    Plain lookups get `compressed` itself; raises TypeError where `check_compressible` does.
    """
    check_compressible(dense)
    if not _is_transformed(dense):
        return compressed
    transformed = TransformedCompressedEmbedding.from_codes(
        compressed.codes, compressed.codebook.detach(), compressed.padding_idx
    )
    transformed.codebook.requires_grad_(compressed.codebook.requires_grad)
    _copy_behaviour(dense, transformed)
    return transformed


def empty_compressed_like(
    dense: nn.Module, num_codebooks: int, codebook_size: int, weight: torch.Tensor
) -> CompressedEmbedding:
    """An uninitialised compressed module for `dense` (whose table is `weight`), for a checkpoint to fill."""
    check_compressible(dense)
    cls = TransformedCompressedEmbedding if _is_transformed(dense) else CompressedEmbedding
    compressed = cls(
        weight.shape[0],
        weight.shape[1],
        num_codebooks,
        codebook_size,
        padding_idx=getattr(dense, "padding_idx", None),
        dtype=weight.dtype,
        device=weight.device,
    )
    if isinstance(compressed, TransformedCompressedEmbedding):
        _copy_behaviour(dense, compressed)
    return compressed


def _is_transformed(dense: nn.Module) -> bool:
    if isinstance(dense, TransformedCompressedEmbedding):
        return True
    return type(dense).__name__ in SCALED_EMBEDDINGS or type(dense).__name__ in NORMED_EMBEDDINGS


def _copy_behaviour(dense: nn.Module, transformed: TransformedCompressedEmbedding) -> None:
    """Give `transformed` the dense class, scale and normalisation of `dense` (dense or already compressed)."""
    if isinstance(dense, TransformedCompressedEmbedding):
        transformed.dense_class = dense.dense_class
        transformed.embed_scale = dense.embed_scale
        transformed.scale_in_dtype = dense.scale_in_dtype
        transformed.embed_norm = dense.embed_norm
        return
    transformed.dense_class = type(dense)
    if type(dense).__name__ in SCALED_EMBEDDINGS:
        transformed.scale_in_dtype = hasattr(dense, "scalar_embed_scale")
        scale = dense.scalar_embed_scale if transformed.scale_in_dtype else dense.embed_scale
        transformed.embed_scale = float(scale)
    else:
        transformed.embed_norm = dense.embed_norm
