"""`CompressedLMHead`: an output layer tied to a `CompressedEmbedding`, computing logits from its codes.

With E ≈ Σ_m A_m[c_·m], the logit of token v is h·ê_v = Σ_m (h·A_mᵀ)[c_vm]. One matrix product gives the
scores of every codeword, (M·K)×N for N tokens, and `embedding_bag` sums, for each vocabulary row, the M
scores its codes select. The dense V×D matrix is never built: the work is N·M·K·D multiply-adds plus
V·M·N additions instead of V·D·N multiply-adds. The backward pass of that gather-sum is a product of the
V×N logits gradient with one-hot code matrices, built a block of rows at a time: it reads the gradient
once, where `embedding_bag`'s own backward scatters M copies of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dccl_hf.embedding import CompressedEmbedding

#: Elements of one block of the one-hot code matrix in the backward pass (16 MiB in fp32).
ONE_HOT_BLOCK_ELEMENTS = 1 << 22


class CompressedLMHead(nn.Module):
    """Logits ``h @ Êᵀ (+ bias)`` for the table Ê of a `CompressedEmbedding` this head shares.

    The embedding is referenced, not registered as a submodule: its codes and codebook are saved, moved and
    trained once, under the input-embedding name, and the head always reads their current values. Rows at the
    embedding's ``padding_idx`` decode to zeros, as they do in the embedding, so their logit is the bias.
    """

    def __init__(self, embedding: CompressedEmbedding, bias: nn.Parameter | None = None) -> None:
        super().__init__()
        self.tie(embedding)
        if bias is not None and tuple(bias.shape) != (embedding.num_embeddings,):
            raise ValueError(
                f"bias must have shape ({embedding.num_embeddings},) to match the embedding, "
                f"got {tuple(bias.shape)}."
            )
        self.bias = bias

    @property
    def embedding(self) -> CompressedEmbedding:
        """The shared `CompressedEmbedding`."""
        return self.__dict__["_embedding"]

    def tie(self, embedding: CompressedEmbedding) -> None:
        """Share `embedding` (kept out of the module tree, so nothing is stored twice)."""
        if not isinstance(embedding, CompressedEmbedding):
            raise TypeError(
                f"a CompressedLMHead ties to a CompressedEmbedding, got {type(embedding).__name__}."
            )
        self.__dict__["_embedding"] = embedding

    @property
    def in_features(self) -> int:
        return self.embedding.embedding_dim

    @property
    def out_features(self) -> int:
        return self.embedding.num_embeddings

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Logits of shape (*hidden_states.shape[:-1], num_embeddings)."""
        embedding = self.embedding
        dim = embedding.embedding_dim
        if hidden_states.shape[-1] != dim:
            raise ValueError(
                f"hidden states must end with dimension {dim}, got {tuple(hidden_states.shape)}."
            )
        leading = hidden_states.shape[:-1]
        flat = hidden_states.reshape(-1, dim)
        vocab = embedding.num_embeddings
        rows = torch.arange(vocab, device=embedding.packed_codes.device)
        indices = embedding.lookup_indices(rows)
        scores = embedding.codebook.reshape(-1, dim) @ flat.T
        logits = _GatherSum.apply(scores, indices, embedding.padding_idx).T
        if self.bias is not None:
            logits = logits + self.bias
        return logits.reshape(*leading, vocab)

    def extra_repr(self) -> str:
        embedding = self.embedding
        return (
            f"in_features={embedding.embedding_dim}, out_features={embedding.num_embeddings}, "
            f"bias={self.bias is not None}, num_codebooks={embedding.num_codebooks}, "
            f"codebook_size={embedding.codebook_size}"
        )


class _GatherSum(torch.autograd.Function):
    """``out[v] = Σ_m scores[indices[v, m]]`` (zero at `padding_idx`): `embedding_bag` forward, one-hot backward."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        scores: torch.Tensor,
        indices: torch.Tensor,
        padding_idx: int | None,
    ) -> torch.Tensor:
        out = F.embedding_bag(indices, scores, mode="sum")
        if padding_idx is not None:
            out[padding_idx] = 0.0
        ctx.save_for_backward(indices)
        ctx.padding_idx = padding_idx
        ctx.num_scores = scores.shape[0]
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None, None]:
        (indices,) = ctx.saved_tensors
        grad_scores = grad.new_zeros(ctx.num_scores, grad.shape[1])
        block = max(1, ONE_HOT_BLOCK_ELEMENTS // ctx.num_scores)
        for start in range(0, indices.shape[0], block):
            rows = indices[start : start + block].long()
            one_hot = grad.new_zeros(rows.shape[0], ctx.num_scores).scatter_(1, rows, 1.0)
            if ctx.padding_idx is not None and start <= ctx.padding_idx < start + rows.shape[0]:
                one_hot[ctx.padding_idx - start] = 0.0
            grad_scores.addmm_(one_hot.T, grad[start : start + rows.shape[0]])
        return grad_scores, None, None
