"""Bit packing of integer codes: each row of M codes in [0, K) takes ceil(M·log2 K / 8) bytes.

Code m of a row occupies bits [m·b, (m+1)·b) of the row's little-endian bit stream (b = log2 K), so byte j holds
bits [8j, 8j+8). Packing is what makes compressed tables small in memory and on disk; unpacking runs in the
forward pass on the looked-up rows only, so the common widths (1, 2, 4, 8, 16 bits) have shift-only fast paths;
under ONNX export the same layout is read with int32 arithmetic, which every runtime implements.
"""

from __future__ import annotations

import itertools
import math

import torch

from dccl_hf.checks import is_integer

MIN_CODEBOOK_SIZE = 2
MAX_CODEBOOK_SIZE = 65536


def bits_per_code(codebook_size: int) -> int:
    """Return log2(K), rejecting sizes that are not a power of two in [2, 65536]."""
    if (
        not is_integer(codebook_size)
        or not MIN_CODEBOOK_SIZE <= codebook_size <= MAX_CODEBOOK_SIZE
        or codebook_size & (codebook_size - 1)
    ):
        raise ValueError(
            f"codebook_size must be a power of two between {MIN_CODEBOOK_SIZE} and {MAX_CODEBOOK_SIZE}, "
            f"got {codebook_size!r}; pick e.g. 16 or 256."
        )
    return codebook_size.bit_length() - 1


def packed_row_bytes(num_codebooks: int, codebook_size: int) -> int:
    """Bytes one row of M codes occupies once packed."""
    if num_codebooks < 1:
        raise ValueError(f"num_codebooks must be at least 1, got {num_codebooks}.")
    return math.ceil(num_codebooks * bits_per_code(codebook_size) / 8)


def pack_codes(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Pack integer codes of shape (..., M) into uint8 of shape (..., ceil(M·log2 K / 8))."""
    bits = bits_per_code(codebook_size)
    if codes.dtype.is_floating_point or codes.dtype == torch.bool or codes.dtype.is_complex:
        raise TypeError(f"codes must be an integer tensor, got {codes.dtype}.")
    if codes.ndim == 0:
        raise ValueError("codes must have at least one dimension (the M codes of a row).")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= codebook_size):
        raise ValueError(
            f"codes must lie in [0, {codebook_size}); found values in "
            f"[{int(codes.min())}, {int(codes.max())}]."
        )
    num_codebooks = codes.shape[-1]
    row_bytes = packed_row_bytes(num_codebooks, codebook_size)
    codes = codes.to(torch.int64)
    if bits == 16:
        return torch.stack([codes & 0xFF, codes >> 8], dim=-1).flatten(-2).to(torch.uint8)
    if 8 % bits == 0:
        per_byte = 8 // bits
        padding = row_bytes * per_byte - num_codebooks
        codes = torch.nn.functional.pad(codes, (0, padding))
        shifts = torch.arange(0, 8, bits, device=codes.device)
        grouped = codes.unflatten(-1, (row_bytes, per_byte))
        return (grouped << shifts).sum(-1).to(torch.uint8)
    bit_positions = torch.arange(bits, device=codes.device)
    stream = ((codes.unsqueeze(-1) >> bit_positions) & 1).flatten(-2)
    stream = torch.nn.functional.pad(stream, (0, row_bytes * 8 - stream.shape[-1]))
    byte_weights = torch.arange(8, device=codes.device)
    return (stream.unflatten(-1, (row_bytes, 8)) << byte_weights).sum(-1).to(torch.uint8)


def unpack_codes(
    packed: torch.Tensor, num_codebooks: int, codebook_size: int, dtype: torch.dtype = torch.int64
) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: uint8 (..., B) → integer codes (..., M) of `dtype`.

    Shifts run on the narrowest integer type that holds a code (uint8 up to 8 bits), which keeps unpacking a
    small fraction of a lookup; `dtype=torch.int32` suits `embedding_bag` indices.
    """
    bits = bits_per_code(codebook_size)
    row_bytes = packed_row_bytes(num_codebooks, codebook_size)
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed codes must be uint8, got {packed.dtype}.")
    if packed.ndim == 0 or packed.shape[-1] != row_bytes:
        raise ValueError(
            f"packed codes for M={num_codebooks}, K={codebook_size} need {row_bytes} bytes per row, "
            f"got shape {tuple(packed.shape)}."
        )
    if bits == 8:
        return packed.to(dtype)
    if bits == 16 or torch.onnx.is_in_onnx_export():
        return _unpack_with_arithmetic(packed, num_codebooks, bits).to(dtype)
    if 8 % bits == 0:
        mask = codebook_size - 1
        fields = [(packed >> shift) & mask for shift in range(0, 8, bits)]
        return torch.stack(fields, dim=-1).flatten(-2)[..., :num_codebooks].to(dtype)
    wide = packed.to(torch.int32)
    stream = ((wide.unsqueeze(-1) >> torch.arange(8, device=packed.device, dtype=torch.int32)) & 1).flatten(
        -2
    )
    stream = stream[..., : num_codebooks * bits].unflatten(-1, (num_codebooks, bits))
    weights = torch.arange(bits, device=packed.device, dtype=torch.int32)
    return (stream << weights).sum(-1, dtype=torch.int32).to(dtype)


def _unpack_with_arithmetic(packed: torch.Tensor, num_codebooks: int, bits: int) -> torch.Tensor:
    """`unpack_codes` (bits != 8) with int32 division, multiplication and subtraction only: int32 (..., M).

    ONNX exporters turn the shift-and-mask paths into graphs onnxruntime rejects (`BitwiseAnd` bound to both
    int8 and uint8) or cannot translate them (shifts on uint8 and int32 with the dynamo exporter, `BitwiseAnd`
    below opset 18 with the TorchScript one), while every runtime implements int32 arithmetic; the shift
    paths stay the eager ones because they are four times faster.
    """
    wide = packed.to(torch.int32)
    if bits == 16:
        return wide[..., 0::2] + wide[..., 1::2] * 256
    step = bits if 8 % bits == 0 else 1
    # quotients[j] = byte // 2^(j·step); field j of the byte is quotients[j] - quotients[j + 1]·2^step.
    quotients = [wide] + [wide // (1 << shift) for shift in range(step, 8, step)]
    fields = [low - high * (1 << step) for low, high in itertools.pairwise(quotients)] + [quotients[-1]]
    stream = torch.stack(fields, dim=-1).flatten(-2)
    if step == bits:
        return stream[..., :num_codebooks]
    stream = stream[..., : num_codebooks * bits].unflatten(-1, (num_codebooks, bits))
    weights = 2 ** torch.arange(bits, device=packed.device, dtype=torch.int32)
    return (stream * weights).sum(-1, dtype=torch.int32)
