"""How well a compressed table reconstructs the original: distances, relative error, cosine, size.

Everything is computed from the hard codes (what the module actually decodes), in row chunks, so a
memory-mapped original is never loaded whole.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from dccl_hf.embedding import CompressedEmbedding
from dccl_hf.learning import MatrixLike, iter_row_chunks, matrix_shape


@dataclass(frozen=True)
class ReconstructionReport:
    """Reconstruction quality of a compressed table against its original.

    `mean_euclidean_distance` is the reference implementation's headline metric, mean over rows of
    ||e_i − ê_i||₂; `relative_squared_error` is Σ||E − Ê||² / Σ||E||²; `mean_cosine_similarity` leaves out
    rows whose original is all zeros (their cosine is undefined; NaN if every row is).
    """

    num_rows: int
    embedding_dim: int
    mean_euclidean_distance: float
    max_distance: float
    relative_squared_error: float
    mean_cosine_similarity: float
    bits_per_row: int
    compression_ratio: float

    def to_dict(self) -> dict[str, int | float]:
        """The fields as a plain dict (e.g. for JSON)."""
        return asdict(self)

    def __str__(self) -> str:
        return "\n".join(
            [
                f"rows × dim               {self.num_rows} × {self.embedding_dim}",
                f"mean euclidean distance  {self.mean_euclidean_distance:.6f}",
                f"max distance             {self.max_distance:.6f}",
                f"relative squared error   {self.relative_squared_error:.6f}",
                f"mean cosine similarity   {self.mean_cosine_similarity:.6f}",
                f"bits per row             {self.bits_per_row}",
                f"compression ratio        {self.compression_ratio:.2f}x",
            ]
        )


def reconstruction_report(
    original: MatrixLike,
    compressed: CompressedEmbedding | torch.Tensor | nn.Embedding,
    *,
    chunk_rows: int | None = None,
) -> ReconstructionReport:
    """Compare `original` (tensor, numpy array or memmap, `nn.Embedding`) with its reconstruction.

    `compressed` is a `CompressedEmbedding` (decoded from its codes chunk by chunk) or a dense tensor /
    `nn.Embedding` of the same shape; a dense table's bits per row and ratio are those of its dtype vs. float32.
    """
    rows, dim = matrix_shape(original)
    if isinstance(compressed, CompressedEmbedding):
        shape = (compressed.num_embeddings, compressed.embedding_dim)
        device = compressed.codebook.device
        bits_per_row, ratio = compressed.bits_per_row, compressed.compression_ratio
    elif isinstance(compressed, nn.Embedding | torch.Tensor):
        dense = compressed.weight if isinstance(compressed, nn.Embedding) else compressed
        dense = dense.detach()
        shape = tuple(dense.shape)
        device = dense.device
        element_bits = dense.element_size() * 8
        bits_per_row, ratio = dim * element_bits, 32 / element_bits
    else:
        raise TypeError(
            f"compressed must be a CompressedEmbedding, a tensor or an nn.Embedding, got {type(compressed).__name__}."
        )
    if shape != (rows, dim):
        raise ValueError(f"The compressed table is {shape[0]}×{shape[1]} but the original is {rows}×{dim}.")
    totals = torch.zeros(
        4, dtype=torch.float64, device=device
    )  # Σ distance, Σ squared error, Σ ||e||², Σ cosine
    max_distance = torch.zeros((), dtype=torch.float64, device=device)
    nonzero_rows = 0
    with torch.no_grad():
        for start, chunk in iter_row_chunks(original, device, chunk_rows):
            stop = start + chunk.shape[0]
            if isinstance(compressed, CompressedEmbedding):
                decoded = compressed(torch.arange(start, stop, device=device))
            else:
                decoded = dense[start:stop]
            decoded = decoded.to(torch.float32)
            error = (decoded - chunk).double()
            squared = error.square().sum(dim=1)
            distance = squared.sqrt()
            norms = torch.linalg.vector_norm(chunk.double(), dim=1)
            nonzero = norms > 0
            cosine = (decoded.double() * chunk.double()).sum(dim=1) / (
                norms * torch.linalg.vector_norm(decoded.double(), dim=1)
            ).clamp_min(torch.finfo(torch.float64).tiny)
            totals += torch.stack(
                [distance.sum(), squared.sum(), norms.square().sum(), cosine[nonzero].sum()]
            )
            max_distance = torch.maximum(max_distance, distance.max())
            nonzero_rows += int(nonzero.sum())
    distance_sum, squared_error, squared_norm, cosine_sum = totals.tolist()
    exact = squared_error == 0
    return ReconstructionReport(
        num_rows=rows,
        embedding_dim=dim,
        mean_euclidean_distance=distance_sum / rows,
        max_distance=float(max_distance),
        relative_squared_error=squared_error / squared_norm
        if squared_norm > 0
        else 0.0
        if exact
        else math.inf,
        mean_cosine_similarity=cosine_sum / nonzero_rows if nonzero_rows else math.nan,
        bits_per_row=bits_per_row,
        compression_ratio=ratio,
    )
