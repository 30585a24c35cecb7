"""`CompressedLMHead`: an output layer tied to a `CompressedEmbedding`, computing logits from its codes.

With E ≈ Σ_m A_m[c_·m], the logit of token v is h·ê_v = Σ_m (h·A_mᵀ)[c_vm]. The head has two paths:

- **Scores** (decoding, and every token count where it is the cheaper path): one matrix product gives the scores of every codeword, (M·K)×N for N
  tokens. Where a byte of the packed codes holds whole codes (K = 2, 4, 16, 256), the scores are first summed
  into one table of 256 entries per byte column (the score of every value that byte can take), so each
  vocabulary row sums one entry per byte of its packed codes, read as they are stored, instead of M unpacked
  codes: V·B·N additions (B = bytes per row, M/2 at K = 16) instead of V·D·N multiply-adds, and neither the
  V×D matrix nor unpacked codes are built (the packed codes are read a block of rows at a time, whose indices
  stay in cache). The backward pass of that gather-sum is a product of the V×N logits
  gradient with one-hot code matrices, built a block of rows at a time: it reads the gradient once.
- **Decoded** (many tokens where a row's B gathers cost more than its D multiply-adds: small D or K = 256): the table is decoded a chunk of rows at a time and multiplied,
  so decoding (V·M·D additions) is shared by all tokens and the V×D matrix is never held whole.

`CompressedLMHead.uses_decoded_path` states the switch, with costs measured by `benchmarks/lm_head.py`. Every op is out of place,
so `torch.jit.trace`, `torch.export` and the ONNX exporters record the head as it computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dccl_hf.embedding import CompressedEmbedding
from dccl_hf.packing import bits_per_code, packed_row_bytes, unpack_codes

#: Elements of one block of the one-hot code matrix in the backward pass (16 MiB in fp32).
ONE_HOT_BLOCK_ELEMENTS = 1 << 22

#: Cost of summing one gathered score on the score path, and of one codeword addition when decoding, in
#: multiply-adds of a dense matrix product (`torch.matmul`, fp32) on a 2-core x86 CPU: at V = 49,152, D = 576,
#: 1 thread, a product takes 0.042 ns per multiply-add, a gathered score 0.18-0.34 ns, a decoding addition 0.12 ns
#: (`benchmarks/results/lm_head.txt`).
GATHER_COST = 8.0
DECODE_COST = 3.0

#: Tokens whose byte tables are built at once on the score path (bounds the tables to B·256·this elements).
SCORE_TOKENS_PER_CHUNK = 64

#: Vocabulary rows whose byte indices are formed at once on the score path (1 MiB of int32 at B = 64).
GATHER_ROWS_PER_CHUNK = 4096

#: Rows decoded at once on the dense path (a 2,048×D block: 4.5 MiB in fp32 at D = 576).
DECODE_ROWS_PER_CHUNK = 2048

BYTE_VALUES = 256


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

    def uses_decoded_path(self, num_tokens: int) -> bool:
        """Whether logits for N = `num_tokens` tokens are computed by decoding the table in chunks.

        Per vocabulary row the score path sums B gathered scores per token (B = bytes per packed row where bytes
        hold whole codes, else M), the decoded path adds M codewords of D once and multiplies D per token, so it
        is taken when GATHER_COST·B·N > D·(N + DECODE_COST·M). Never at SmolLM2-135M's or GPT-2's shapes
        (K = 16, M ≤ 128, D ≥ 576), from N ≈ 500 at K = 256, M = 128, D = 576 and from N ≈ 60 for GloVe's D = 50.
        """
        embedding = self.embedding
        gathers = _gathers_per_row(embedding.num_codebooks, embedding.codebook_size)
        dim = embedding.embedding_dim
        return GATHER_COST * gathers * num_tokens > dim * (num_tokens + DECODE_COST * embedding.num_codebooks)

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
        if self.uses_decoded_path(flat.shape[0]):
            logits = _decoded_logits(embedding, flat)
        else:
            logits = _score_logits(embedding, flat)
        if self.bias is not None:
            logits = logits + self.bias
        return logits.reshape(*leading, embedding.num_embeddings)

    def extra_repr(self) -> str:
        embedding = self.embedding
        return (
            f"in_features={embedding.embedding_dim}, out_features={embedding.num_embeddings}, "
            f"bias={self.bias is not None}, num_codebooks={embedding.num_codebooks}, "
            f"codebook_size={embedding.codebook_size}"
        )


def _score_logits(embedding: CompressedEmbedding, flat: torch.Tensor) -> torch.Tensor:
    """(N, V) logits from the (M·K)×N codeword scores, summed per row through byte tables."""
    scores = embedding.codebook.reshape(-1, embedding.embedding_dim) @ flat.T
    return _GatherSum.apply(scores, embedding.packed_codes, embedding.codebook_size, embedding.padding_idx).T


def _decoded_logits(embedding: CompressedEmbedding, flat: torch.Tensor) -> torch.Tensor:
    """(N, V) logits from the table decoded `DECODE_ROWS_PER_CHUNK` rows at a time (padding row zero)."""
    device = embedding.packed_codes.device
    chunks = [
        flat
        @ embedding._rows(
            torch.arange(start, min(start + DECODE_ROWS_PER_CHUNK, embedding.num_embeddings), device=device)
        ).T
        for start in range(0, embedding.num_embeddings, DECODE_ROWS_PER_CHUNK)
    ]
    return torch.cat(chunks, dim=1)


def _code_offsets(num_codebooks: int, codebook_size: int, device: torch.device) -> torch.Tensor:
    """Offset of each codebook's scores in the flattened (M·K) scores."""
    return torch.arange(0, num_codebooks * codebook_size, codebook_size, device=device)


def _bytes_hold_whole_codes(codebook_size: int) -> bool:
    """Whether every byte of a packed row holds whole codes (K = 2, 4, 16, 256)."""
    return 8 % bits_per_code(codebook_size) == 0


def _gathers_per_row(num_codebooks: int, codebook_size: int) -> int:
    """Scores the score path sums per vocabulary row and token: one per byte, or one per code."""
    if _bytes_hold_whole_codes(codebook_size):
        return packed_row_bytes(num_codebooks, codebook_size)
    return num_codebooks


def _byte_tables(scores: torch.Tensor, row_bytes: int, codebook_size: int) -> torch.Tensor:
    """(B·256, N): for byte column j and value b, the summed scores of the codes b holds in column j."""
    bits = bits_per_code(codebook_size)
    per_byte = 8 // bits
    if per_byte == 1:
        return scores.contiguous()  # each byte is one code: the tables are the scores
    tokens = scores.shape[1]
    missing = row_bytes * per_byte * codebook_size - scores.shape[0]
    if missing:  # the codes packed after the last codebook are zero bits: they add nothing
        scores = torch.cat([scores, scores.new_zeros(missing, tokens)])
    grouped = scores.reshape(row_bytes, per_byte, codebook_size, tokens)
    tables = None
    for position in range(per_byte):
        fields = torch.tensor(
            [(value >> (position * bits)) & (codebook_size - 1) for value in range(BYTE_VALUES)],
            device=scores.device,
        )
        part = grouped[:, position].index_select(1, fields)
        tables = part if tables is None else tables + part
    return tables.reshape(row_bytes * BYTE_VALUES, tokens)


def _gather_sum(scores: torch.Tensor, packed_codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """(V, N): each row's summed code scores, through byte tables where bytes hold whole codes.

    Rows are gathered `GATHER_ROWS_PER_CHUNK` at a time and tokens `SCORE_TOKENS_PER_CHUNK` at a time, so the
    int32 indices and the tables of one step fit in cache.
    """
    num_codebooks = scores.shape[0] // codebook_size
    row_bytes = packed_codes.shape[1]
    if _bytes_hold_whole_codes(codebook_size):
        tables = [
            _byte_tables(chunk, row_bytes, codebook_size) for chunk in scores.split(SCORE_TOKENS_PER_CHUNK, 1)
        ]
        offsets = torch.arange(0, row_bytes * BYTE_VALUES, BYTE_VALUES, device=packed_codes.device)
    else:
        tables = [scores]
        offsets = _code_offsets(num_codebooks, codebook_size, packed_codes.device)
    offsets = offsets.to(torch.int32)
    blocks = []
    for block in packed_codes.split(GATHER_ROWS_PER_CHUNK):
        if _bytes_hold_whole_codes(codebook_size):
            indices = block.to(torch.int32) + offsets
        else:
            indices = unpack_codes(block, num_codebooks, codebook_size, torch.int32) + offsets
        parts = [F.embedding_bag(indices, table, mode="sum") for table in tables]
        blocks.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks)


def _zero_row(out: torch.Tensor, row: int | None) -> torch.Tensor:
    """`out` with row `row` set to zero, out of place (tracing and export keep it)."""
    if row is None:
        return out
    rows = torch.arange(out.shape[0], device=out.device).unsqueeze(1)
    return out.masked_fill(rows == row, 0.0)


class _GatherSum(torch.autograd.Function):
    """``out[v] = Σ_m scores[m·K + codes[v, m]]`` (zero at `padding_idx`): byte-table forward, one-hot backward."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        scores: torch.Tensor,
        packed_codes: torch.Tensor,
        codebook_size: int,
        padding_idx: int | None,
    ) -> torch.Tensor:
        ctx.save_for_backward(packed_codes)
        ctx.codebook_size = codebook_size
        ctx.padding_idx = padding_idx
        ctx.num_codebooks = scores.shape[0] // codebook_size
        return _zero_row(_gather_sum(scores.contiguous(), packed_codes, codebook_size), padding_idx)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None, None, None]:
        (packed_codes,) = ctx.saved_tensors
        grad = _zero_row(grad, ctx.padding_idx)
        num_codebooks, codebook_size = ctx.num_codebooks, ctx.codebook_size
        num_scores = num_codebooks * codebook_size
        offsets = _code_offsets(num_codebooks, codebook_size, grad.device)
        grad_scores = grad.new_zeros(num_scores, grad.shape[1])
        block = max(1, ONE_HOT_BLOCK_ELEMENTS // num_scores)
        for start in range(0, packed_codes.shape[0], block):
            rows = unpack_codes(packed_codes[start : start + block], num_codebooks, codebook_size) + offsets
            one_hot = grad.new_zeros(rows.shape[0], num_scores).scatter_(1, rows, 1.0)
            grad_scores.addmm_(one_hot.T, grad[start : start + rows.shape[0]])
        return grad_scores, None, None, None
