"""Learning under an error metric: minimise (e − ê)ᵀ G (e − ê) instead of ||e − ê||².

A model does not see all directions of its embedding space alike (a LayerNorm ignores the mean direction, some
dimensions are amplified). Given a positive semi-definite G (D×D), e.g. the sensitivity of a model's outputs to its
input embeddings (`dccl_hf.fidelity.embedding_sensitivity`), the rows are mapped to x = e·G^½, learned there with
the plain euclidean objective, and the codebook is mapped back with G^−½. Because the decoder is a sum of codewords
(linear), the codes learned for x are exactly the codes that minimise the G-weighted error of e.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: Eigenvalues of G below this fraction of the largest are raised to it, so G^−½ stays bounded: directions the
#: model ignores get little (not zero) weight.
EIGENVALUE_FLOOR = 1e-3
#: Rows transformed at once (bounds the temporary of the matrix product).
CHUNK_ROWS = 1 << 14


@dataclass(frozen=True)
class MetricTransform:
    """The symmetric square root of a metric G and its inverse, float64 (D, D)."""

    root: torch.Tensor
    inverse_root: torch.Tensor

    @staticmethod
    def from_metric(
        metric: torch.Tensor | np.ndarray, dim: int, device: torch.device, floor: float = EIGENVALUE_FLOOR
    ) -> MetricTransform:
        """Check that `metric` is a finite, symmetric, positive semi-definite (dim, dim) matrix and factor it."""
        values = torch.as_tensor(
            np.asarray(metric) if not isinstance(metric, torch.Tensor) else metric.detach()
        )
        values = values.to(device=device, dtype=torch.float64)
        if tuple(values.shape) != (dim, dim):
            raise ValueError(
                f"metric must be a ({dim}, {dim}) matrix for rows of dimension {dim}, got shape {tuple(values.shape)}."
            )
        if not bool(torch.isfinite(values).all()):
            raise ValueError("metric contains NaN or Inf values.")
        scale = float(values.abs().max())
        if not torch.allclose(values, values.T, atol=1e-6 * scale, rtol=0.0):
            raise ValueError("metric must be symmetric (G = Gᵀ); pass e.g. (G + G.T) / 2.")
        eigenvalues, eigenvectors = torch.linalg.eigh(values)
        largest = float(eigenvalues.max())
        if largest <= 0 or float(eigenvalues.min()) < -1e-6 * largest:
            raise ValueError(
                "metric must be positive semi-definite with a positive eigenvalue, e.g. a sum of outer products "
                "uᵀu as returned by dccl_hf.fidelity.embedding_sensitivity."
            )
        eigenvalues = eigenvalues.clamp_min(floor * largest)
        root = (eigenvectors * eigenvalues.sqrt()) @ eigenvectors.T
        inverse_root = (eigenvectors * eigenvalues.rsqrt()) @ eigenvectors.T
        return MetricTransform(root, inverse_root)

    def apply(self, matrix: torch.Tensor, *, in_place: bool) -> torch.Tensor:
        """Rows mapped into the metric's space, x = e·G^½ (in place when allowed, else into one new tensor)."""
        result = matrix if in_place else torch.empty_like(matrix)
        root = self.root.to(matrix.dtype)
        for start in range(0, matrix.shape[0], CHUNK_ROWS):
            result[start : start + CHUNK_ROWS] = matrix[start : start + CHUNK_ROWS] @ root
        return result

    def restore_codebook(self, codebook: torch.Tensor) -> torch.Tensor:
        """A codebook (M, K, D) learned in the metric's space, mapped back to the rows' space."""
        return (codebook.double() @ self.inverse_root).to(codebook.dtype)
